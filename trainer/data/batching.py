"""Batches that waste little on padding, and packed rows whose examples never see each other.

Without packing, examples are grouped by length (shuffled in large groups,
sorted inside each group, and the batches shuffled again), so each batch pads
little but the order still changes every epoch. With packing, examples are put
into rows of max_seq_length; each example keeps its own position ids (from 0)
and a block-diagonal causal mask stops attention across examples.

`Batching` (examples) and `PairBatching` (preference pairs, both sides in one
batch) plan an epoch's micro-batches and collate them; each objective picks one.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from trainer.data.tokenize import IGNORE, Tokenized

if TYPE_CHECKING:
    import torch

    from trainer.config import Config
    from trainer.data.preference import TokenizedPair

GROUP_BATCHES = 50  # how many batches' worth of examples are sorted together


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * GROUP_BATCHES
    batches = []
    for begin in range(0, len(order), group):
        chunk = sorted(order[begin : begin + group], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def pack_examples(lengths: Sequence[int], max_length: int, seed: int, epoch: int) -> list[list[int]]:
    """Rows of example indices, each row at most max_length tokens (first-fit on a shuffled, longest-first order)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep their shuffled order
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_length - lengths[i])
    rng.shuffle(rows)
    return rows


def padding_fraction(batches: Sequence[Sequence[Any]], lengths: Sequence[int], packed: bool = False, row_length: int | None = None) -> float:
    """Share of the computed positions that are padding. For packed batches, each batch is a list of rows."""
    real = padded = 0
    for batch in batches:
        if packed:
            row_lengths = [sum(lengths[i] for i in row) for row in batch]
        else:
            row_lengths = [lengths[i] for i in batch]
        width = max(row_lengths)
        real += sum(row_lengths)
        padded += width * len(row_lengths)
    return 1 - real / padded if padded else 0.0


def collate_padded(examples: Sequence[Tokenized], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, labels (IGNORE on padding), attention_mask."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate_packed(rows: Sequence[Sequence[Tokenized]], pad_id: int, with_mask: bool = True) -> dict[str, Any]:
    """Packed rows: position ids restart at each example; a 4-D additive mask keeps examples apart.

    `with_mask=False` leaves the mask out for flash-attention, which separates examples by their position ids.
    """
    import torch

    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, e in enumerate(row):
            n = len(e.input_ids)
            ids[r, at : at + n] = torch.tensor(e.input_ids)
            labels[r, at : at + n] = torch.tensor(e.labels)
            # An example's first token is never predicted on its own (nothing precedes it); in a packed row
            # it would be predicted from the previous example, so it is kept out of the loss.
            labels[r, at] = IGNORE
            positions[r, at : at + n] = torch.arange(n)
            segment[r, at : at + n] = s
            at += n
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
    if with_mask:
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)
        allowed = same & causal
        # padding rows attend to themselves only, so no row of the softmax is empty
        allowed |= torch.eye(width, dtype=torch.bool)
        mask = torch.zeros((len(rows), 1, width, width), dtype=torch.float32)
        batch["attention_mask"] = mask.masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    return batch


@dataclass(frozen=True)
class Batching:
    """How examples become micro-batches and tensors: all that training and evaluation need of the config for it."""

    batch_size: int
    seed: int
    packing: bool
    max_seq_length: int
    pad_id: int
    flash: bool  # flash-attention separates packed examples by their position ids, so no 4-D mask is made

    @classmethod
    def of(cls, config: Config, pad_id: int) -> Batching:
        return cls(config.training.batch_size, config.training.seed, config.data.packing, config.data.max_seq_length,
                   pad_id, config.model.attn_implementation == "flash_attention_2")

    def plan(self, examples: Sequence[Tokenized], epoch: int) -> list[list]:
        """This epoch's micro-batches as example indices (PlannedBatch): lists of indices, or with packing lists of
        packed rows. Only the lengths are read (a memory-mapped split has them as a column), so planning never loads
        the examples."""
        lengths = examples_lengths(examples)
        if self.packing:
            rows = pack_examples(lengths, self.max_seq_length, self.seed, epoch)
            return [PlannedBatch(rows[i : i + self.batch_size], examples) for i in range(0, len(rows), self.batch_size)]
        return [PlannedBatch(batch, examples) for batch in length_grouped_batches(lengths, self.batch_size, self.seed, epoch)]

    def collate(self, batch: PlannedBatch) -> dict:
        """The tensors of one planned micro-batch; only its examples are read."""
        examples = batch.examples
        if self.packing:
            return collate_packed([[examples[i] for i in row] for row in batch], self.pad_id, with_mask=not self.flash)
        return collate_padded([examples[i] for i in batch], self.pad_id)


class PlannedBatch(list):
    """A micro-batch as the indices of its examples (or packed rows of them), with the split they index."""

    def __init__(self, indices: list, examples: Sequence[Tokenized]):
        super().__init__(indices)
        self.examples = examples


def examples_lengths(examples: Sequence[Tokenized]) -> list[int]:
    """Each example's length in tokens: the lengths column of a memory-mapped split, or counted from a list."""
    column = getattr(examples, "lengths", None)
    return column.tolist() if column is not None else [len(e.input_ids) for e in examples]


def trained_in(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


@dataclass(frozen=True)
class PairBatching:
    """Micro-batches of whole pairs (length-grouped by the longer side), collated as [chosen rows; rejected rows]."""

    batch_size: int
    seed: int
    pad_id: int
    reference: dict[str, torch.Tensor] | None = None  # split name -> (pairs, 2) log-probs of the reference model
    split: str = "train"  # whose reference log-probs go into the batches

    def plan(self, pairs: Sequence[Any], epoch: int) -> list[list[TokenizedPair]]:  # PreparedData's lists hold TokenizedPairs here
        lengths = [p.length for p in pairs]
        return [[pairs[i] for i in batch] for batch in length_grouped_batches(lengths, self.batch_size, self.seed, epoch)]

    def collate(self, batch: list[TokenizedPair]) -> dict:
        import torch

        out = collate_padded([p.chosen for p in batch] + [p.rejected for p in batch], self.pad_id)
        if self.reference is not None and self.split in self.reference:
            ref = self.reference[self.split][torch.tensor([p.index for p in batch])]
            out["reference"] = torch.cat([ref[:, 0], ref[:, 1]])
        return out
