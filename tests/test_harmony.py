"""gpt-oss's answers (harmony) read back as OpenAI's message: analysis -> reasoning_content, final -> content, messages to
functions -> tool_calls, in `trainer generate` and the server's transformers engine; generation goes on after the
analysis message's <|end|>. And the server's remap of tool-call ids for Mistral's templates, mapped back in the answer.

The models are tiny Llamas (2 layers) trained here, in a few seconds, to write one fixed answer to each prompt: real
models answering in harmony through the real generation, engine and HTTP app."""
import asyncio
import json
from pathlib import Path

import httpx
import pytest
from conftest import make_char_tokenizer

from trainer import harmony
from trainer.config import parse_config
from trainer.generate import Loaded, generate, render_prompt, stop_ids

TEMPLATES = Path(__file__).parent / "chat_templates"
HARMONY = ["<|startoftext|>", "<|endoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>"]
MISTRAL = ["<s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = '<|channel|>analysis<|message|>Need it.<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
FINAL = "<|channel|>analysis<|message|>Tool said 18.<|end|><|start|>assistant<|channel|>final<|message|>It is 18 C.<|return|>"


def test_read_maps_channels_and_calls():
    assert harmony.read(FINAL) == harmony.Answer("It is 18 C.", "Tool said 18.", [])
    assert harmony.read(CALL) == harmony.Answer("", "Need it.", [{"name": "get_weather", "arguments": {"city": "Paris"}}])
    # the recipient may follow the channel, with <|constrain|>; a preamble in commentary is content; two calls
    two = ('<|channel|>commentary<|message|>Checking both.<|end|><|start|>assistant<|channel|>commentary to=functions.a <|constrain|>json'
           '<|message|>{"x": 1}<|call|><|start|>assistant to=functions.b<|channel|>commentary json<|message|>{}<|call|>')
    assert harmony.read(two) == harmony.Answer("Checking both.", "", [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}])
    # arguments that are not JSON, or cut off by max_new_tokens: a malformed call (None), not a call with guessed arguments
    assert harmony.read('<|channel|>commentary to=functions.a json<|message|>{"x": <|call|>').calls == [None]
    assert harmony.read('<|channel|>commentary to=functions.a json<|message|>{"x": 1}').calls == [None]
    assert harmony.read("<|channel|>analysis<|message|>Thinking and out of tok") == harmony.Answer("", "Thinking and out of tok", [])
    assert harmony.read("plain text<|return|>") == harmony.Answer("plain text", "", [])


def test_reader_gives_what_is_new_piece_by_piece():
    reader = harmony.Reader()
    pieces = [reader.feed(FINAL[k : k + 3]) for k in range(0, len(FINAL), 3)]
    assert "".join(r for r, _ in pieces) == "Tool said 18." and "".join(c for _, c in pieces) == "It is 18 C."
    assert reader.answer == harmony.read(FINAL)


def char_tokenizer(template: str, specials: list[str]):
    """The character tokenizer with a family's template and special tokens, decoding to the text it encoded."""
    from tokenizers import decoders

    tokenizer = make_char_tokenizer((TEMPLATES / template).read_text())
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.backend_tokenizer.decoder = decoders.Fuse()  # one token per character: joined as they are
    return tokenizer


def harmony_tokenizer():
    tokenizer = char_tokenizer("gpt-oss.jinja", HARMONY)
    tokenizer.eos_token = "<|return|>"
    return tokenizer


def test_end_of_a_message_does_not_stop_a_gpt_oss_answer():
    # gpt-oss's <|end|> closes its analysis message, after which it writes the final one: only <|return|> and <|call|> stop
    tokenizer = harmony_tokenizer()
    assert harmony.is_harmony(tokenizer)
    ids = {tokenizer.convert_ids_to_tokens(i) for i in stop_ids(tokenizer)}
    assert {"<|return|>", "<|call|>"} <= ids and "<|end|>" not in ids
    phi = make_char_tokenizer()
    phi.add_special_tokens({"additional_special_tokens": ["<|end|>"]})  # Phi-3's <|end|> does end its turn
    assert not harmony.is_harmony(phi) and phi.convert_tokens_to_ids("<|end|>") in stop_ids(phi)


def memorised(tokenizer, pairs: list[tuple[str, str]], steps: int = 400):
    """A tiny Llama trained until greedy decoding continues each prompt with its answer (the answers' tokens only)."""
    import torch

    from conftest import tiny_llama

    torch.manual_seed(0)
    model = tiny_llama(vocab_size=len(tokenizer))
    model.config.max_position_embeddings = 4096
    model = type(model)(model.config)  # rebuilt for the longer prompts
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = []
    for prompt, answer in pairs:
        p, a = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in (prompt, answer))
        rows.append((torch.tensor([p + a]), torch.tensor([[-100] * len(p) + a])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels in rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 24 and loss.item() < 0.01:
            break
    return model.eval()


def loaded_model(tokenizer, pairs) -> Loaded:
    config = parse_config("model: {name_or_path: x}\ndata: {train: chat.jsonl}\ntraining: {epochs: 1}\n", check_files=False)
    return Loaded(config, memorised(tokenizer, pairs), tokenizer, "cpu")


ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALLED = ASK + [{"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
    "name": "get_weather", "arguments": {"city": "Paris"}}}]}, {"role": "tool", "content": '{"temp_c": 18}', "tool_call_id": "call_1"}]


@pytest.fixture(scope="module")
def gpt_oss():
    tokenizer = harmony_tokenizer()
    return loaded_model(tokenizer, [(render_prompt(tokenizer, ASK, tokenizer.chat_template, [WEATHER]), CALL),
                                    (render_prompt(tokenizer, CALLED, tokenizer.chat_template, [WEATHER]), FINAL)])


@pytest.mark.integration  # trains a tiny model to answer (seconds)
def test_generate_reads_the_channels_and_the_calls(gpt_oss):
    call, final = generate(gpt_oss, [ASK, CALLED], max_new_tokens=200, tools=[[WEATHER], [WEATHER]])
    assert (call.text, call.reasoning) == ('[{"name": "get_weather", "arguments": {"city": "Paris"}}]', "Need it.")
    from trainer.tools import parse_tool_calls

    assert parse_tool_calls(call.text) == [{"name": "get_weather", "arguments": {"city": "Paris"}}]  # what generate --tools prints
    assert (final.text, final.reasoning) == ("It is 18 C.", "Tool said 18.")  # went on after the analysis message's <|end|>
    assert final.generated_tokens == len(gpt_oss.tokenizer(FINAL, add_special_tokens=False)["input_ids"])


def ask(engine, messages, **body):
    from trainer.serve.app import create_app

    app = create_app(engine)

    async def post():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            return await http.post("/v1/chat/completions", json={"model": "run", "messages": messages, "max_tokens": 200,
                                                                 "temperature": 0, **body})

    return asyncio.run(post())


@pytest.mark.integration  # trains a tiny model to answer (seconds)
def test_the_server_answers_with_reasoning_content_and_tool_calls(gpt_oss):
    from trainer.serve.engines import TransformersEngine

    engine = TransformersEngine(gpt_oss, "run")
    reply = ask(engine, CALLED, tools=[WEATHER])
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "It is 18 C.", "reasoning_content": "Tool said 18."}
    assert choice["finish_reason"] == "stop"
    choice = ask(engine, ASK, tools=[WEATHER]).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["reasoning_content"] == "Need it."
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'} and call["id"].startswith("call_")
    streamed = ask(engine, CALLED, stream=True, tools=[WEATHER])
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in streamed.text.splitlines()
              if line.startswith("data: {") and '"choices"' in line]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Tool said 18."
    assert "".join(d.get("content", "") for d in deltas) == "It is 18 C."


@pytest.mark.integration  # trains a tiny model to answer (seconds)
def test_the_server_remaps_openai_call_ids_for_mistral_and_maps_them_back():
    # Mistral v0.3 raises on ids that are not 9 characters; the server renders the request with the 9-character ids
    # training gave them (the same for a call and its result), and an id the model writes back is the client's again.
    from trainer.callids import CallIds
    from trainer.data.masks import short_call_id
    from trainer.serve.engines import TransformersEngine

    tokenizer = char_tokenizer("mistral-v0.3.jinja", MISTRAL)
    original = "call_8Zt1mQkX0aWv3LpR"
    sent = [dict(m, tool_calls=[dict(m["tool_calls"][0], id=original)]) if m.get("tool_calls") else
            dict(m, tool_call_id=original) if m["role"] == "tool" else m for m in CALLED]
    with pytest.raises(Exception, match="Tool call IDs should be alphanumeric strings with length 9"):
        render_prompt(tokenizer, sent, tokenizer.chat_template, [WEATHER])
    ids = CallIds.of(sent)
    short = short_call_id(original)
    assert ids.short == {original: short}
    prompt = render_prompt(tokenizer, ids.apply(sent), tokenizer.chat_template, [WEATHER])
    assert prompt.count(short) == 2 and original not in prompt  # the call and its result
    answer = f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {{"city": "Lyon"}}, "id": "{short}"}}]</s>'
    engine = TransformersEngine(loaded_model(tokenizer, [(prompt, answer)]), "run")
    reply = ask(engine, sent, tools=[WEATHER])
    assert reply.status_code == 200, reply.text
    # (the server's engine drops special tokens from the text, [TOOL_CALLS] among them)
    assert reply.json()["choices"][0]["message"]["content"].strip() == (
        f'[{{"name": "get_weather", "arguments": {{"city": "Lyon"}}, "id": "{original}"}}]')
    # a refusal that is not about ids is the template's own, as before
    reply = ask(engine, [{"role": "assistant", "content": "Hi"}, {"role": "assistant", "content": "Hi"}])
    assert reply.status_code == 400 and "roles must alternate" in reply.json()["error"]["message"].lower()


@pytest.mark.integration
@pytest.mark.llamacpp
@pytest.mark.slow
def test_gguf_export_embeds_the_named_templates(smollm2_tokenizer, tmp_path):
    # A model with named templates (Hermes 3, Command-R) trained with data.chat_template: tokenizer used each as
    # apply_chat_template picks it: the GGUF carries them all, as llama.cpp's converter writes them and llama.cpp reads them.
    from llama_cpp import Llama

    from conftest import tiny_llama
    from trainer.data.templates import CHATML, HERMES
    from trainer.export.gguf import export_gguf

    run = tmp_path / "run"
    import copy

    tokenizer = copy.deepcopy(smollm2_tokenizer)  # the session's fixture stays as it is
    tokenizer.chat_template = {"default": CHATML, "tool_use": HERMES}
    model = tiny_llama(vocab_size=len(tokenizer))
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "config.yaml").write_text(f"model: {{name_or_path: {run / 'model'}}}\ndata: {{train: chat.jsonl}}\ntraining: {{max_steps: 1}}\n")
    exported = export_gguf(run, "f16", say=lambda text: None)
    assert exported.chat_template == CHATML
    metadata = Llama(model_path=str(exported.gguf), n_ctx=64, verbose=False, vocab_only=True).metadata
    assert metadata["tokenizer.chat_template"] == CHATML and metadata["tokenizer.chat_template.tool_use"] == HERMES


@pytest.mark.integration  # trains a tiny model to answer (seconds)
def test_trainer_generate_prints_the_answer_its_reasoning_and_calls(gpt_oss, tmp_path, cli):
    run = tmp_path / "run"
    gpt_oss.model.save_pretrained(run / "model")
    gpt_oss.tokenizer.save_pretrained(run / "model")
    (run / "config.yaml").write_text(f"model: {{name_or_path: {run / 'model'}, dtype: float32}}\ndata: {{train: chat.jsonl}}\n"
                                     "training: {epochs: 1}\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": m, "tools": [WEATHER]}) + "\n" for m in (ASK, CALLED)))
    result = cli("generate", "--run", str(run), "--input", str(prompts), "--max-new-tokens", "200")
    assert result.returncode == 0, result.stderr
    call, final = (json.loads(line) for line in result.stdout.splitlines())
    assert call["reasoning"] == "Need it." and call["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert (final["answer"], final["reasoning"], final["tool_calls"]) == ("It is 18 C.", "Tool said 18.", [])
