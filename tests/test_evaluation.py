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


# --- the retrieval baseline ---------------------------------------------------------------------------------------

RECIPES = ["chocolate cake with cocoa and sugar", "tomato soup with basil", "lemon tart with butter crust",
           "beef stew with carrots and potatoes", "green salad with olive oil", "banana bread with walnuts"]


def test_retrieval_finds_the_similar_examples_and_never_the_case_itself():
    from trainer.evaluation.retrieval import Retriever

    pool = [chat("Extract.", text, f'["{i}"]', line=i) for i, text in enumerate(RECIPES)]
    # cases taken from the pool itself (an evaluation.test that overlaps the training data)
    cases = [to_case(e) for e in pool]
    retriever = Retriever(pool, k=2)
    found = retriever.shots(cases)
    assert [len(shots) for shots in found] == [2] * len(cases)  # equal k for every case
    for case, shots in zip(cases, found):
        assert all((s.file, s.line) != (case.file, case.line) for s in shots)
    # a new question about cocoa cake retrieves the chocolate cake, placed last (right before the question)
    asked = to_case(chat("Extract.", "a cake with cocoa", '["x"]', line=99))
    [shots] = retriever.shots([asked])
    assert shots[-1].messages[1].content == "chocolate cake with cocoa and sugar"
    messages = few_shot_messages(asked, shots)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]


def test_retrieval_leaves_out_copies_of_the_case_and_keeps_k_equal_on_a_small_pool():
    from trainer.evaluation.retrieval import Retriever

    pool = [chat("Extract.", RECIPES[0], '["a"]', line=1), chat("Extract.", RECIPES[0], '["a"]', line=7),
            chat("Extract.", RECIPES[1], '["b"]', line=2)]
    case = to_case(pool[0])
    retriever = Retriever(pool, k=5)
    assert retriever.k == 2  # the pool less one, for every case
    found = retriever.shots([case, to_case(pool[2])])
    # the copy at line 7 is the same conversation as the case: left out, which leaves the cake one example; the
    # soup gets one too, not two, so that every prompt has as many examples
    assert [[s.messages[1].content for s in shots] for shots in found] == [[RECIPES[1]], [RECIPES[0]]]
    assert retriever.k == 1


def test_retrieval_with_a_local_embedding_model(tiny_model_dir):
    """An embedding model (here the tiny Llama's mean-pooled states) ranks instead of BM25; the same two rules hold."""
    from trainer.evaluation.retrieval import Retriever

    pool = [chat("Extract.", text, f'["{i}"]', line=i) for i, text in enumerate(RECIPES)]
    cases = [to_case(e) for e in pool[:3]]
    retriever = Retriever(pool, k=2, embedding_model=str(tiny_model_dir))
    found = retriever.shots(cases)
    assert [len(shots) for shots in found] == [2, 2, 2]
    assert all(s.line != case.line for case, shots in zip(cases, found) for s in shots)
    vectors = retriever.embed(["a b", "a b", "zzz"])
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0, abs=1e-5) and float(vectors[0] @ vectors[2]) < 0.9999


# --- intervals and the verdict ------------------------------------------------------------------------------------

def _per_case(scores):
    from trainer.evaluation.intervals import PerCase

    return PerCase.of_means([float(s) for s in scores])


@pytest.mark.parametrize("answer", ["- a bullet\n- `code` and a stray ` backtick", "```\nfenced\n```", "**bold** <b>html</b> # not a title"])
def test_an_answer_in_the_report_is_shown_as_written_not_rendered(answer):
    from markdown_it import MarkdownIt

    from trainer.evaluation.report import code_block

    tokens = MarkdownIt().parse(f"**tuned:**\n\n{code_block(answer)}\n\nafter")
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == 1 and fences[0].content == answer + "\n"
    assert tokens[-2].content == "after"  # the block ended where it should


def test_a_seeded_bootstrap_gives_the_same_numbers_twice():
    from trainer.evaluation.intervals import confidence

    tuned = _per_case([0.9, 0.1, 0.75, 0.8, 0.3, 0.95, 0.7, 0.2, 0.85, 0.45])
    other = _per_case([0.1, 0.2, 0.7, 0.15, 0.3, 0.8, 0.1, 0.0, 0.9, 0.25])
    first = confidence({"base_few_shot": {"exact_match": other}, "tuned": {"exact_match": tuned}}, seed=7, lower_is_better=set())
    again = confidence({"base_few_shot": {"exact_match": other}, "tuned": {"exact_match": tuned}}, seed=7, lower_is_better=set())
    assert first == again
    interval = first["intervals"]["tuned"]["exact_match"]
    assert interval.value == pytest.approx(0.6) and interval.low < 0.6 < interval.high
    other_seed = confidence({"base_few_shot": {"exact_match": other}, "tuned": {"exact_match": tuned}}, seed=8, lower_is_better=set())
    assert other_seed["intervals"]["tuned"]["exact_match"] != interval


def _verdict_for(tuned_scores, other_scores, metric="json_list_f1"):
    from trainer.evaluation.intervals import confidence

    per_case = {"base_few_shot": {metric: _per_case(other_scores)}, "tuned": {metric: _per_case(tuned_scores)}}
    sure = confidence(per_case, seed=42, lower_is_better=set())
    results = {name: {metric: parts[metric].value, "prompt_tokens_mean": 100.0} for name, parts in per_case.items()}
    return verdict(results, metric, sure["differences"]), sure["differences"]["base_few_shot"][metric]


def test_a_clear_difference_says_beat():
    words, difference = _verdict_for([0.9, 0.8, 1.0, 0.9, 0.85, 0.95] * 5, [0.2, 0.1, 0.3, 0.2, 0.25, 0.15] * 5)
    assert difference.better == "tuned" and difference.low > 0
    assert words[0].startswith("The fine-tuned model beat few-shot prompting on json_list_f1: 0.900 against 0.200 (difference +0.700, 95% CI")


def test_a_tie_says_not_measurable_and_how_many_cases_would_be():
    tuned = [1, 0, 1, 0, 1, 0, 1, 1, 0, 0]
    other = [0, 1, 1, 0, 0, 1, 1, 0, 0, 0]  # 5 of 10 against 4 of 10, the wins on different cases
    words, difference = _verdict_for(tuned, other)
    assert difference.better == "unclear" and difference.low < 0 < difference.high
    assert "is not measurable on 10 cases" in words[0]
    assert difference.cases_needed > 10 and f"about {difference.cases_needed} cases would be needed" in words[0]
    words, difference = _verdict_for([1, 0, 1, 0], [1, 0, 1, 0])  # identical answers: nothing to measure
    assert difference.cases_needed is None and "no difference to measure" in words[0]


def test_a_clear_loss_is_a_worse_baseline():
    from trainer.evaluation.intervals import PerCase, confidence

    # loss: lower is better; token-weighted, so per-case sums over per-case token counts
    tuned = PerCase(tuple([1.0, 2.0, 1.5, 1.0] * 5), tuple([2.0, 4.0, 3.0, 2.0] * 5))  # 0.5 per token
    other = PerCase(tuple([4.0, 8.0, 6.0, 4.0] * 5), tuple([2.0, 4.0, 3.0, 2.0] * 5))  # 2.0 per token
    sure = confidence({"base_zero_shot": {"loss": other}, "tuned": {"loss": tuned}}, seed=1, lower_is_better={"loss"})
    difference = sure["differences"]["base_zero_shot"]["loss"]
    assert difference.value == pytest.approx(-1.5) and difference.better == "tuned"


@pytest.mark.integration
def test_four_systems_with_intervals_on_a_tiny_model(tmp_path, tiny_model_dir):
    """`trainer` trains the tiny model and evaluates all four systems: eval.json carries each interval and comparison."""
    import json

    from conftest import run_trainer, tiny_config

    config = tiny_config(tmp_path, tiny_model_dir, max_steps=2, **{"evaluation.after_training": True, "evaluation.max_examples": 6,
                                                                     "evaluation.max_new_tokens": 4, "evaluation.metrics": ["loss", "token_f1"]})
    result = run_trainer("--config", str(config), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["summary"]["systems"] == ["base_zero_shot", "base_few_shot", "base_retrieval", "tuned"]
    for system in report["summary"]["systems"]:
        low, high = report[system]["ci95"]["token_f1"]
        assert low <= report[system]["token_f1"] <= high
        low, high = report[system]["ci95"]["loss"]
        assert low <= report[system]["loss"] <= high
    assert set(report["summary"]["comparisons"]) == {"tuned vs base_zero_shot", "tuned vs base_few_shot", "tuned vs base_retrieval"}
    # the same 12 examples are the pool and the cases: each retrieves 3 others, so its prompt is longer than zero-shot
    assert report["summary"]["retrieved"] == 3
    assert report["base_retrieval"]["prompt_tokens_mean"] > 2 * report["base_zero_shot"]["prompt_tokens_mean"]
    assert "95% confidence interval" in result.stdout and "base_retrieval" in result.stdout


# --- graders as metrics (evaluation.graders; a grpo run's own) ----------------------------------------------------

# the answer holds the reference's first letter: the tiny model's answers are a few letters, so some do and some do not
LETTER = {"type": "string_check", "name": "letter", "operation": "like", "input": "{{ sample.output_text }}", "reference": "{{ item.reference | first }}"}
# 1 / letter: the answers letter misses divide by zero, so this grader fails on them (counted, not silently averaged as 0)
INVERSE = {"type": "multi", "name": "inverse", "calculate_output": "1 / hit", "graders": {"hit": {**LETTER, "name": "hit"}}}
WORDS = {"type": "builtin", "name": "words", "metric": "token_f1", "reference": "{{ item.reference | first }}"}


def test_graders_are_metrics_with_intervals_and_their_failures_counted(tmp_path, tiny_model_dir, trained_run):
    """The tiny trained model against the untuned one on its 12 training chats: a builtin grader, a string_check grader and
    a multi grader that fails on some answers, each checked against the answers themselves; eval.json and eval.md carry them."""
    import json

    import yaml

    from conftest import TINY_DATA, tiny_config
    from trainer.config import load_config
    from trainer.evaluation.metrics import normalize
    from trainer.evaluation.report import write_report
    from trainer.evaluation.runner import evaluate_run

    config = tiny_config(tmp_path, tiny_model_dir, **{"evaluation.systems": ["base_zero_shot", "tuned"], "evaluation.max_new_tokens": 6,
                                                      "evaluation.metrics": ["exact_match"], "evaluation.graders": [WORDS, LETTER, INVERSE]})
    evaluation = evaluate_run(load_config(str(config)), trained_run, say=lambda _: None)
    references = [r["messages"][-1]["content"] for r in TINY_DATA]
    assert [c.reference for c in evaluation.cases] == references
    assert evaluation.cases[0].item == {"reference": "red", "messages": TINY_DATA[0]["messages"]}  # the record, and its answer
    seen = set()
    for name in ("base_zero_shot", "tuned"):
        result, answers = evaluation.results[name], evaluation.results[name].answers
        hits = [float(r[0] in a) for a, r in zip(answers, references)]
        seen |= set(hits)
        assert result.scores["letter"] == pytest.approx(sum(hits) / 12)
        # token_f1 against one letter: 2 x (times it is a token of the answer, at most 1) / (the answer's tokens + 1)
        tokens = [normalize(a).split() for a in answers]
        by_hand = [2 * min(t.count(r[0]), 1) / (len(t) + 1) for t, r in zip(tokens, references)]
        assert result.scores["words"] == pytest.approx(sum(by_hand) / 12)
        assert result.scores["inverse"] == pytest.approx(sum(hits) / 12)  # 1 where the letter is there, 0 (failed) where not
        assert len(result.grader_errors["inverse"]) == hits.count(0.0) and result.grader_errors["letter"] == []
        assert all(e.startswith("inverse: calculate_output `1 / hit` divides by zero") for e in result.grader_errors["inverse"])
        assert result.scores["exact_match"] == sum(normalize(a) == r for a, r in zip(answers, references)) / 12
    assert seen == {0.0, 1.0}  # the letter grader both hit and missed: the numbers above are not all one value
    out = tmp_path / "report"
    out.mkdir()
    write_report(out, evaluation)
    report = json.loads((out / "eval.json").read_text())
    tuned = evaluation.results["tuned"].scores
    failed = len(evaluation.results["tuned"].grader_errors["inverse"])
    assert report["summary"]["graders"] == ["words", "letter", "inverse"] and report["summary"]["main_metric"] == "words"
    low, high = report["tuned"]["ci95"]["letter"]
    assert low <= tuned["letter"] <= high and report["tuned"]["grader_errors"] == {"words": 0, "letter": 0, "inverse": failed}
    assert set(report["summary"]["comparisons"]["tuned vs base_zero_shot"]) == {"exact_match", "words", "letter", "inverse"}
    md = (out / "eval.md").read_text()
    assert "| system | exact_match | words | letter | inverse |" in md and "| tuned vs base_zero_shot | letter |" in md
    for name, result in evaluation.results.items():  # seen holds a miss, so at least one system has failures to report
        count = len(result.grader_errors["inverse"])
        assert (f"The grader 'inverse' could not score {count} of 12 answers of {name}" in md) == (count > 0)
