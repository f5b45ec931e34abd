"""Preference pairs handed to AutoTrain's llm-dpo and llm-orpo, and what comes back from them.

AutoTrain 0.8.36 with a chat_template renders each answer on its own (a template that adds a default system
prompt, as SmolLM2's and Qwen's do, puts one into every answer) and takes only the last message as the answer.
So trainer sends no template: it renders each side of a pair as its loop does (the same template, the same
system-prompt folding) and cuts the render where the answer begins. `prompt` is the text before the answer's
first trained character, `chosen` and `rejected` the trained text of each answer. TRL 0.13 tokenizes those
and appends the end-of-text token to each answer; where the trained text ends with that token (SmolLM2's
<|im_end|>, Llama 3's <|eot_id|>) it is left out here, so TRL's takes its place and both train the same tokens.
Where the hand-over cannot be exact, `PairHandOver.notes` says how many pairs differ, and how.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.data.preference import Pair
from trainer.data.tokenize import Tokenizer
from trainer.errors import Problem, UserError

# TRL's names of the figures its DPO and ORPO trainers log -> the names trainer's own loop writes to metrics.jsonl
LOGGED_METRICS = {"rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy", "rewards/chosen": "reward_chosen",
                  "rewards/rejected": "reward_rejected", "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected"}


@dataclass
class PairHandOver:
    """What AutoTrain will see of the pairs: the rows to write, and where they train unlike trainer's loop."""

    objective: str
    rows: list[dict] = field(default_factory=list)
    extra_eos: int = 0  # answers that do not end with the end-of-text token: TRL appends one, trained
    joined_turns: int = 0  # answers of several assistant messages: the text between them is trained too
    split_tokens: int = 0  # pairs whose prompt and answer tokenize differently apart than together (DPO tokenizes them apart)
    bos_added: int = 0  # ORPO: prompts that do not start with the BOS token, which TRL puts in front
    too_long: int = 0  # ORPO: pairs longer than data.max_seq_length, which TRL cuts its own way

    def notes(self, eos: str, bos: str | None, max_length: int) -> list[str]:
        """Each way AutoTrain would train some pairs unlike trainer, with how many."""
        n, task = len(self.rows), f"AutoTrain's llm-{self.objective}"
        said = []
        if self.extra_eos:
            said.append(f"{task} (TRL 0.13) appends {eos} to every answer, and {self.extra_eos} of {2 * n} answers do not end with "
                        "it here (the template ends a turn otherwise): it trains one more token on each of them.")
        if self.joined_turns:
            said.append(f"{self.joined_turns} of {n} pairs have answers of several assistant messages; {task} also trains the text "
                        "between them (the next turn's header), which trainer leaves out of the loss.")
        if self.split_tokens and self.objective == "dpo":
            said.append(f"{self.split_tokens} of {n} pairs tokenize differently where the answer begins when prompt and answer "
                        "are tokenized apart, as AutoTrain's DPO does.")
        if self.bos_added:
            said.append(f"{task} (TRL 0.13) puts {bos} in front of each prompt that does not start with it: "
                        f"{self.bos_added} of {n} prompts get one.")
        if self.too_long:
            said.append(f"{self.too_long} of {n} pairs are longer than data.max_seq_length={max_length}: {task} cuts their prompt to "
                        f"its last {max(1, max_length // 2)} tokens and the answers to fit, where trainer cuts the pair at its end.")
        return said


def hand_over(encoder: Tokenizer, pairs: list[Pair], objective: str) -> PairHandOver:
    """The rows of `pairs` as prompt/chosen/rejected text, counting where AutoTrain would train them differently."""
    out = PairHandOver(objective)
    bos = encoder.tok.bos_token_id
    for pair in pairs:
        sides = [_split(encoder, e, len(e.messages or ()) - pair.prompt_messages) for e in (pair.chosen, pair.rejected)]
        prompt = sides[0][0]
        if sides[1][0] != prompt:
            raise UserError([Problem("the chat template renders this pair's prompt differently before its two answers, and AutoTrain "
                                     "takes one prompt per pair; use backend.name: peft for this data.", "", pair.file, pair.line)])
        out.joined_turns += any(turns > 1 for _, _, turns in sides)
        answers = []
        out.split_tokens += any(encoder.encode(prompt + a) != encoder.encode(prompt) + encoder.encode(a) for _, a, _ in sides)
        for _, answer, _ in sides:
            eos = encoder.tok.eos_token
            if eos and answer.endswith(eos):
                answer = answer[: -len(eos)]  # TRL appends it
            else:
                out.extra_eos += 1
            answers.append(answer)
        if objective == "orpo":
            out.bos_added += bos is not None and encoder.encode(prompt)[:1] != [bos]
            out.too_long += max(len(encoder.encode(prompt + a)) + 1 for a in answers) > encoder.max_length
        out.rows.append({"prompt": prompt, "chosen": answers[0], "rejected": answers[1]})
    return out


def _split(encoder: Tokenizer, example: Any, answer_messages: int) -> tuple[str, str, int]:
    """(the rendered text before the answer, the answer's text from its first trained character to its last, how many
    assistant turns it spans) of one side of a pair, rendered exactly as trainer's loop renders it."""
    rendered = encoder.rendered(example)
    if isinstance(rendered, Problem):  # prepare_data tokenized this very example already, so this does not happen
        raise UserError([rendered])
    text, spans, _, _ = rendered
    first = len(encoder.template_messages(example.messages)) - answer_messages
    answer = [(start, end) for i, start, end in spans if i >= first]
    return text[: answer[0][0]], text[answer[0][0] : answer[-1][1]], len(answer)


def write_pairs(encoder: Tokenizer, sources: tuple[list, list], objective: str, folder: Path) -> list[str]:
    """train.jsonl and validation.jsonl with prompt/chosen/rejected text; the notes of how AutoTrain trains unlike trainer."""
    notes: list[str] = []
    for name, pairs in (("train", sources[0]), ("validation", sources[1])):
        handed = hand_over(encoder, pairs, objective)
        if handed.rows:
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in handed.rows), encoding="utf-8")
        if name == "train":  # AutoTrain is given the training pairs only
            notes = handed.notes(str(encoder.tok.eos_token), encoder.tok.bos_token, encoder.max_length)
    return notes


def logged_metrics(logged: dict) -> dict[str, float]:
    """The preference figures of one AutoTrain log line, under trainer's names."""
    return {ours: float(logged[theirs]) for theirs, ours in LOGGED_METRICS.items() if theirs in logged}
