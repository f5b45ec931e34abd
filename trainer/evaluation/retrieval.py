"""The retrieval baseline (RAG over the training data): for each case, the k most similar training examples.

Similarity is BM25 over the user turns (the `bm25s` library) by default, or the cosine similarity of mean-pooled
hidden states of a local embedding model (evaluation.retrieval.embedding_model). The retrieved examples go into
the prompt as worked examples, exactly as the few-shot ones do; unlike those, they change from case to case.

Two rules keep the comparison fair:
- a case never retrieves itself (the same file and line, or the same conversation), so a test set that overlaps
  the training data does not hand the baseline its answers;
- every case gets the same number of examples, so prompt lengths compare across cases and with few-shot.
"""
from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.data.formats import Example, Message
from trainer.evaluation.prompts import Case
from trainer.generate import ChatMessage

if TYPE_CHECKING:
    import bm25s
    import torch


def user_text(messages: Iterable[ChatMessage | Message]) -> str:
    """What a retriever matches on: the user turns of a conversation."""
    return "\n".join(_content(m) for m in messages if _role(m) == "user")


def _role(m: ChatMessage | Message) -> str:
    return m["role"] if isinstance(m, dict) else m.role


def _content(m: ChatMessage | Message) -> str:
    return m["content"] if isinstance(m, dict) else m.content


def _same(case: Case, example: Example) -> bool:
    if (case.file, case.line) == (example.file, example.line):
        return True
    turns = [(m.role, m.content) for m in example.messages or ()]
    return turns == [(m["role"], m["content"]) for m in case.messages] + [("assistant", case.reference)]


class Retriever:
    """Ranks the training pool (worked examples: cases.eval_cases) for a case; `shots(cases)` gives each case its k
    examples, most similar last. With `index_dir`, the BM25 index is kept there: built and saved the first time,
    memory-mapped from there after (the pool must be the same: the data cache entry's folder names it)."""

    def __init__(self, pool: Sequence[Example], k: int, embedding_model: str | None = None, index_dir: Path | None = None):
        self.pool = pool
        # one fewer than the pool holds, so every case can still get k after leaving itself out
        self.k = max(0, min(k, len(self.pool) - 1))
        self.embedding_model = embedding_model
        self.index_dir = index_dir

    def shots(self, cases: list[Case]) -> list[list[Example]]:
        if self.k == 0:
            return [[] for _ in cases]
        ranked = self._rank([user_text(c.messages) for c in cases])
        # the first k of each ranking that are not the case itself (examples are loaded only as far as that)
        allowed = [list(itertools.islice(self._others(case, order), self.k)) for case, order in zip(cases, ranked)]
        self.k = min([self.k] + [len(found) for found in allowed])  # copies of a case in the pool can leave fewer
        # the most similar example right before the question
        return [list(reversed(found[: self.k])) for found in allowed]

    def _others(self, case: Case, order: Iterable[int]) -> Iterator[Example]:
        for i in order:
            example = self.pool[i]
            if not _same(case, example):
                yield example

    def _rank(self, queries: list[str]) -> Sequence[Iterable[int]]:
        """For each query, pool indices from most to least similar (enough of them to leave out duplicates)."""
        if self.embedding_model:
            return self._rank_embedded(queries)
        import bm25s

        retriever = self._bm25()
        # every case leaves out itself and any exact copies of itself; a few extra candidates cover that
        depth = min(len(self.pool), self.k + 8)
        asked = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
        found, _ = retriever.retrieve(asked, k=depth, show_progress=False, n_threads=1)
        # all the rest after the top ones, so leaving out copies of a case never leaves it short of k
        return [_then_the_rest([int(i) for i in row], len(self.pool)) for row in found]

    def _bm25(self) -> bm25s.BM25:
        """The pool's BM25 index: loaded (memory-mapped) from index_dir when it is there, else built (and saved there)."""
        import bm25s

        if self.index_dir is not None and (self.index_dir / "params.index.json").is_file():
            return bm25s.BM25.load(str(self.index_dir), mmap=True, show_progress=False)
        corpus = [user_text(e.messages or ()) for e in self.pool]
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
        if self.index_dir is not None:
            _save_atomically(retriever, self.index_dir)
        return retriever

    def _rank_embedded(self, queries: list[str]) -> list[list[int]]:
        import torch

        corpus = self.embed([user_text(e.messages or ()) for e in self.pool])
        asked = self.embed(queries)
        scores = asked @ corpus.T
        return torch.argsort(scores, dim=1, descending=True, stable=True).tolist()

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit-length mean-pooled last hidden states of the embedding model (a local folder)."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.embedding_model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModel.from_pretrained(self.embedding_model).eval()
        vectors = []
        with torch.no_grad():
            for begin in range(0, len(texts), 32):
                batch = tokenizer(texts[begin : begin + 32], padding=True, truncation=True, max_length=512, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                vectors.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(vectors)


def _then_the_rest(top: list[int], size: int) -> Iterator[int]:
    yield from top
    seen = set(top)
    yield from (i for i in range(size) if i not in seen)


def _save_atomically(retriever: bm25s.BM25, folder: Path) -> None:
    """Saved into a temporary folder renamed into place, as cache entries are: a killed save is never loaded; of two
    processes saving the same index, the first to finish wins."""
    temp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    retriever.save(str(temp), show_progress=False)
    try:
        os.rename(temp, folder)
    except OSError:
        shutil.rmtree(temp, ignore_errors=True)
        if not (folder / "params.index.json").is_file():
            raise
