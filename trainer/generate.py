"""Using a result: load a run directory's model and answer prompts, in batches or as a streaming chat."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import Config, load_config
from trainer.errors import UserError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

# A message as a chat template takes it: "role" and "content", and where present "tool_calls", "tool_call_id" and
# "name". Messages come from users' JSON lines and go to the tokenizer as they are, so the values are JSON's.
ChatMessage = dict[str, Any]
# A tool the model may call, as OpenAI's API describes one: {"type": "function", "function": {"name", "parameters", ...}}.
ToolSpec = dict[str, Any]


@dataclass
class Loaded:
    config: Config
    model: nn.Module  # a transformers causal LM, or peft's PeftModel around one
    tokenizer: PreTrainedTokenizerBase  # its transformers tokenizer
    device: str

    @property
    def template(self) -> str | None:
        """The chat template the model was trained with (data.chat_template), for prompts without tools."""
        return self.template_for(None)

    def template_for(self, tools: Sequence[ToolSpec] | None) -> str | None:
        """The template a prompt with these tools is rendered with: as in training, the tokenizer's tool_use template when
        it has one and there are tools."""
        from trainer.data.templates import resolve_template

        if self.config.data.format == "text":
            return None  # trained on plain text: prompts are plain text too
        return resolve_template(self.config.data.chat_template, self.tokenizer).for_tools(tools).jinja

    @property
    def variables(self) -> dict[str, Any]:
        """The template's variables the run trained with (data.template_kwargs: gpt-oss's reasoning_effort, ...). The
        template's clock is not pinned here: a prompt answered today shows today's date."""
        return dict(self.config.data.template_kwargs)


def load_run(run_dir: str | Path, device: str = "auto", dtype: str | None = None) -> Loaded:
    """The fine-tuned model of a run directory (either backend writes the same layout).
    `dtype` overrides the run's model.dtype (an export wants float32 weights whatever the run computed in)."""
    run_dir = finished_run(run_dir)
    model_dir = run_dir / "model"
    config = load_config(str(run_dir / "config.yaml"), check_files=False)
    if dtype is not None:
        config = config.replace(model=config.model.replace(dtype=dtype))
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        loaded = load_base(config, device, tokenizer_from=str(model_dir))
        loaded.model = PeftModel.from_pretrained(loaded.model, str(model_dir)).eval()
        return loaded
    full = config.replace(model=config.model.replace(name_or_path=str(model_dir)))
    return load_base(full, device)


def finished_run(run_dir: str | Path) -> Path:
    """`run_dir` as a path, once it is known to hold a finished run (config.yaml and model/)."""
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "model").is_dir():
        raise UserError(f"{run_dir} is not a finished run directory (it needs config.yaml and model/). Train first: trainer --config x.yaml")
    return run_dir


def load_base(config: Config, device: str = "auto", tokenizer_from: str | None = None) -> Loaded:
    """The model config.model names, unquantised, in eval mode (the untuned baseline, or the base under an adapter)."""
    from trainer.hardware import Hardware
    from trainer.models import load_model, load_tokenizer

    device = Hardware.detect().device(device if device != "auto" else config.backend.peft.device)
    m = config.model
    tokenizer = load_tokenizer(tokenizer_from or m.name_or_path, m.revision, m.trust_remote_code)
    model = load_model(config.replace(training=config.training.replace(method="lora")), device)
    return Loaded(config, model.eval(), tokenizer, device)


@dataclass(frozen=True)
class Answer:
    text: str  # what the model answers; a gpt-oss answer that calls tools: its calls, as a JSON list (what parse_tool_calls reads)
    prompt_tokens: int
    generated_tokens: int
    seconds: float  # this answer's share of its batch's wall time
    reasoning: str | None = None  # a gpt-oss answer's analysis channel (others write reasoning in the text, as trained)


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage], template: str | None = None, tools: Sequence[ToolSpec] | None = None,
                  variables: dict[str, Any] | None = None) -> str:
    """The prompt for an answer to `messages`; `variables`: the template's own (data.template_kwargs)."""
    if template is None and not getattr(tokenizer, "chat_template", None):
        return "\n".join(m["content"] or "" for m in messages)
    extra = {"tools": list(tools)} if tools else {}
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True,
                                         **{**(variables or {}), **extra})


def generate(loaded: Loaded, conversations: Sequence[Sequence[ChatMessage]], max_new_tokens: int = 256, batch_size: int = 8,
             tools: Sequence[Sequence[ToolSpec] | None] | None = None) -> list[Answer]:
    """Greedy answers to each conversation (its last turn a user turn), in batches with left padding.
    `tools`: per conversation, the tools the template shows the model (None for none)."""
    import torch

    tok = loaded.tokenizer
    tok.padding_side = "left"
    eos = stop_ids(tok)
    order = sorted(range(len(conversations)), key=lambda i: -len(str(conversations[i])))  # similar lengths together
    results: dict[int, Answer] = {}
    for begin in range(0, len(order), batch_size):
        chunk = order[begin : begin + batch_size]
        prompts = [render_prompt(tok, conversations[i], loaded.template_for(tools[i] if tools else None), tools[i] if tools else None,
                                 loaded.variables) for i in chunk]
        encoded = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)
        started = time.perf_counter()
        with torch.no_grad():
            output = loaded.model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                           pad_token_id=tok.pad_token_id)
        seconds = (time.perf_counter() - started) / len(chunk)
        width = encoded["input_ids"].shape[1]
        for row, i in enumerate(chunk):
            new = output[row, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in eos), len(new))
            text, reasoning = _decode(tok, new[: cut + 1])
            results[i] = Answer(text, int(encoded["attention_mask"][row].sum()), min(cut + 1, len(new)), seconds, reasoning)
    return [results[i] for i in range(len(conversations))]


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> tuple[str, str | None]:
    """The answer's text and, for gpt-oss, its reasoning; special tokens that mark tool calls (<tool_call>, [TOOL_CALLS]) are
    kept so the calls can be read. A gpt-oss answer's channels are read by trainer.harmony: its text is the final channel,
    or, when it calls tools, the calls as a JSON list."""
    from trainer import harmony

    if harmony.is_harmony(tokenizer):
        answer = harmony.read(tokenizer.decode(ids, skip_special_tokens=False))
        calls = [c for c in answer.calls if c is not None]
        text = json.dumps(calls, ensure_ascii=False) if calls and len(calls) == len(answer.calls) else answer.content
        return text, answer.reasoning or None
    stops = set(stop_ids(tokenizer))  # once, not per token
    return _plain_decode(tokenizer, [i for i in ids if i not in stops]), None


def _plain_decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    keep = {"<tool_call>", "</tool_call>", "[TOOL_CALLS]"}
    tokens = tokenizer.convert_ids_to_tokens(ids)
    special = set(getattr(tokenizer, "all_special_tokens", []) or []) - keep
    kept = [i for i, t in zip(ids, tokens) if t not in special]
    return tokenizer.decode(kept, skip_special_tokens=False).strip()


def stop_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids that end an answer: end of sequence, and the end-of-turn tokens the tokenizer knows. gpt-oss's <|end|>
    ends a message, not the answer: after its analysis message the model goes on to the final channel."""
    from trainer import harmony
    from trainer.data.templates import END_OF_TURN

    ids = {tokenizer.eos_token_id}
    for token in END_OF_TURN if not harmony.is_harmony(tokenizer) else [t for t in END_OF_TURN if t != "<|end|>"]:
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def stop_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """stop_ids as the texts of those tokens (for engines that stop on strings: Ollama, llama.cpp, an API's `stop`)."""
    return [tokenizer.convert_ids_to_tokens(i) for i in stop_ids(tokenizer)]


def read_prompts(path: str) -> list[list[ChatMessage]]:
    """A .jsonl of {"messages": [...]} (the final assistant turn, if any, is dropped) or {"prompt": "..."}.
    A line's "tools" is kept on the conversation as `read_prompts.tools[k]` via read_prompts_with_tools."""
    return read_prompts_with_tools(path)[0]


def read_prompts_with_tools(path: str) -> tuple[list[list[ChatMessage]], list[list[ToolSpec] | None]]:
    """read_prompts, and each line's "tools" (None where it has none)."""
    conversations: list[list[ChatMessage]] = []
    tools: list[list[ToolSpec] | None] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: invalid JSON ({exc.msg}).") from None
            tools.append(row.get("tools") or None if isinstance(row, dict) else None)
            if isinstance(row, dict) and isinstance(row.get("messages"), list):
                messages = list(row["messages"])
                while messages and messages[-1].get("role") == "assistant":
                    messages.pop()
                conversations.append(messages)
            elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
                conversations.append([{"role": "user", "content": row["prompt"]}])
            else:
                raise UserError(f"{path}:{number}: each line needs \"messages\" (a list) or \"prompt\" (text).")
    return conversations, tools


def chat(loaded: Loaded, system: str | None, max_new_tokens: int, tools: Sequence[ToolSpec] | None = None) -> None:
    """An interactive chat on the terminal, streaming each answer as it is generated. With tools, the model sees them,
    and a call it makes is shown parsed; type the tool's result as the next message (it is sent as the tool's answer)."""
    history: list[ChatMessage] = [{"role": "system", "content": system}] if system else []
    print("Chatting with the fine-tuned model. Empty line or Ctrl-D to quit, /reset to forget the conversation.", file=sys.stderr)
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        if text == "/reset":
            history = history[:1] if system else []
            continue
        open_calls = [m for m in history[-1:] if m.get("tool_calls")]
        if open_calls:  # the model called a tool: this line is the tool's result
            for call in open_calls[0]["tool_calls"]:
                history.append({"role": "tool", "content": text, "tool_call_id": call["id"], "name": call["function"]["name"]})
        else:
            history.append({"role": "user", "content": text})
        print("model> ", end="", flush=True)
        reply, calls = _streamed_reply(loaded, history, max_new_tokens, tools)
        print()
        if calls:
            print("  tool call(s): " + "; ".join(f"{c['name']}({json.dumps(c['arguments'], ensure_ascii=False)})" for c in calls)
                  + " -- type the result", file=sys.stderr)
            history.append({"role": "assistant", "content": "", "tool_calls": [
                {"id": f"call{k:05d}", "type": "function", "function": c} for k, c in enumerate(calls, 1)]})
        else:
            history.append({"role": "assistant", "content": reply.strip()})


def _streamed_reply(loaded: Loaded, history: list[ChatMessage], max_new_tokens: int, tools: Sequence[ToolSpec] | None) -> tuple[str, list]:
    """The answer printed as it comes, and its tool calls. A gpt-oss answer's reasoning goes to stderr as it comes, its
    final channel to stdout, and its calls are read from its messages to functions (trainer.harmony)."""
    from trainer import harmony
    from trainer.tools import parse_tool_calls

    if not harmony.is_harmony(loaded.tokenizer):
        reply = ""
        for piece in stream_answer(loaded, history, max_new_tokens, tools):
            reply += piece
            print(piece, end="", flush=True)
        return reply, (parse_tool_calls(reply) or [] if tools else [])
    reader = harmony.Reader()
    thinking = False
    for piece in stream_answer(loaded, history, max_new_tokens, tools, special_tokens=True):
        reasoning, content = reader.feed(piece)
        if reasoning:
            print(("(thinking) " if not thinking else "") + reasoning, end="", file=sys.stderr, flush=True)
            thinking = True
        if content:
            print(content, end="", flush=True)
    return reader.answer.content, [c for c in reader.answer.calls if c is not None]


def stream_answer(loaded: Loaded, messages: Sequence[ChatMessage], max_new_tokens: int, tools: Sequence[ToolSpec] | None = None,
                  special_tokens: bool = False) -> Iterator[str]:
    """The greedy answer to a conversation (its last turn a user turn), yielded piece by piece as it is generated
    (`special_tokens`: with them, for gpt-oss's channels)."""
    import threading

    from transformers import TextIteratorStreamer

    tok = loaded.tokenizer
    encoded = tok(render_prompt(tok, messages, loaded.template_for(tools), tools, loaded.variables), return_tensors="pt", add_special_tokens=False).to(loaded.device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=not special_tokens)
    thread = threading.Thread(target=loaded.model.generate, kwargs=dict(**encoded, streamer=streamer, max_new_tokens=max_new_tokens,
                                                                       do_sample=False, eos_token_id=stop_ids(tok),
                                                                       pad_token_id=tok.pad_token_id))
    thread.start()
    yield from streamer
    thread.join()
