"""data.template_kwargs (the template's own variables: gpt-oss's reasoning_effort and model_identity, Qwen3's
enable_thinking) reach every render, are checked against what the template reads and key the data cache;
data.template_date pins the clock of a template that writes today's date, so cached renders never go stale."""
import datetime
import json
from pathlib import Path

import pytest
from conftest import make_char_tokenizer

import trainer.data.cache as cache
from trainer.config import parse_config
from trainer.data.formats import Example, Message
from trainer.data.pipeline import checked_template, prepare_data
from trainer.data.templates import CHATML, ChatTemplate, pinned_clock, template_of, with_variables
from trainer.data.tokenize import IGNORE, Tokenizer
from trainer.errors import UserError

TEMPLATES = Path(__file__).parent / "chat_templates"
HARMONY = ["<|startoftext|>", "<|endoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>"]


def harmony_tokenizer():
    """The character tokenizer with gpt-oss's special tokens and its verbatim template."""
    tokenizer = make_char_tokenizer((TEMPLATES / "gpt-oss.jinja").read_text())
    tokenizer.add_special_tokens({"additional_special_tokens": HARMONY})
    tokenizer.eos_token = "<|return|>"
    return tokenizer


def qwen3_tokenizer():
    return make_char_tokenizer((TEMPLATES / "qwen3.jinja").read_text())


def config(*overrides: str, train: str = "chat.jsonl"):
    return parse_config(f"model: {{name_or_path: x}}\ndata: {{train: {train}}}\ntraining: {{epochs: 1}}\n", overrides=list(overrides),
                        check_files=False)


def decode(tokenizer, ids) -> str:
    return "".join(tokenizer.convert_ids_to_tokens(list(ids)))  # one token per character (the WordLevel decoder adds spaces)


def trained(tokenizer, template: ChatTemplate, example: Example):
    result, problem = Tokenizer(tokenizer, template, "assistant", 10**5)(example)
    if problem:
        return str(problem), None
    return decode(tokenizer, [t for t, label in zip(result.input_ids, result.labels) if label != IGNORE]), decode(tokenizer, result.input_ids)


ANSWER = Example((Message("system", "Be brief.", False), Message("user", "Hi", False), Message("assistant", "Yo", True, (), "Think.")),
                 None, "chat.jsonl", 1)


def test_gpt_oss_reasoning_effort_and_identity_reach_the_render_and_not_the_trained_tokens():
    tokenizer = harmony_tokenizer()
    default, plain_text = trained(tokenizer, template_of(config().data, tokenizer), ANSWER)
    chosen = template_of(config("data.template_kwargs={reasoning_effort: high, model_identity: You are Bob.}").data, tokenizer)
    learned, text = trained(tokenizer, chosen, ANSWER)
    assert "Reasoning: medium" in plain_text and "You are ChatGPT" in plain_text
    assert text.startswith("<|start|>system<|message|>You are Bob.\nKnowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: high\n\n")
    # the system message is prompt: the same answer is trained either way
    assert learned == default == "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Yo<|return|>"


def test_the_clock_is_pinned_for_training_and_real_for_generation():
    tokenizer = harmony_tokenizer()
    today = datetime.date.today().isoformat()
    _, text = trained(tokenizer, template_of(config("data.template_date=2024-02-29").data, tokenizer), ANSWER)
    assert "Current date: 2024-02-29\n" in text and (today == "2024-02-29" or today not in text)
    live = template_of(config().data, tokenizer, pinned=False)
    assert live.jinja == tokenizer.chat_template  # generate, chat and serve: the template as it is, today's date
    from trainer.generate import render_prompt

    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Hi"}], live.jinja, variables={"reasoning_effort": "low"})
    assert f"Current date: {today}\n" in prompt and "Reasoning: low" in prompt
    # the formats templates use: SmolLM3 "%d %B %Y", Llama 3.2 "%d %b %Y"
    from transformers.utils.chat_template_utils import _compile_jinja_template

    clock = pinned_clock("{{ strftime_now('%d %B %Y') }}|{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d') }}", "2025-08-05")
    assert _compile_jinja_template(clock).render() == "05 August 2025|05 Aug 2025|2025-08-05"
    assert pinned_clock(CHATML, "2025-08-05") == CHATML  # a template without a clock is left as it is


def test_qwen3_enable_thinking_false_keeps_answers_and_refuses_reasoning():
    # With enable_thinking false Qwen3's generation prompt writes an empty think block: it is prompt, not answer, and the
    # earlier turns (rendered without one) begin after the assistant header as before.
    tokenizer = qwen3_tokenizer()
    off = with_variables(ChatTemplate("tokenizer", tokenizer.chat_template, None), {"enable_thinking": False}, None)
    on = with_variables(ChatTemplate("tokenizer", tokenizer.chat_template, None), {}, None)
    two = Example((Message("user", "Hi", False), Message("assistant", "Yo", True), Message("user", "More", False),
                   Message("assistant", "Ok", True)), None, "chat.jsonl", 2)
    assert trained(tokenizer, off, two)[0] == "Yo<|im_end|>Ok<|im_end|>"
    assert trained(tokenizer, on, two)[0] == "Yo<|im_end|><think>\n\n</think>\n\nOk<|im_end|>"  # thinking on: the empty block is learned
    problem, _ = trained(tokenizer, off, ANSWER)
    assert problem == ("chat.jsonl:1: the example has reasoning ('reasoning_content' or <think>), but the chat template of the model "
                       "(enable_thinking: False) opens every answer with an empty reasoning block, so the model would never write it; "
                       "remove the reasoning from the data, or let the template think (drop enable_thinking: false from data.template_kwargs).")


def test_a_variable_the_template_never_reads_is_refused_with_the_name_it_reads():
    tokenizer = harmony_tokenizer()
    with pytest.raises(UserError, match=r"data.template_kwargs: the chat template of x never reads 'reasoning_efort' \(did you mean "
                                        r"'reasoning_effort'\?\), so it would change nothing; remove it, or fix its name. The template "
                                        r"reads \(besides the conversation\): .*builtin_tools.*model_identity, reasoning_effort"):
        checked_template(config("data.template_kwargs={reasoning_efort: high}"), tokenizer)
    assert checked_template(config("data.template_kwargs={reasoning_effort: high}"), tokenizer).variables == {"reasoning_effort": "high"}


@pytest.mark.parametrize("setting, message", [
    ("data.template_kwargs={messages: []}", "data.template_kwargs.messages: 'messages' is what trainer itself passes to every render"),
    ("data.template_kwargs={strftime_now: x}", "strftime_now is the template's clock; set the date it shows with data.template_date."),
    ("data.template_date=2025-02-30", "data.template_date: '2025-02-30' is not a date of the calendar; write it as YYYY-MM-DD"),
    ("data.template_kwargs={bad-name: 1}", "data.template_kwargs: 'bad-name' is not in the right form"),
])
def test_template_settings_are_checked(setting, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        config(setting)


def test_the_data_cache_is_keyed_by_the_variables_and_by_the_date_only_where_the_template_shows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Yo"}]}) + "\n"
                            for i in range(8)))

    def entries() -> int:
        return sum(1 for p in cache.cache_root().iterdir() if p.is_dir())

    harmony, qwen = harmony_tokenizer(), qwen3_tokenizer()
    first = prepare_data(config(train=str(data)), harmony)
    prepare_data(config(train=str(data)), harmony)
    assert entries() == 1  # the same day or another: the pinned date makes the same text
    assert "Current date: 2025-08-05" in decode(harmony, first.train[0].input_ids)
    prepare_data(config("data.template_kwargs={reasoning_effort: low}", train=str(data)), harmony)
    prepare_data(config("data.template_date=2026-01-01", train=str(data)), harmony)
    assert entries() == 3
    prepare_data(config(train=str(data)), qwen)
    prepare_data(config("data.template_date=2026-01-01", train=str(data)), qwen)  # Qwen3 shows no date: the same entry
    assert entries() == 4
    prepare_data(config("data.template_kwargs={enable_thinking: false}", train=str(data)), qwen)
    assert entries() == 5
