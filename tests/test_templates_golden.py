"""Golden masks on real chat templates (tests/chat_templates, sources in SOURCES.md).

One conversation with a system prompt, a tool call, its result and a second user turn is rendered on each
template; the test writes out, literally, the text that is trained. The tokenizers are the demo model's
SmolLM2 tokenizer with each family's special tokens added, so tokens never straddle a turn boundary the
way they would not in the real tokenizer either.
"""
from pathlib import Path

import pytest

from trainer.data.formats import Example, Message, ToolCall
from trainer.data.templates import ChatTemplate, resolve_template
from trainer.data.tokenize import IGNORE, Tokenizer

# the demo model's SmolLM2 tokenizer (smollm2_tokenizer): `make test` downloads it, so these are not in the unit tier
pytestmark = pytest.mark.slow

TEMPLATES = Path(__file__).parent / "chat_templates"
FAMILIES = {
    "llama": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"],
              "<|begin_of_text|>", "<|eot_id|>"),
    "qwen": (["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>", "<think>", "</think>",
              "<tool_response>", "</tool_response>"], None, "<|im_end|>"),
    # Hermes 3: Llama 3.1's bos, ChatML turns, <|im_end|> its eos
    "hermes": (["<|begin_of_text|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
               "<|begin_of_text|>", "<|im_end|>"),
    "mistral": (["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                 "[/TOOL_RESULTS]"], "<s>", "</s>"),
    "gemma": (["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>"),
    "phi": (["<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>"], None, "<|endoftext|>"),
    "deepseek": (["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>",
                  "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>",
                  "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"],
                 "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def saved_smollm2(smollm2_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("smollm2-tokenizer")
    smollm2_tokenizer.save_pretrained(path)
    return path


def family_tokenizer(saved, family: str):
    from transformers import AutoTokenizer

    specials, bos, eos = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(saved)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    if bos:
        tokenizer.bos_token = bos
    tokenizer.eos_token = eos
    return tokenizer


def conversation(tools: bool = True, reasoning: bool = False) -> Example:
    think = (lambda text: text) if reasoning else (lambda text: None)
    messages = [Message("system", "You are a weather bot.", False), Message("user", "Weather in Paris?", False)]
    if tools:
        messages += [Message("assistant", "", True, (ToolCall("get_weather", {"city": "Paris"}, "call00001"),), think("Call the tool.")),
                     Message("tool", '{"temp_c": 18}', False, name="get_weather", tool_call_id="call00001")]
    messages += [Message("assistant", "It is 18 C in Paris.", True, (), think("The tool said 18.")),
                 Message("user", "Thanks!", False), Message("assistant", "You're welcome.", True, (), think("Be polite."))]
    return Example(tuple(messages), None, "chat.jsonl", 4, (WEATHER,) if tools else None)


def trained(tokenizer, jinja: str | ChatTemplate, example: Example, fold: bool = False, name: str = "the model"):
    """(the trained text, one string per run of trained tokens; the Tokenized result) or the problem."""
    template = jinja if isinstance(jinja, ChatTemplate) else ChatTemplate("tokenizer", jinja, None)
    encode = Tokenizer(tokenizer, template, "assistant", 4096, fold_system=fold, model_name=name)
    result, problem = encode(example)
    if problem:
        return str(problem), None
    runs, current = [], []
    for token, label in zip(result.input_ids, result.labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs, result


def template(name: str) -> str:
    return (TEMPLATES / name).read_text()


CALL_QWEN = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
CALL_LLAMA = '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'


@pytest.mark.parametrize("name", ["llama3.1.jinja", "llama3.2.jinja"])
def test_llama3(saved_smollm2, name):
    runs, _ = trained(family_tokenizer(saved_smollm2, "llama"), template(name), conversation())
    assert runs == [CALL_LLAMA, "It is 18 C in Paris.<|eot_id|>", "You're welcome.<|eot_id|>"]


def test_qwen25_with_tools(saved_smollm2):
    runs, _ = trained(family_tokenizer(saved_smollm2, "qwen"), template("qwen2.5.jinja"), conversation())
    assert runs == [CALL_QWEN, "It is 18 C in Paris.<|im_end|>", "You're welcome.<|im_end|>"]


def test_qwen25_default_system_prompt_is_not_trained(saved_smollm2):
    example = Example(conversation(tools=False).messages[1:], None, "chat.jsonl", 4)
    runs, _ = trained(family_tokenizer(saved_smollm2, "qwen"), template("qwen2.5.jinja"), example)
    assert runs == ["It is 18 C in Paris.<|im_end|>", "You're welcome.<|im_end|>"]


def test_qwen3_trains_each_turn_as_rendered_in_the_whole_conversation(saved_smollm2):
    # Qwen3 drops the reasoning of turns before the last user turn: those are trained without it (and counted),
    # the last turn with its <think> block; the old prefix-by-prefix mask refused this conversation.
    runs, result = trained(family_tokenizer(saved_smollm2, "qwen"), template("qwen3.jinja"), conversation(reasoning=True))
    assert runs == [CALL_QWEN, "It is 18 C in Paris.<|im_end|>", "<think>\nBe polite.\n</think>\n\nYou're welcome.<|im_end|>"]
    assert result.reasoning_dropped == 2


def test_qwen3_turn_by_turn_keeps_every_reasoning(saved_smollm2):
    from trainer.data.pipeline import split_turns

    tokenizer = family_tokenizer(saved_smollm2, "qwen")
    pieces = split_turns(conversation(reasoning=True))
    assert len(pieces) == 3
    runs = [trained(tokenizer, template("qwen3.jinja"), piece)[0] for piece in pieces]
    assert runs == [['<think>\nCall the tool.\n</think>\n\n' + CALL_QWEN],
                    ["<think>\nThe tool said 18.\n</think>\n\nIt is 18 C in Paris.<|im_end|>"],
                    ["<think>\nBe polite.\n</think>\n\nYou're welcome.<|im_end|>"]]


def test_mistral_nemo_drops_the_system_prompt_unless_folded(saved_smollm2):
    tokenizer = family_tokenizer(saved_smollm2, "mistral")
    problem, _ = trained(tokenizer, template("mistral-nemo.jinja"), conversation(), name="Mistral-Nemo")
    assert problem == ("chat.jsonl:4: the example has a system prompt, but the chat template of Mistral-Nemo drops the system prompt of a "
                       "conversation that ends with an answer (it puts it only into a final user turn); set data.system_prompt: fold "
                       "to put it at the start of the first user turn.")
    runs, _ = trained(tokenizer, template("mistral-nemo.jinja"), conversation(), fold=True)
    assert runs == ['[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call00001"}]</s>',
                    "It is 18 C in Paris.</s>", "You're welcome.</s>"]


def test_gemma2_refuses_system_and_tools(saved_smollm2):
    tokenizer = family_tokenizer(saved_smollm2, "gemma")
    problem, _ = trained(tokenizer, template("gemma2.jinja"), conversation(), name="gemma-2-2b-it")
    assert problem.startswith("chat.jsonl:4: the example has 'tools', but the chat template of gemma-2-2b-it ignores them")
    assert "data.chat_template: hermes" in problem and "not trained on ChatML" in problem
    problem, _ = trained(tokenizer, template("gemma2.jinja"), conversation(tools=False), name="gemma-2-2b-it")
    assert "refuses a system role; set data.system_prompt: fold" in problem
    runs, _ = trained(tokenizer, template("gemma2.jinja"), conversation(tools=False), fold=True)
    assert runs == ["It is 18 C in Paris.<end_of_turn>", "You're welcome.<end_of_turn>"]


def test_gemma3_folds_the_system_prompt_itself(saved_smollm2):
    runs, _ = trained(family_tokenizer(saved_smollm2, "gemma"), template("gemma3.jinja"), conversation(tools=False))
    assert runs == ["It is 18 C in Paris.<end_of_turn>", "You're welcome.<end_of_turn>"]


def test_phi35_trains_end_but_not_the_final_eos(saved_smollm2):
    tokenizer = family_tokenizer(saved_smollm2, "phi")
    runs, _ = trained(tokenizer, template("phi3.5.jinja"), conversation(tools=False))
    assert runs == ["It is 18 C in Paris.<|end|>", "You're welcome.<|end|>"]
    problem, _ = trained(tokenizer, template("phi3.5.jinja"), conversation(), name="Phi-3.5")
    assert "the chat template of Phi-3.5 ignores them" in problem


def test_deepseek_r1_distill_strips_reasoning(saved_smollm2):
    tokenizer = family_tokenizer(saved_smollm2, "deepseek")
    runs, _ = trained(tokenizer, template("deepseek-r1-distill-qwen.jinja"), conversation(tools=False))
    assert runs == ["It is 18 C in Paris.<｜end▁of▁sentence｜>", "You're welcome.<｜end▁of▁sentence｜>"]
    problem, _ = trained(tokenizer, template("deepseek-r1-distill-qwen.jinja"), conversation(tools=False, reasoning=True), name="R1-Distill")
    assert "has reasoning ('reasoning_content' or <think>), but the chat template of R1-Distill drops it" in problem


def test_deepseek_r1_distill_tool_calls_without_a_tools_list(saved_smollm2):
    example = conversation()
    example = Example(example.messages, None, example.file, example.line, None)  # R1 renders calls but no tools list
    runs, _ = trained(family_tokenizer(saved_smollm2, "deepseek"), template("deepseek-r1-distill-qwen.jinja"), example)
    # The template needs the arguments as JSON text and, with transformers dropping a None content, an empty content,
    # which it renders as an empty answer after the calls: that is how this template lays the turn out, so it is trained.
    assert runs == [('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```'
                     '<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜Assistant｜><｜end▁of▁sentence｜>'),
                    "It is 18 C in Paris.<｜end▁of▁sentence｜>", "You're welcome.<｜end▁of▁sentence｜>"]


def test_smollm2_own_template_and_builtin_hermes(smollm2_tokenizer):
    own = smollm2_tokenizer.chat_template
    problem, _ = trained(smollm2_tokenizer, own, conversation(), name="SmolLM2-135M-Instruct")
    assert "the chat template of SmolLM2-135M-Instruct ignores them" in problem and "data.chat_template: hermes" in problem
    assert "not trained on ChatML" not in problem  # SmolLM2 is a ChatML model: hermes is its own layout
    runs, _ = trained(smollm2_tokenizer, own, conversation(tools=False))
    assert runs == ["It is 18 C in Paris.<|im_end|>", "You're welcome.<|im_end|>"]
    hermes = resolve_template("hermes", smollm2_tokenizer).jinja
    runs, _ = trained(smollm2_tokenizer, hermes, conversation(reasoning=True))
    assert runs == ['<think>\nCall the tool.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
                    "<think>\nThe tool said 18.\n</think>\n\nIt is 18 C in Paris.<|im_end|>",
                    "<think>\nBe polite.\n</think>\n\nYou're welcome.<|im_end|>"]


def test_probe_describes_each_template(saved_smollm2):
    from trainer.data.masks import probe_template

    qwen3 = probe_template(family_tokenizer(saved_smollm2, "qwen"), template("qwen3.jinja"))
    assert (qwen3.tools, qwen3.tool_calls, qwen3.reasoning, qwen3.system) == (True, True, "last", "keeps")
    assert qwen3.describe() == ("renders tools, keeps reasoning only after the last user turn (drops earlier turns' reasoning), "
                                "keeps the system prompt")
    gemma2 = probe_template(family_tokenizer(saved_smollm2, "gemma"), template("gemma2.jinja"))
    assert (gemma2.tools, gemma2.system, gemma2.header, gemma2.close) == (False, "refuses", "<start_of_turn>model\n", "<end_of_turn>")


def test_smollm3_reasoning_inline_and_no_think_mode(saved_smollm2):
    tokenizer = family_tokenizer(saved_smollm2, "qwen")
    # The Hub template lists the tools (as xml_tools) but renders no assistant tool calls: such data is refused
    problem, _ = trained(tokenizer, template("smollm3.jinja"), conversation(), name="SmolLM3-3B")
    assert problem == ("chat.jsonl:4: the example has assistant 'tool_calls', but the chat template of SmolLM3-3B does not render "
                       "them; set data.chat_template: hermes (a built-in ChatML template that renders tools, tool calls and results) "
                       "or use a model whose template renders tools.")
    runs, _ = trained(tokenizer, template("smollm3.jinja"), conversation(tools=False, reasoning=True))
    assert runs == ["<think>\nThe tool said 18.\n</think>\n\nIt is 18 C in Paris.<|im_end|>",
                    "<think>\nBe polite.\n</think>\n\nYou're welcome.<|im_end|>"]
    quiet = conversation(tools=False)
    quiet = Example((Message("system", "Be brief. /no_think", False),) + quiet.messages[1:], None, quiet.file, quiet.line)
    runs, result = trained(tokenizer, template("smollm3.jinja"), quiet)
    # With /no_think in the system prompt every answer opens with an empty think block, which the generation prompt
    # writes in that mode: it is prompt, not answer, so it is rendered but not trained.
    assert runs == ["It is 18 C in Paris.<|im_end|>", "You're welcome.<|im_end|>"]
    assert tokenizer.decode(result.input_ids).count("<|im_start|>assistant\n<think>\n\n</think>\nIt is 18 C") == 1


def named(tokenizer, family: str):
    """The tokenizer with the model's named templates, as transformers loads a list of them from tokenizer_config.json."""
    tokenizer.chat_template = {variant: template(f"{family}-{variant}.jinja") for variant in ("default", "tool_use")}
    return tokenizer


def test_hermes3_tool_use_template_for_conversations_with_tools(saved_smollm2):
    # Hermes 3's default template ignores tools; apply_chat_template(tools=...) picks its tool_use template, and so does trainer.
    tokenizer = named(family_tokenizer(saved_smollm2, "hermes"), "hermes3")
    chosen = resolve_template("tokenizer", tokenizer)
    runs, result = trained(tokenizer, chosen, conversation())
    assert runs == [CALL_QWEN, "It is 18 C in Paris.<|im_end|>", "You're welcome.<|im_end|>"]
    text = tokenizer.decode(result.input_ids)
    assert "Here are the available tools: <tools> {\"type\": \"function\", \"function\": {\"name\": \"get_weather\"" in text
    assert '<|im_start|>tool\n<tool_response>\n{"temp_c": 18}\n</tool_response>\n<|im_end|><|im_start|>assistant\nIt is 18 C' in text
    items = Tokenizer(tokenizer, chosen, "assistant", 4096).template_messages(conversation().messages, [WEATHER])
    assert text == tokenizer.apply_chat_template(items, tools=[WEATHER], tokenize=False)  # the template apply_chat_template picks
    runs, result = trained(tokenizer, chosen, conversation(tools=False))
    assert runs == ["It is 18 C in Paris.<|im_end|>", "You're welcome.<|im_end|>"]
    assert tokenizer.decode(result.input_ids).startswith("<|begin_of_text|><|im_start|>system\nYou are a weather bot.<|im_end|>")
    problem, _ = trained(tokenizer, resolve_template("default", tokenizer), conversation(), name="Hermes-3")
    assert "the example has 'tools', but the chat template of Hermes-3 ignores them" in problem


def with_call_id(example: Example, call_id: str) -> Example:
    """The example with its tool call, and the result that answers it, under another id."""
    from dataclasses import replace

    messages = tuple(replace(m, tool_calls=tuple(replace(c, id=call_id) for c in m.tool_calls)) if m.tool_calls else
                     replace(m, tool_call_id=call_id) if m.role == "tool" else m for m in example.messages)
    return replace(example, messages=messages)


def test_mistral_v03_remaps_openai_call_ids(saved_smollm2):
    # Mistral v0.3 raises on any id that is not 9 characters; OpenAI's ids (call_...) get 9 letters and digits made
    # from them, the same in the call and in its result, and the conversation renders as with ids it takes as written.
    from trainer.data.masks import short_call_id

    tokenizer = family_tokenizer(saved_smollm2, "mistral")
    jinja = template("mistral-v0.3.jinja")
    openai = with_call_id(conversation(), "call_8Zt1mQkX0aWv3LpR")

    def encode(example: Example, ids: str):
        return Tokenizer(tokenizer, ChatTemplate("tokenizer", jinja, None), "assistant", 4096, fold_system=True, tool_call_ids=ids)(example)

    _, problem = encode(openai, "keep")
    assert str(problem) == ("chat.jsonl:4: the chat template could not render this conversation: Tool call IDs should be alphanumeric "
                            "strings with length 9!; set data.tool_call_ids: remap to give every call a 9-character id (the same for "
                            "the call and its result)")
    new = short_call_id("call_8Zt1mQkX0aWv3LpR")
    assert len(new) == 9 and new.isalnum() and new == short_call_id("call_8Zt1mQkX0aWv3LpR")
    as_written, _ = encode(conversation(), "keep")  # its id, call00001, suits the template
    for ids in ("auto", "remap"):
        remapped, problem = encode(openai, ids)
        assert problem is None
        text = tokenizer.decode(remapped.input_ids)
        assert f'"id": "{new}"}}]</s>[TOOL_RESULTS] {{"content": {{"temp_c": 18}}, "call_id": "{new}"}}[/TOOL_RESULTS]' in text
        assert text.replace(new, "call00001") == tokenizer.decode(as_written.input_ids)
        assert [tokenizer.decode([t for t, label in zip(remapped.input_ids, remapped.labels) if label != IGNORE])] == [
            f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {{"city": "Paris"}}, "id": "{new}"}}]</s> It is 18 C in Paris.</s> '
            "You're welcome.</s>"]
    kept, _ = encode(conversation(), "auto")  # auto keeps ids the template takes
    assert kept.input_ids == as_written.input_ids


COHERE = ["<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>",
          "<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_THINKING|>", "<|END_THINKING|>", "<|START_ACTION|>", "<|END_ACTION|>",
          "<|START_TOOL_RESULT|>", "<|END_TOOL_RESULT|>"]
FAMILIES["cohere"] = (COHERE, "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>")  # Command-R7B: <|END_OF_TURN_TOKEN|> is its eos


def test_command_r7b_trains_the_end_of_turn_and_keeps_tool_conversations(saved_smollm2):
    # Command-R7B closes an answer with <|END_RESPONSE|><|END_OF_TURN_TOKEN|> and stops on the second: both are trained.
    # A tool call ends <|END_ACTION|><|END_OF_TURN_TOKEN|>, with the same stop token (the turn was refused before).
    from trainer.generate import stop_ids

    tokenizer = named(family_tokenizer(saved_smollm2, "cohere"), "command-r7b")
    chosen = resolve_template("tokenizer", tokenizer)
    runs, _ = trained(tokenizer, chosen, conversation())
    assert runs == ['<|START_THINKING|><|END_THINKING|><|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "get_weather", '
                    '"parameters": {"city": "Paris"}}\n]<|END_ACTION|><|END_OF_TURN_TOKEN|>',
                    "<|START_RESPONSE|>It is 18 C in Paris.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
                    "<|START_RESPONSE|>You're welcome.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"]
    # default: the generation prompt opens the answer with <|START_RESPONSE|>, so that is prompt, not answer
    runs, result = trained(tokenizer, chosen, conversation(tools=False))
    assert runs == ["It is 18 C in Paris.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", "You're welcome.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"]
    last_trained = max(k for k, label in enumerate(result.labels) if label != IGNORE)
    assert result.input_ids[last_trained] in stop_ids(tokenizer)  # generation stops on the token that ends what was trained
    tokenizer.eos_token = "<BOS_TOKEN>"  # even where the tokenizer's eos is another token, <|END_OF_TURN_TOKEN|> stops generation
    assert tokenizer.convert_tokens_to_ids("<|END_OF_TURN_TOKEN|>") in stop_ids(tokenizer)


HARMONY = ["<|startoftext|>", "<|endoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>"]
FAMILIES["harmony"] = (HARMONY, "<|startoftext|>", "<|return|>")  # gpt-oss: <|return|> is its eos
TIME = {"type": "function", "function": {"name": "get_time", "description": "Local time in a city.",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL_HARMONY = ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'


def test_gpt_oss_multi_turn_tools_and_reasoning_in_the_analysis_channel(saved_smollm2):
    # Reasoning goes to the analysis channel (the template reads `thinking`), which gpt-oss renders only in the last
    # answer: that one ends with <|return|>, the token generation stops on. A call ends with <|call|>; an earlier answer's
    # <|end|> is the history's copy of <|return|>, rendered but not trained. Every turn was refused before.
    from trainer.data.masks import probe_template
    from trainer.generate import stop_ids

    tokenizer = family_tokenizer(saved_smollm2, "harmony")
    features = probe_template(tokenizer, template("gpt-oss.jinja"))
    assert (features.reasoning_field, features.reasoning, features.close, features.last_close, features.call_close,
            features.parallel_calls) == ("thinking", "last", "<|end|>", "<|return|>", "<|call|>", False)
    # what `trainer data` reports (it said "keeps reasoning in every turn" while training <think> in the final channel)
    assert features.describe() == ("renders tools, keeps reasoning only after the last user turn (drops earlier turns' reasoning), "
                                   "keeps the system prompt")
    runs, result = trained(tokenizer, template("gpt-oss.jinja"), conversation(reasoning=True))
    assert runs == [CALL_HARMONY, "<|channel|>final<|message|>It is 18 C in Paris.",
                    "<|channel|>analysis<|message|>Be polite.<|end|><|start|>assistant<|channel|>final<|message|>You're welcome.<|return|>"]
    assert result.reasoning_dropped == 2
    text = tokenizer.decode(result.input_ids)
    assert "<think>" not in text and "<|start|>developer<|message|># Instructions\n\nYou are a weather bot.\n\n# Tools" in text
    assert ('<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"{\\"temp_c\\": 18}"<|end|>'
            "<|start|>assistant<|channel|>final<|message|>It is 18 C in Paris.<|end|><|start|>user<|message|>Thanks!<|end|>") in text
    assert {tokenizer.convert_tokens_to_ids(t) for t in ("<|return|>", "<|call|>")} <= set(stop_ids(tokenizer))


def test_gpt_oss_turn_by_turn_trains_each_reasoning_and_return(saved_smollm2):
    # data.turns: each: every turn is the last of its example, so each keeps its reasoning and is trained as generated
    from trainer.data.pipeline import split_turns

    tokenizer = family_tokenizer(saved_smollm2, "harmony")
    runs = [trained(tokenizer, template("gpt-oss.jinja"), piece)[0] for piece in split_turns(conversation(reasoning=True))]
    assert runs == [["<|channel|>analysis<|message|>Call the tool.<|end|><|start|>assistant" + CALL_HARMONY],
                    ["<|channel|>analysis<|message|>The tool said 18.<|end|><|start|>assistant<|channel|>final<|message|>It is 18 C in Paris.<|return|>"],
                    ["<|channel|>analysis<|message|>Be polite.<|end|><|start|>assistant<|channel|>final<|message|>You're welcome.<|return|>"]]


def test_gpt_oss_parallel_calls_one_per_message(saved_smollm2):
    # gpt-oss's template renders only the first call of a message and names every result after the last call: parallel
    # calls go one per message, each followed by its result (matched by id, whatever order the results come in).
    tokenizer = family_tokenizer(saved_smollm2, "harmony")
    calls = (ToolCall("get_weather", {"city": "Paris"}, "call_w"), ToolCall("get_time", {"city": "Paris"}, "call_t"))
    messages = (Message("user", "Weather and time in Paris?", False), Message("assistant", "", True, calls, "Two tools."),
                Message("tool", '"3 pm"', False, name="get_time", tool_call_id="call_t"),
                Message("tool", '{"temp_c": 18}', False, name="get_weather", tool_call_id="call_w"),
                Message("assistant", "18 C at 3 pm.", True, (), "Both answered."))
    runs, result = trained(tokenizer, template("gpt-oss.jinja"), Example(messages, None, "chat.jsonl", 2, (WEATHER, TIME)))
    assert runs == [CALL_HARMONY, ' to=functions.get_time<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
                    "<|channel|>analysis<|message|>Both answered.<|end|><|start|>assistant<|channel|>final<|message|>18 C at 3 pm.<|return|>"]
    text = tokenizer.decode(result.input_ids)
    assert ('{"city": "Paris"}<|call|><|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"{\\"temp_c\\": 18}"<|end|>'
            "<|start|>assistant to=functions.get_time") in text
    assert '<|start|>functions.get_time to=assistant<|channel|>commentary<|message|>"\\"3 pm\\""<|end|>' in text


MISTRAL3 = ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
            "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[CALL_ID]", "[ARGS]", "[TOOL_CONTENT]", "[IMG]"]
FAMILIES["mistral3"] = (MISTRAL3, "<s>", "</s>")


def test_mistral_small_32_tools_system_prompt_and_remapped_ids(saved_smollm2):
    # Mistral Small 3.2: its own system prompt unless the data gives one, [TOOL_CALLS]name[CALL_ID]id[ARGS]{...}, results as
    # [TOOL_RESULTS]id[TOOL_CONTENT]...; it raises on ids that are not 9 characters, so OpenAI's are remapped (auto); its
    # default system prompt writes today's date, pinned by data.template_date.
    from trainer.data.masks import short_call_id
    from trainer.data.templates import with_variables

    tokenizer = family_tokenizer(saved_smollm2, "mistral3")
    chosen = with_variables(ChatTemplate("tokenizer", template("mistral-small-3.2.jinja"), None), {}, "2025-08-05")
    runs, result = trained(tokenizer, chosen, conversation())
    assert runs == ['[TOOL_CALLS]get_weather[CALL_ID]call00001[ARGS]{"city": "Paris"}</s>', "It is 18 C in Paris.</s>", "You're welcome.</s>"]
    assert tokenizer.decode(result.input_ids) == (
        '<s>[SYSTEM_PROMPT]You are a weather bot.[/SYSTEM_PROMPT][INST]Weather in Paris?[/INST][TOOL_CALLS]get_weather[CALL_ID]call00001'
        '[ARGS]{"city": "Paris"}</s>[TOOL_RESULTS]call00001[TOOL_CONTENT]{"temp_c": 18}[/TOOL_RESULTS]It is 18 C in Paris.</s>'
        '[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}][/AVAILABLE_TOOLS]'
        "[INST]Thanks![/INST]You're welcome.</s>")
    new = short_call_id("call_8Zt1mQkX0aWv3LpR")
    runs, result = trained(tokenizer, chosen, with_call_id(conversation(), "call_8Zt1mQkX0aWv3LpR"))
    assert runs[0] == f'[TOOL_CALLS]get_weather[CALL_ID]{new}[ARGS]{{"city": "Paris"}}</s>'
    assert f"[TOOL_RESULTS]{new}[TOOL_CONTENT]" in tokenizer.decode(result.input_ids)
    quiet = Example(conversation(tools=False).messages[1:], None, "chat.jsonl", 4)  # no system prompt: the model's own, dated
    _, result = trained(tokenizer, chosen, quiet)
    assert "The current date is 2025-08-05." in tokenizer.decode(result.input_ids)
