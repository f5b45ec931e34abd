"""An Ollama Modelfile for an exported GGUF: FROM, a TEMPLATE in Ollama's Go-template syntax that lays out
a conversation exactly as the run's Jinja chat template does, PARAMETER stop for every end-of-turn token,
and SYSTEM when every training conversation had the same system prompt.

Jinja cannot be translated to Go templates in general. What can be done exactly: most chat templates
write each message as fixed text, the message's content, and fixed text, where the fixed text depends
only on the roles of the message before and this one (and the very start may add a default system
prompt). `transitions()` measures that text by rendering the Jinja template around marker strings, and
`check_transitions()` proves the measurement reproduces the Jinja template on several conversations
before a Go template is written from it. A template that fails the proof (Mistral's, which moves the
system prompt into the last user turn) gets a clear message instead of a Modelfile that would prompt
the model differently from how it was trained.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.config import Config
from trainer.errors import UserError
from trainer.export.llamacpp import Say
from trainer.generate import ChatMessage

Render = Callable[[list[ChatMessage]], str]  # the run's Jinja chat template, with the generation prompt

ROLES = ("system", "user", "assistant")
START, END = "", "end"  # the role before the first message, and after the last (the generation prompt)


def _marker(i: int) -> str:
    return f"XQZ{i}QZX"  # plain letters: no template trims, escapes or splits them


@dataclass(frozen=True)
class Transitions:
    """The fixed text between messages: text[(previous role, role)] (START first, END for the generation prompt)."""

    text: dict[tuple[str, str], str]

    def render(self, messages: list[ChatMessage]) -> str:
        """What the Go template writes for `messages` (the last a user turn), in Python, for the proof."""
        out, previous = [], START
        for message in messages:
            out += [self.text[(previous, message["role"])], message["content"]]
            previous = message["role"]
        return "".join(out + [self.text[(previous, END)]])


# Conversations the template is measured on, and checked against: with and without a system prompt, 1-3 turns.
_MEASURE = [
    ["system", "user"],
    ["user"],
    ["system", "user", "assistant", "user"],
    ["user", "assistant", "user"],
]
_CHECK = [
    ["system", "user", "assistant", "user", "assistant", "user"],
    ["user", "assistant", "user", "assistant", "user"],
    ["system", "user"],
    ["user"],
]


def _conversation(roles: list[str], offset: int = 0) -> list[ChatMessage]:
    return [{"role": role, "content": _marker(offset + i)} for i, role in enumerate(roles)]


def transitions(render: Render) -> Transitions:
    """Measure the fixed text around messages. `render(messages)` is the Jinja template with the generation prompt."""
    text: dict[tuple[str, str], str] = {}
    for roles in _MEASURE:
        messages = _conversation(roles)
        rendered = _render_or_none(render, messages)
        if rendered is None:
            continue  # a layout the template refuses (Gemma's raises on a system message): Ollama will not be sent it
        previous, position = START, 0
        for i, role in enumerate(roles + [END]):
            if role == END:
                found, length = len(rendered), 0
            else:
                found, length = rendered.find(_marker(i), position), len(_marker(i))
            if found < 0:
                raise UserError(f"the chat template does not write the {role} message's content as it is, so trainer "
                                "cannot write an Ollama TEMPLATE for it; write the Modelfile's TEMPLATE by hand.")
            key = (previous, role)
            piece = rendered[position:found]
            if text.setdefault(key, piece) != piece:
                raise UserError(_not_per_turn(f"the text between a {previous or 'start'} and a {role} message changes "
                                              "with the rest of the conversation"))
            previous, position = role, found + length
    return Transitions(text)


def check_transitions(found: Transitions, render: Render) -> None:
    """Refuse unless the measured text reproduces the Jinja template exactly on conversations it was not measured on."""
    for n, roles in enumerate(_CHECK):
        messages = _conversation(roles, offset=10 * n + 100)
        expected = _render_or_none(render, messages)
        if expected is None:
            continue
        try:
            ours = found.render(messages)
        except KeyError as exc:
            raise UserError(_not_per_turn(f"no measured text for {exc.args[0]}")) from None
        if ours != expected:
            raise UserError(_not_per_turn("a conversation of roles " + ", ".join(roles) + " is laid out differently"))


def _render_or_none(render: Render, messages: list[ChatMessage]) -> str | None:
    """The Jinja render, or None where the template raises on these roles; it must accept a plain user turn."""
    try:
        return render(messages)
    except Exception as exc:  # jinja2's TemplateError from raise_exception(), and whatever else a template raises
        if any(m["role"] == "system" for m in messages):
            return None
        raise UserError(f"the chat template raised on a plain user/assistant conversation ({exc}), so trainer cannot "
                        "write an Ollama TEMPLATE for it; write the Modelfile's TEMPLATE by hand.") from None


def _not_per_turn(why: str) -> str:
    return (f"the run's chat template cannot be written as an Ollama TEMPLATE exactly ({why}). The GGUF itself "
            "carries the chat template; use it with llama.cpp, or write the Modelfile's TEMPLATE by hand.")


def _go_literal(text: str) -> str:
    """Text for a Go template: literal, except that `{{` would open an action."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(found: Transitions) -> str:
    """A Go template over Ollama's .Messages that writes what `found.render` writes. No `{{-` trimming: the
    fixed text is written exactly as measured, newlines included."""
    branches = []
    for (previous, role), text in sorted(found.text.items()):
        if role == END:
            continue
        branches.append(f'(and (eq $prev "{previous}") (eq .Role "{role}"))}}}}{_go_literal(text)}')
    body = "{{ if " + "{{ else if ".join(branches) + "{{ end }}" if branches else ""
    endings = [f'(eq $prev "{previous}")}}}}{_go_literal(text)}' for (previous, role), text in sorted(found.text.items()) if role == END]
    tail = "{{ if " + "{{ else if ".join(endings) + "{{ end }}" if endings else ""
    return '{{ $prev := "" }}{{ range .Messages }}' + body + '{{ .Content }}{{ $prev = .Role }}{{ end }}' + tail


def modelfile(name: str, gguf_name: str, template: str, stop: list[str], system: str | None) -> str:
    lines = [f"# Written by trainer. Create the model with: ollama create {name} -f Modelfile", f"FROM ./{gguf_name}",
             f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stop]
    lines.append("PARAMETER temperature 0")  # trainer's own answers and evaluation are greedy
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def run_system_prompt(run_dir: Path, config: Config, say: Say) -> str | None:
    """The system prompt every training conversation started with, which Ollama should then add: as the run recorded
    it in summary.json. A run trained before trainer recorded it is read from its training data again, a relative
    path taken from the folder training ran in (where output.dir says) or else from here; when the data cannot be
    read, a warning says so rather than the SYSTEM line disappearing unnoticed."""
    from trainer.data.pipeline import load_examples
    from trainer.patterns import is_local_data
    from trainer.rundir import SUMMARY_FILE, common_system_prompt

    try:  # the file, not RunSummary.read: a key that is absent (an older run) differs from null (no common prompt)
        recorded = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    if "common_system_prompt" in recorded:
        return recorded["common_system_prompt"]
    ref = config.data.train
    tried = [ref]
    if is_local_data(ref) and not os.path.isabs(os.path.expanduser(ref)):
        started = training_folder(run_dir, config.output.dir)
        tried = list(dict.fromkeys(([str(started / ref)] if started else []) + [os.path.abspath(ref)]))
    for path in tried:
        try:
            return common_system_prompt(load_examples(path, config)[0])
        except (OSError, UserError):
            continue
    say(f"warning: could not read the run's training data ({ref}, data.train in {run_dir / 'config.yaml'}; tried "
        f"{', '.join(tried)}), so trainer cannot tell whether every training conversation had the same system prompt: "
        'the Modelfile has no SYSTEM line. If the data had one, add it to the Modelfile as SYSTEM """...""", or export '
        "again from the folder the run was trained in.")
    return None


def training_folder(run_dir: Path, output_dir: str) -> Path | None:
    """The folder training ran in, for a run whose config.yaml has a relative output.dir that `run_dir` still ends
    with (runs/quickstart in /home/me/project/runs/quickstart: /home/me/project); else None."""
    relative = Path(os.path.normpath(output_dir))
    here = Path(os.path.abspath(run_dir))
    if relative.is_absolute() or output_dir.startswith("~") or ".." in relative.parts:
        return None
    parts = relative.parts  # () for "."
    if here.parts[len(here.parts) - len(parts):] != parts:
        return None
    return Path(*here.parts[:len(here.parts) - len(parts)])


def write_ollama(run_dir: str | Path, quant: str = "q8_0", say: Say | None = None) -> tuple[Path, str]:
    """The GGUF plus <run>/export/Modelfile; returns the Modelfile's path and the `ollama create` command."""
    from trainer.config import load_config
    from trainer.export.gguf import _say, export_gguf, run_name
    from trainer.generate import render_prompt
    from trainer.models import load_tokenizer

    say = say or _say
    run_dir = Path(run_dir).expanduser()
    exported = export_gguf(run_dir, quant, say=say)
    if not exported.chat_template:
        raise UserError("this run was trained on plain text (data.format: text), so there is no chat layout to write "
                        "as an Ollama TEMPLATE; use the GGUF with a completion API (llama.cpp) instead.")
    tokenizer = load_tokenizer(str(run_dir / "model"))

    def render(messages: list[ChatMessage]) -> str:
        return render_prompt(tokenizer, messages, exported.chat_template)

    found = transitions(render)
    check_transitions(found, render)
    config = load_config(str(run_dir / "config.yaml"), check_files=False)
    name = run_name(run_dir)
    text = modelfile(name, exported.gguf.name, go_template(found), list(exported.stop), run_system_prompt(run_dir, config, say))
    path = exported.gguf.parent / "Modelfile"
    path.write_text(text, encoding="utf-8")
    return path, f"cd {exported.gguf.parent} && ollama create {name} -f Modelfile"
