"""Which runs `trainer serve` serves, under which names, and what each engine process loads.

`--run` may be given several times, and may name a folder of runs (every sub-folder that is a finished run). A
LoRA run is served as its adapter over the base model's GGUF, which every LoRA run on the same base (with the same
chat template and end-of-turn tokens) shares: one llama-server, one copy of the base in memory. A run llama.cpp's
LoRA format cannot express (trainer.export.lora.lora_problem) is served merged, from its own GGUF.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from trainer.errors import UserError
from trainer.serve.llamaserver import EngineSpec, Model

Say = Callable[[str], None]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def expand_runs(paths: Sequence[Path]) -> list[Path]:
    """The run directories: each path a finished run, or a folder whose sub-folders include finished runs."""
    from trainer.generate import finished_run

    runs: list[Path] = []
    for path in paths:
        if not (path / "config.yaml").is_file() and path.is_dir():
            inside = sorted(p for p in path.iterdir() if (p / "config.yaml").is_file() and (p / "model").is_dir())
            if not inside:
                raise UserError(f"--run {path}: neither a finished run directory (config.yaml and model/) nor a folder of them. "
                                "Train first: trainer --config x.yaml")
            runs += inside
        else:
            runs.append(finished_run(path))
    return runs


def run_names(runs: Sequence[Path]) -> list[str]:
    """Each run's model name (trainer.export.gguf.run_name); two runs of one name are a message, not a silent choice."""
    from trainer.export.gguf import run_name

    names = [run_name(run) for run in runs]
    for name in set(names):
        same = [str(run) for run, n in zip(runs, names) if n == name]
        if len(same) > 1:
            raise UserError(f"{' and '.join(same)} are both named {name!r} (output.dir's last folder, or push_to_hub's repo): "
                            "clients choose a model by name; serve them from separate `trainer serve` commands, or rename one "
                            "(output.dir in its config.yaml)")
    return names


def template_file(run: Path) -> Path | None:
    """The chat template the run trained with, written beside its exports (None: a text-format run, no template)."""
    from trainer.serve.engines import run_template

    template = run_template(run)
    if template is None:
        return None
    path = run / "export" / "chat_template.jinja"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != template:
        path.write_text(template, encoding="utf-8")
    return path


def merged_gguf(run: Path, quant: str, say: Say) -> Path:
    """The run's GGUF (adapter merged), exported now if missing or older than the model."""
    from trainer.export.gguf import export_gguf, run_name

    gguf = run / "export" / f"{run_name(run)}-{quant}.gguf"
    if gguf.is_file() and gguf.stat().st_mtime >= (run / "model").stat().st_mtime:
        return gguf
    say(f"{run} has no {quant} GGUF yet: converting it first (once; minutes for a large model).")
    return export_gguf(run, quant, say=say).gguf


def plan_engines(runs: Sequence[Path], quant: str, merged: bool = False, say: Say = _say) -> list[EngineSpec]:
    """The llama-servers to start for these runs: LoRA runs grouped by base GGUF, merged runs alone."""
    from trainer.export.lora import base_gguf, lora_gguf, lora_problem, lora_rank

    names = run_names(runs)
    engines: dict[Path, EngineSpec] = {}
    for run, name in zip(runs, names):
        problem = lora_problem(run)
        if problem is None and not merged:
            base = base_gguf(run, quant, say)
            spec = engines.setdefault(base, EngineSpec(base, template=_base_template(run, base)))
            spec.models.append(Model(name, lora=len(spec.adapters), rank=lora_rank(run)))
            spec.adapters.append(lora_gguf(run, "f32" if quant == "f32" else "f16", say=say))  # f16 holds an adapter's small values well
        else:
            if problem is not None and not problem.startswith("it is a full fine-tune"):
                say(f"{name}: served merged, not as an adapter: {problem}.")
            gguf = merged_gguf(run, quant, say)
            engines[gguf] = EngineSpec(gguf, [Model(name)], template=template_file(run))
    return list(engines.values())


def _base_template(run: Path, base: Path) -> Path | None:
    """The template file of a shared base (the runs grouped on it have the same template: it is part of its key)."""
    source = template_file(run)
    if source is None:
        return None
    path = base.with_suffix(".jinja")
    if not path.is_file():
        path.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    return path
