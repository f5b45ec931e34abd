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

from collections.abc import Iterable
from typing import TYPE_CHECKING

from trainer.data.formats import Example, Message
from trainer.evaluation.prompts import Case
from trainer.generate import ChatMessage

if TYPE_CHECKING:
    import torch


def user_text(messages: Iterable[ChatMessage | Message]) -> str:
    """What a retriever matches on: the user turns of a conversation."""
    return "\n".join(_content(m) for m in messages if _role(m) == "user")


def _role(m: ChatMessage | Message) -> str:
    return m["role"] if isinstance(m, dict) else m.role


def _content(m: ChatMessage | Message) -> str:
    return m["content"] if isinstance(m, dict) else m.content


def _usable(example: Example) -> bool:
    return example.messages is not None and len([m for m in example.messages if m.role != "system"]) >= 2


def _same(case: Case, example: Example) -> bool:
    if (case.file, case.line) == (example.file, example.line):
        return True
    turns = [(m.role, m.content) for m in example.messages or ()]
    return turns == [(m["role"], m["content"]) for m in case.messages] + [("assistant", case.reference)]


class Retriever:
    """Ranks the training pool for a case; `shots(cases)` gives each case its k examples, most similar last."""

    def __init__(self, pool: list[Example], k: int, embedding_model: str | None = None):
        self.pool = [e for e in pool if _usable(e)]
        # one fewer than the pool holds, so every case can still get k after leaving itself out
        self.k = max(0, min(k, len(self.pool) - 1))
        self.embedding_model = embedding_model

    def shots(self, cases: list[Case]) -> list[list[Example]]:
        if self.k == 0:
            return [[] for _ in cases]
        ranked = self._rank([user_text(c.messages) for c in cases])
        allowed = [[self.pool[i] for i in order if not _same(case, self.pool[i])] for case, order in zip(cases, ranked)]
        self.k = min([self.k] + [len(found) for found in allowed])  # copies of a case in the pool can leave fewer
        # the most similar example right before the question
        return [list(reversed(found[: self.k])) for found in allowed]

    def _rank(self, queries: list[str]) -> list[list[int]]:
        """For each query, pool indices from most to least similar (enough of them to leave out duplicates)."""
        if self.embedding_model:
            return self._rank_embedded(queries)
        import bm25s

        corpus = [user_text(e.messages or ()) for e in self.pool]
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
        # every case leaves out itself and any exact copies of itself; a few extra candidates cover that
        depth = min(len(self.pool), self.k + 8)
        asked = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
        found, _ = retriever.retrieve(asked, k=depth, show_progress=False, n_threads=1)
        ranked = [list(map(int, row)) for row in found]
        # all the rest after the top ones, so leaving out copies of a case never leaves it short of k
        return [row + sorted(set(range(len(self.pool))) - set(row)) for row in ranked]

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
