"""Length-grouped batches, packing, and the proof that packed examples never see each other."""
import torch

from conftest import tiny_llama
from trainer.data.batching import collate_packed, collate_padded, length_grouped_batches, pack_examples, padding_fraction
from trainer.data.tokenize import IGNORE, Tokenized

M = IGNORE


def ex(ids, labels):
    return Tokenized(tuple(ids), tuple(labels), "f", 1, len(ids), 0)


def test_length_grouped_batches_cover_every_example_once_and_reshuffle():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    first = length_grouped_batches(lengths, 8, seed=3, epoch=0)
    second = length_grouped_batches(lengths, 8, seed=3, epoch=1)
    assert sorted(i for b in first for i in b) == list(range(200))
    assert first != second and first == length_grouped_batches(lengths, 8, seed=3, epoch=0)
    import random

    shuffled = list(range(200))
    random.Random(0).shuffle(shuffled)
    plain = [shuffled[i : i + 8] for i in range(0, 200, 8)]
    assert padding_fraction(first, lengths) < padding_fraction(plain, lengths) / 3


def test_pack_examples_fills_rows_without_overflow():
    lengths = [5, 9, 3, 7, 2, 8, 4]
    rows = pack_examples(lengths, 10, seed=0, epoch=0)
    assert sorted(i for r in rows for i in r) == list(range(7))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 4  # 38 tokens need at least 4 rows of 10


def test_padding_fraction_literal():
    assert padding_fraction([[0, 1]], [2, 4]) == 0.25  # 6 real of 8
    assert padding_fraction([[[0, 1], [2]]], [2, 4, 3], packed=True) == 0.25  # rows of 6 and 3, width 6


def test_collate_padded_literal():
    batch = collate_padded([ex([5, 6, 7], [M, 6, 7]), ex([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[M, 6, 7], [8, M, M]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_collate_packed_positions_and_block_diagonal_mask():
    batch = collate_packed([[ex([5, 6], [M, 6]), ex([7, 8, 9], [M, 8, 9])], [ex([4], [4])]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[M, 6, M, 8, 9], [M, M, M, M, M]]  # each example's first label is never used
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 0, 0, 0, 0]]
    allowed = (batch["attention_mask"][0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [0, 0, 1, 0, 0],
                       [0, 0, 1, 1, 0],
                       [0, 0, 1, 1, 1]]


def token_losses(model, batch):
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=M, reduction="sum")
    return losses, (labels != M).sum()


def test_packed_loss_equals_examples_one_by_one():
    for attn in ("sdpa", "eager"):
        model = tiny_llama(attn=attn)
        g = torch.Generator().manual_seed(0)
        examples = []
        for n in (7, 12, 5, 9, 3):
            ids = torch.randint(0, 128, (n,), generator=g).tolist()
            examples.append(ex(ids, ids))  # every token labelled, as with train_on: all
        with torch.no_grad():
            total, count = torch.tensor(0.0), 0
            for e in examples:  # one by one, each in its own batch
                loss, n = token_losses(model, collate_padded([e], pad_id=0))
                total, count = total + loss, count + n
            rows = [[examples[i] for i in row] for row in pack_examples([len(e.input_ids) for e in examples], 24, seed=0, epoch=0)]
            packed_loss, packed_count = token_losses(model, collate_packed(rows, pad_id=0))
        assert packed_count == count  # no label pairs one example's last token with the next one's first
        assert torch.allclose(packed_loss / packed_count, total / count, atol=1e-5), attn
