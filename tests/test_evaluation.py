"""Metrics from literal inputs to exact numbers, and the few-shot prompt built on a real chat template."""
import pytest

from conftest import make_char_tokenizer
from trainer.data.formats import Example, Message
from trainer.data.templates import CHATML
from trainer.evaluation.metrics import exact_match, json_list_f1, parse_json_list, rouge_l, token_f1
from trainer.evaluation.prompts import few_shot_messages, pick_shots, to_case
from trainer.evaluation.report import verdict


def test_exact_match_normalises_case_punctuation_and_spaces():
    assert exact_match(["Paris.", "  the  Cat", "dog"], ["paris", "The cat", "cat"]) == {"exact_match": pytest.approx(2 / 3)}


def test_token_f1_literal():
    # prediction tokens: the cat sat ; reference: the cat sat down -> P 3/3, R 3/4, F1 6/7
    assert token_f1(["The cat sat"], ["the cat sat down"])["token_f1"] == pytest.approx(6 / 7)
    assert token_f1(["", "x"], ["", "y"])["token_f1"] == pytest.approx(0.5)  # both empty: 1; disjoint: 0


def test_rouge_l_literal():
    # LCS of "a b c d" and "a c d e" is "a c d": P = R = 3/4
    assert rouge_l(["a b c d"], ["a c d e"])["rouge_l"] == pytest.approx(0.75)


def test_json_list_f1_literal():
    predictions = ['["Brown sugar", "milk", "eggs"]', 'not json', '["salt"]', '{"a": 1}']
    references = ['["brown  sugar", "milk", "vanilla"]', '["x"]', '["salt"]', '["a"]']
    result = json_list_f1(predictions, references)
    # 1st: 2 of 3 right both ways -> 2/3; 2nd and 4th do not parse -> 0; 3rd -> 1
    assert result["json_list_f1"] == pytest.approx((2 / 3 + 0 + 1 + 0) / 4)
    assert result["json_parsed"] == pytest.approx(0.5)
    assert parse_json_list(' ["A",  "b  c"] ') == {"a", "b c"}
    assert parse_json_list("[1, 2]") is None


def chat(system, user, answer, line=1):
    return Example((Message("system", system, False), Message("user", user, False), Message("assistant", answer, True)), None, "f", line)


def test_few_shot_prompt_has_one_system_prompt_and_real_turns():
    pool = [chat("Extract.", f"recipe {i}", f'["i{i}"]', i) for i in range(10)]
    case = to_case(chat("Extract.", "my recipe", '["x"]'))
    shots = pick_shots(pool, 3, seed=42)
    assert shots == pick_shots(pool, 3, seed=42) and len(shots) == 3
    messages = few_shot_messages(case, shots)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == "Extract." and messages[-1]["content"] == "my recipe"
    tokenizer = make_char_tokenizer(CHATML)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.count("<|im_start|>system") == 1
    assert text.count("<|im_start|>assistant") == 4 and text.endswith("<|im_start|>user\nmy recipe<|im_end|>\n<|im_start|>assistant\n")


def test_verdict_says_when_the_tuned_model_loses():
    results = {"base_zero_shot": {"json_list_f1": 0.1, "prompt_tokens_mean": 100},
               "base_few_shot": {"json_list_f1": 0.6, "prompt_tokens_mean": 360},
               "tuned": {"json_list_f1": 0.5, "prompt_tokens_mean": 100}}
    words = verdict(results, "json_list_f1")
    assert words[0] == "The fine-tuned model beat the untuned model (zero-shot) on json_list_f1: 0.500 against 0.100 (+0.400 better)."
    assert words[1] == "The fine-tuned model did NOT beat few-shot prompting on json_list_f1: 0.500 against 0.600 (0.100 worse)."
    assert words[2] == "It needs 100 prompt tokens per request instead of few-shot prompting's 360: 72% fewer."
