"""The loss: only trained positions reach the LM head, and accumulation weights every trained token the same."""
import torch

from conftest import tiny_llama
from trainer.data.batching import collate_padded
from trainer.data.tokenize import IGNORE, Tokenized
from trainer.objectives.sft import LossOnTrainedTokens

M = IGNORE


def ex(ids, labels):
    return Tokenized(tuple(ids), tuple(labels), "f", 1, len(ids), 0)


EXAMPLES = [ex([5, 6, 7, 8, 9], [M, M, 7, 8, 9]), ex([10, 11, 12], [M, 11, 12]), ex([13, 14, 15, 16], [M, M, M, 16]),
            ex([17, 18, 19, 20, 21, 22], [M, 18, 19, 20, 21, 22])]


def test_trained_positions_loss_equals_full_logits_loss():
    model = tiny_llama()
    batch = collate_padded(EXAMPLES, pad_id=0)
    loss_sum, count = LossOnTrainedTokens(model)(**batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    full = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1), ignore_index=M, reduction="sum")
    assert count == 11
    assert torch.allclose(loss_sum, full, atol=1e-5)


def test_window_loss_weights_tokens_not_batches():
    """Two micro-batches of 2 with the window weighting give the same gradient as one batch of 4."""
    def grads(batches):
        model = tiny_llama(seed=3)
        module = LossOnTrainedTokens(model)
        window = sum(int((b["labels"][:, 1:] != M).sum()) for b in batches)
        for b in batches:
            loss_sum, _ = module(**b)
            (loss_sum / window).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole = grads([collate_padded(EXAMPLES, 0)])
    split = grads([collate_padded(EXAMPLES[:2], 0), collate_padded(EXAMPLES[2:], 0)])
    for a, b in zip(whole, split):
        assert torch.allclose(a, b, atol=1e-6)


def test_short_rows_on_cpu_take_the_math_kernel_with_the_same_loss_and_gradients(monkeypatch):
    """The kernel choice for short rows is a speed choice only: long rows through flash, short through math, same numbers."""
    import trainer.modeling as loop

    batch = collate_padded(EXAMPLES, pad_id=0)
    used = []
    original = torch.nn.attention.sdpa_kernel
    monkeypatch.setattr(torch.nn.attention, "sdpa_kernel", lambda backends: used.append(backends) or original(backends))

    def loss_and_grads(limit):
        monkeypatch.setattr(loop, "SHORT_ROWS_ON_CPU", limit)
        model = tiny_llama(seed=5)
        loss_sum, _ = LossOnTrainedTokens(model)(**batch)
        loss_sum.backward()
        return loss_sum, [p.grad for p in model.parameters() if p.grad is not None]

    flash_loss, flash_grads = loss_and_grads(0)  # 6 tokens > 0: flash
    assert used == []
    math_loss, math_grads = loss_and_grads(160)
    assert used == [[torch.nn.attention.SDPBackend.MATH]]
    assert torch.allclose(flash_loss, math_loss, atol=1e-5)
    for a, b in zip(flash_grads, math_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_stop_cuts_the_validation_short_before_the_next_batch():
    """evaluate asks `stop` before each batch: the first yes ends the pass, saying how far it got, with no loss and the
    model back in training mode; a stop that never says yes changes nothing."""
    import pytest
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from trainer.data.batching import Batching
    from trainer.evaluation.loss import EvaluationCut, evaluate

    AcceleratorState._reset_state(reset_partial_state=True)  # other tests of this process made accelerators of their own
    accelerator = Accelerator(cpu=True)
    module = LossOnTrainedTokens(tiny_llama())
    batching = Batching(batch_size=1, seed=0, packing=False, max_seq_length=16, pad_id=0, flash=False)
    asked: list[int] = []

    def stop_at_the_fourth_question() -> bool:
        asked.append(len(asked))
        return len(asked) == 4

    with pytest.raises(EvaluationCut) as cut:
        evaluate(module, EXAMPLES, accelerator, batching, stop=stop_at_the_fourth_question)
    assert (cut.value.done, cut.value.total) == (3, 4) and module.training
    assert evaluate(module, EXAMPLES, accelerator, batching, stop=lambda: False) == evaluate(module, EXAMPLES, accelerator, batching)
