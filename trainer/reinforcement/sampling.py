"""The policy's answers to a batch of prompts, and the rows grpo's loss reads from them.

Each prompt is answered num_generations times with transformers' generate, sampling at the run's temperature and top_p
from the model as it is now (the adapter on), up to max_completion_length tokens. The answers are kept as the token
ids generate produced: decoding and encoding again can give other ids, and the loss must score the tokens that were
sampled. A row is the left-padded prompt, then the answer right-padded; completion_mask marks the answer's tokens up to
and including the token that ended it; the position ids are those generate used (left padding shifts them).

`on_answer(index, text)` hears of each answer as soon as it ends, while generate is still writing the longer ones of
its batch, so the graders can score it meanwhile (trainer/reinforcement/loop.py); the answers cut at
max_completion_length are told when generate returns. The index and text are those of `Samples.texts`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.config.sections import TrainingGrpoConfig
from trainer.data.prompts import Prompt
from trainer.generate import _decode, stop_ids


@dataclass
class Samples:
    """num_generations answers to each of a batch's prompts, consecutive per prompt (a group), as loss rows."""

    prompts: list[Prompt]  # one per group
    input_ids: torch.Tensor  # (answers, prompt width + answer width)
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_mask: torch.Tensor  # (answers, answer width)
    texts: list[str]  # the answers as the graders read them

    @property
    def answers(self) -> int:
        return len(self.texts)

    def rows(self, advantages: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None) -> dict[str, Any]:
        """The keyword arguments of GRPOLoss.forward for these answers."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids,
                "completion_mask": self.completion_mask, "advantages": advantages, "old_logps": old_logps, "ref_logps": ref_logps}


class AnswerEnded:
    """A stopping criterion of generate that stops nothing: it tells `on_answer` of each row whose last token ended it.

    Called after every token generate adds (transformers' StoppingCriteria protocol); a finished row is padded from
    then on, with a pad id that can be a stop id too, so each row is told once."""

    def __init__(self, width: int, stops: list[int], tokenizer: Any, on_answer: Callable[[int, str], None]):
        self.width, self.tokenizer, self.on_answer = width, tokenizer, on_answer
        self.stops = torch.tensor(stops)
        self.told: set[int] = set()

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        ended = torch.isin(input_ids[:, -1], self.stops.to(input_ids.device))
        for row in ended.nonzero().flatten().tolist():
            if row not in self.told:
                self.told.add(row)
                self.on_answer(row, _decode(self.tokenizer, input_ids[row, self.width :].tolist())[0])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """The positions generate gives a left-padded row: counted from its first real token (padding at 1, unused)."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)


def left_padded(prompts: Sequence[Prompt], pad: int, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts' ids, left-padded to one width, each row repeated `copies` times (a group), and their mask."""
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt.input_ids):] = torch.tensor(prompt.input_ids)
        mask[row, width - len(prompt.input_ids):] = 1
    return ids.repeat_interleave(copies, 0), mask.repeat_interleave(copies, 0)


def samples_from(prompts: Sequence[Prompt], ids: torch.Tensor, mask: torch.Tensor, answers: torch.Tensor, stops: list[int],
                 pad: int, tokenizer: Any) -> Samples:
    """Samples from left-padded prompt rows and the answers sampled after them (one row each, padded on the right, on
    the prompts' device): an answer is its tokens up to and including the one that ended it, or all of them."""
    ended = torch.isin(answers, torch.tensor(stops, device=answers.device))
    before_end = (ended.long().cumsum(1) - ended.long()) == 0
    completion_mask = before_end.long()
    length = int(completion_mask.sum(1).max()) if completion_mask.numel() else 0
    answers, completion_mask = answers[:, :max(length, 1)], completion_mask[:, :max(length, 1)]
    texts = [_decode(tokenizer, row[: int(n)].tolist())[0] for row, n in zip(answers.cpu(), completion_mask.sum(1).cpu())]
    attention_mask = torch.cat([mask, completion_mask], dim=1)
    input_ids = torch.cat([ids, answers.masked_fill(completion_mask == 0, pad)], dim=1)
    return Samples(list(prompts), input_ids, attention_mask, position_ids(attention_mask), completion_mask, texts)


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def sample_answers(model: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], settings: TrainingGrpoConfig, device: str,
                   on_answer: Callable[[int, str], None] | None = None) -> Samples:
    """num_generations sampled answers to each prompt (prompt.input_ids, encoded with the generation prompt); each
    answer's index and text told to on_answer as soon as it ends (module docstring)."""
    from transformers import GenerationConfig, StoppingCriteriaList

    pad = pad_id(tokenizer)
    ids, mask = (t.to(device) for t in left_padded(prompts, pad, settings.num_generations))
    width = ids.shape[1]
    stops = stop_ids(tokenizer)
    # a fresh GenerationConfig, not the model's: its top_k (often 50) or repetition penalty would sample from another
    # distribution than the one whose log-probabilities the loss computes
    generation = GenerationConfig(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                                  max_new_tokens=settings.max_completion_length, eos_token_id=stops, pad_token_id=pad, use_cache=True)
    told = AnswerEnded(width, stops, tokenizer, on_answer) if on_answer is not None else None
    with torch.no_grad():
        output = model.generate(input_ids=ids, attention_mask=mask, generation_config=generation,
                                stopping_criteria=StoppingCriteriaList([told] if told is not None else []))
    samples = samples_from(prompts, ids, mask, output[:, width:], stops, pad, tokenizer)
    if on_answer is not None and told is not None:
        for row in range(samples.answers):
            if row not in told.told:  # cut at max_completion_length: it ended with generate
                on_answer(row, samples.texts[row])
    return samples
