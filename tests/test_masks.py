"""Chat templates and the loss mask, from literal conversations to literal label lists."""
import pytest

from conftest import make_char_tokenizer
from trainer.data.formats import Example, Message
from trainer.data.templates import CHATML, resolve_template
from trainer.data.tokenize import Tokenizer
from trainer.errors import UserError

M = -100  # masked
TWO_TURNS = Example(
    (Message("user", "hi", False), Message("assistant", "yo", True), Message("user", "ok", False), Message("assistant", "no", True)),
    None, "f.jsonl", 7,
)


def encode(tokenizer, template: str, example=TWO_TURNS, train_on="assistant", max_length=512):
    result, problem = Tokenizer(tokenizer, resolve_template(template, tokenizer), train_on, max_length)(example)
    assert problem is None, problem
    return list(result.input_ids), list(result.labels)


def test_chatml_golden(char_tokenizer):
    ids, labels = encode(char_tokenizer, "chatml")
    # <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nok<|im_end|>\n<|im_start|>assistant\nno<|im_end|>\n
    assert ids == [2, 97, 95, 81, 94, 11, 84, 85, 3, 11, 2, 77, 95, 95, 85, 95, 96, 77, 90, 96, 11, 101, 91, 3, 11,
                   2, 97, 95, 81, 94, 11, 91, 87, 3, 11, 2, 77, 95, 95, 85, 95, 96, 77, 90, 96, 11, 90, 91, 3, 11]
    assert labels == [M] * 21 + [101, 91, 3] + [M] * 22 + [90, 91, 3, M]  # "yo<|im_end|>", "no<|im_end|>"; not the "\n" after


def test_zephyr_golden(char_tokenizer):
    ids, labels = encode(char_tokenizer, "zephyr")
    # <|user|>\nhi</s>\n<|assistant|>\nyo</s>\n<|user|>\nok</s>\n<|assistant|>\nno</s>\n
    assert ids == [8, 11, 84, 85, 1, 11, 9, 11, 101, 91, 1, 11, 8, 11, 91, 87, 1, 11, 9, 11, 90, 91, 1, 11]
    assert labels == [M] * 8 + [101, 91, 1] + [M] * 9 + [90, 91, 1, M]


def test_llama3_golden(char_tokenizer):
    ids, labels = encode(char_tokenizer, "llama3")
    # <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nyo<|eot_id|>...
    assert ids == [4, 5, 97, 95, 81, 94, 6, 11, 11, 84, 85, 7, 5, 77, 95, 95, 85, 95, 96, 77, 90, 96, 6, 11, 11, 101, 91, 7,
                   5, 97, 95, 81, 94, 6, 11, 11, 91, 87, 7, 5, 77, 95, 95, 85, 95, 96, 77, 90, 96, 6, 11, 11, 90, 91, 7]
    assert labels == [M] * 25 + [101, 91, 7] + [M] * 24 + [90, 91, 7]


@pytest.mark.slow
def test_smollm2_own_template_golden(smollm2_tokenizer):
    example = Example(
        (Message("system", "S", False), Message("user", "U", False), Message("assistant", "A", True),
         Message("user", "U2", False), Message("assistant", "A2", True)),
        None, "f", 1,
    )
    ids, labels = encode(smollm2_tokenizer, "tokenizer", example)
    assert ids == [1, 9690, 198, 67, 2, 198, 1, 4093, 198, 69, 2, 198, 1, 520, 9531, 198, 49, 2, 198,
                   1, 4093, 198, 69, 34, 2, 198, 1, 520, 9531, 198, 49, 34, 2, 198]
    assert labels == [M] * 16 + [49, 2] + [M] * 12 + [49, 34, 2, M]  # "A<|im_end|>", "A2<|im_end|>"
    assert smollm2_tokenizer.convert_ids_to_tokens(2) == "<|im_end|>" == smollm2_tokenizer.eos_token


def test_weight_zero_turn_is_masked(char_tokenizer):
    example = Example((TWO_TURNS.messages[0], Message("assistant", "yo", False), *TWO_TURNS.messages[2:]), None, "f", 1)
    _, labels = encode(char_tokenizer, "chatml", example)
    assert labels == [M] * 46 + [90, 91, 3, M]
    _, labels_all = encode(char_tokenizer, "chatml", example, train_on="all")
    ids, _ = encode(char_tokenizer, "chatml", example)
    assert labels_all[21:24] == [M, M, M] and labels_all[:21] == ids[:21] and labels_all[24:] == ids[24:]


def test_train_on_all_learns_every_token(char_tokenizer):
    ids, labels = encode(char_tokenizer, "chatml", train_on="all")
    assert labels == ids


def test_custom_jinja_template(char_tokenizer):
    jinja = "{% for m in messages %}{{ m['role'][0] + ':' + m['content'] + eos_token }}{% endfor %}{% if add_generation_prompt %}a:{% endif %}"
    ids, labels = encode(char_tokenizer, jinja)
    # u:hi</s>a:yo</s>u:ok</s>a:no</s>
    assert ids == [97, 38, 84, 85, 1, 77, 38, 101, 91, 1, 97, 38, 91, 87, 1, 77, 38, 90, 91, 1]
    assert labels == [M] * 7 + [101, 91, 1] + [M] * 7 + [90, 91, 1]


def test_template_whose_turns_cannot_be_located_is_reported(char_tokenizer):
    # no header, no end-of-turn text except after the last turn: where "yo" ends is unknowable, so it is reported, not guessed
    jinja = "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}"
    result, problem = Tokenizer(char_tokenizer, resolve_template(jinja, char_tokenizer), "assistant", 512)(TWO_TURNS)
    assert result is None
    assert str(problem) == ("f.jsonl:7: could not find where assistant message 2 begins in the rendered conversation (looked for '!' "
                            "after message 1); the template lays this turn out unlike the others.")


def test_tokenizer_without_template_is_a_clear_error():
    tokenizer = make_char_tokenizer(None)
    with pytest.raises(UserError, match=r"data.chat_template: the model's tokenizer has no chat template.*chatml, zephyr, llama3 or hermes"):
        resolve_template("tokenizer", tokenizer)


def test_tokenizer_template_is_used(char_tokenizer):
    tokenizer = make_char_tokenizer(CHATML)
    assert encode(tokenizer, "tokenizer") == encode(char_tokenizer, "chatml")


def test_truncation_counts_lost_trained_tokens(char_tokenizer):
    result, _ = Tokenizer(char_tokenizer, resolve_template("chatml", char_tokenizer), "assistant", 47)(TWO_TURNS)
    assert len(result.input_ids) == 47 and result.full_length == 50
    assert result.trained == 4 and result.trained_lost == 2  # "yo<|im_end|>" and "n" kept; "o<|im_end|>" lost


def test_plain_text_learns_everything_and_ends_with_eos(char_tokenizer):
    result, _ = Tokenizer(char_tokenizer, resolve_template("chatml", char_tokenizer), "all", 512)(Example(None, "ab", "f", 1))
    assert list(result.input_ids) == [77, 78, 1] and list(result.labels) == [77, 78, 1]


def test_a_template_that_trims_content_is_located_exactly(char_tokenizer):
    # llama3 trims every message; the markers sit inside the whitespace, so the render is what the model sees
    padded = Example((Message("user", "  hi \n", False), Message("assistant", " yo ", True)), None, "f", 1)
    ids, labels = encode(char_tokenizer, "llama3", padded)
    text = lambda ids: "".join(char_tokenizer.convert_ids_to_tokens(ids))  # noqa: E731
    assert text([t for t in labels if t != M]) == "yo<|eot_id|>"
    assert text(ids).count("\n\nhi<|eot_id|>") == 1


def test_one_render_per_conversation(char_tokenizer, monkeypatch):
    tokenizer = Tokenizer(char_tokenizer, resolve_template("chatml", char_tokenizer), "assistant", 512)
    tokenizer.features  # the template is probed once, before any example
    calls = []
    original = char_tokenizer.apply_chat_template
    monkeypatch.setattr(char_tokenizer, "apply_chat_template", lambda *a, **k: calls.append(1) or original(*a, **k))
    for _ in range(3):
        result, problem = tokenizer(TWO_TURNS)
        assert problem is None
    assert len(calls) == 3
