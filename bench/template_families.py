"""What `trainer data` keeps and refuses, for 13 model families, on one chat file with tools, parallel calls, tool
results, reasoning, system prompts and OpenAI-style call ids: the table in docs/chat-and-tool-data.md.

Each family's tokenizer is the demo model's SmolLM2 tokenizer with the family's special tokens, bos and eos, and its
verbatim chat template (tests/chat_templates, sources in SOURCES.md); named templates (Hermes 3, Command-R7B) as
transformers loads a list of them. The data goes through the real pipeline (trainer.data.pipeline.prepare_data, the
code `trainer data` runs) with data.on_invalid: skip, so every refusal is listed with its reason.

    python bench/template_families.py            # the markdown table
    python bench/template_families.py --details  # and every refusal in full
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's trainer, whatever is installed

TEMPLATES = Path(__file__).resolve().parents[1] / "tests" / "chat_templates"
HARMONY = ["<|startoftext|>", "<|endoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>"]
COHERE = ["<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>",
          "<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_THINKING|>", "<|END_THINKING|>", "<|START_ACTION|>", "<|END_ACTION|>",
          "<|START_TOOL_RESULT|>", "<|END_TOOL_RESULT|>"]
DEEPSEEK = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>",
            "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>",
            "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"]
KIMI = ["<|im_system|>", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>", "<|im_end|>", "<|tool_calls_section_begin|>",
        "<|tool_calls_section_end|>", "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>", "[BOS]", "[EOS]"]
MISTRAL = ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
MISTRAL3 = MISTRAL + ["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[CALL_ID]", "[ARGS]", "[TOOL_CONTENT]", "[IMG]"]
# family: (template file(s): one, a (default, tool_use) pair, or None for the tokenizer's own; special tokens; bos; eos)
FAMILIES = {
    "Qwen3": ("qwen3.jinja", ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>", "<think>", "</think>",
                              "<tool_response>", "</tool_response>"], None, "<|im_end|>"),
    "Kimi K2": ("kimi-k2.jinja", KIMI, "[BOS]", "<|im_end|>"),
    "Functionary v3.2": ("functionary-v3.2.jinja", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                         "<|begin_of_text|>", "<|eot_id|>"),
    "Mistral Small 3.2": ("mistral-small-3.2.jinja", MISTRAL3, "<s>", "</s>"),
    "Phi-4": ("phi-4.jinja", ["<|im_start|>", "<|im_sep|>", "<|im_end|>", "<|endoftext|>"], None, "<|im_end|>"),
    "Granite 3.3": ("granite-3.3.jinja", ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>",
                                          "<|start_of_cite|>", "<|end_of_cite|>"], None, "<|end_of_text|>"),
    "DeepSeek V3.1": ("deepseek-v3.1.jinja", DEEPSEEK, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "Gemma 2": ("gemma2.jinja", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>"),
    "SmolLM2": (None, [], None, None),
    "gpt-oss": ("gpt-oss.jinja", HARMONY, "<|startoftext|>", "<|return|>"),
    "Command-R7B": (("command-r7b-default.jinja", "command-r7b-tool_use.jinja"), COHERE, "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    "Hermes 3": (("hermes3-default.jinja", "hermes3-tool_use.jinja"), ["<|begin_of_text|>", "<|im_start|>", "<|im_end|>", "<tool_call>",
                                                                       "</tool_call>", "<tool_response>", "</tool_response>"],
                 "<|begin_of_text|>", "<|im_end|>"),
    "Mistral v0.3": ("mistral-v0.3.jinja", MISTRAL, "<s>", "</s>"),
}

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Local time in a city.",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def call(name: str, city: str, ident: str) -> dict:
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": json.dumps({"city": city})}}


# one record per kind of example; the names head the table's columns
RECORDS = {
    "chat": {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}]},
    "system": {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"},
                            {"role": "assistant", "content": "Paris."}]},
    "multi-turn": {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                                {"role": "user", "content": "Bye."}, {"role": "assistant", "content": "Goodbye."}]},
    "tools": {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call("get_weather", "Paris", "call_8pQ2vXcY3nR7tLm4")]},
        {"role": "tool", "tool_call_id": "call_8pQ2vXcY3nR7tLm4", "content": '{"temp_c": 18}'},
        {"role": "assistant", "content": "It is 18 C in Paris."}]},
    "parallel": {"tools": [WEATHER, TIME], "messages": [
        {"role": "user", "content": "Weather and time in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [call("get_weather", "Rome", "call_a1b2c3d4e5f6g7h8"),
                                                              call("get_time", "Rome", "call_z9y8x7w6v5u4t3s2")]},
        {"role": "tool", "tool_call_id": "call_a1b2c3d4e5f6g7h8", "content": '{"temp_c": 24}'},
        {"role": "tool", "tool_call_id": "call_z9y8x7w6v5u4t3s2", "content": '"3 pm"'},
        {"role": "assistant", "content": "24 C at 3 pm."}]},
    "reasoning": {"messages": [{"role": "user", "content": "2+2?"},
                               {"role": "assistant", "content": "4.", "reasoning_content": "Two plus two is four."}]},
    "all at once": {"tools": [WEATHER], "messages": [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "reasoning_content": "I need the tool.",
         "tool_calls": [call("get_weather", "Oslo", "call_q1w2e3r4t5y6u7i8")]},
        {"role": "tool", "tool_call_id": "call_q1w2e3r4t5y6u7i8", "content": '{"temp_c": 2}'},
        {"role": "assistant", "content": "2 C in Oslo.", "reasoning_content": "The tool said 2."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome.", "reasoning_content": "Be polite."}]},
}

# a refusal's reason, in the table's words
REASONS = [
    (r"has 'tools', but .* ignores them", "tools ignored"),
    (r"has assistant 'tool_calls', but .* does not render them", "calls not rendered"),
    (r"has 'tool' messages, but .* does not render them", "results not rendered"),
    (r"has reasoning .* drops it", "reasoning dropped"),
    (r"opens every answer with an empty reasoning block", "reasoning off"),
    (r"refuses a system role", "system role refused"),
    (r"drops the system prompt", "system prompt dropped"),
    (r"could not render this conversation: (.*?)(;|$)", r"template raises: \1"),
    (r"does not close assistant message", "turn end unknown"),
    (r"could not find where assistant message", "turn start unknown"),
]


def reason(message: str) -> str:
    for pattern, label in REASONS:
        found = re.search(pattern, message)
        if found:
            return found.expand(label)
    return message[:80]


def family_tokenizer(base: Path, family: str):
    from transformers import AutoTokenizer

    templates, specials, bos, eos = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(base)
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
    if bos:
        tokenizer.bos_token = bos
    if eos:
        tokenizer.eos_token = eos
    if isinstance(templates, tuple):
        tokenizer.chat_template = {"default": (TEMPLATES / templates[0]).read_text(), "tool_use": (TEMPLATES / templates[1]).read_text()}
    elif templates:
        tokenizer.chat_template = (TEMPLATES / templates).read_text()
    return tokenizer


def survey(family: str, base: Path, data: Path, work: Path) -> dict:
    from trainer.config import parse_config
    from trainer.data.pipeline import prepare_data

    tokenizer = family_tokenizer(base, family)
    config = parse_config(f"model: {{name_or_path: {family.replace(' ', '-')}}}\n"
                          f"data: {{train: {data}, on_invalid: skip, validation_split: 0, max_seq_length: 4096}}\n"
                          f"training: {{epochs: 1}}\noutput: {{dir: {work / 'run'}}}\n", check_files=False)
    prepared = prepare_data(config, tokenizer, stop_on_problems=False)
    split = prepared.splits[0]
    names = list(RECORDS)
    refused = {p.line: reason(p.message) for p in split.problems}
    encode = prepared.encoder
    return {"family": family, "kept": [n for i, n in enumerate(names, 1) if i not in refused],
            "refused": {names[line - 1]: why for line, why in refused.items()},
            "reasoning_dropped": int(prepared.train.sides().column("reasoning_dropped").sum()) if prepared.train else 0,
            "template": encode.describe(), "problems": [str(p) for p in split.problems]}


def table(results: list[dict]) -> str:
    lines = ["| family | keeps | refuses (why) | turns trained without their reasoning | the template, as `trainer data` describes it |",
             "|---|---|---|---|---|"]
    for r in results:
        refused = "; ".join(f"{name} ({why})" for name, why in r["refused"].items()) or "nothing"
        lines.append(f"| {r['family']} | {len(r['kept'])} of {len(RECORDS)}: {', '.join(r['kept']) or 'none'} | {refused} | "
                     f"{r['reasoning_dropped']} | {r['template']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--details", action="store_true", help="print every refusal in full")
    args = parser.parse_args()
    import os

    from trainer.demo import demo_model_path
    from trainer.models import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "smollm2"
        load_tokenizer(str(demo_model_path())).save_pretrained(base)
        os.environ["TRAINER_CACHE"] = str(work / "cache")  # a fresh data cache: every family prepared now
        data = work / "chat-tools-reasoning.jsonl"
        data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS.values()))
        results = [survey(family, base, data, work) for family in FAMILIES]
    print(f"Records: {', '.join(RECORDS)} ({len(RECORDS)} lines).\n")
    print(table(results))
    if args.details:
        for r in results:
            print(f"\n{r['family']}:")
            for problem in r["problems"]:
                print(f"  {problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
