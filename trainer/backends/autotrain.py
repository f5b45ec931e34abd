"""The AutoTrain backend: the same YAML, trained by Hugging Face AutoTrain Advanced in its own environment.

AutoTrain 0.8.36 pins transformers 4.48, peft 0.14, trl 0.13 and more, so it
cannot live beside trainer's own dependencies: it gets a virtual environment of
its own (`trainer backends setup autotrain`) and runs as a subprocess. The
hand-over, in order:

1. translate the config (trainer/config/autotrain.py: one table, both ways),
   refusing what AutoTrain cannot do unless backend.autotrain.allow_differences;
2. write the data trainer's pipeline accepted in AutoTrain's local layout (preference pairs: autotrain_pairs.py);
3. materialise a local or .gguf model as a folder transformers 4.48 can read;
4. run `autotrain --config`, streaming its log, and fail on the failures it
   only logs;
5. collect the adapter into trainer's run-directory layout, measure the
   validation loss the same way the peft backend does, and write the card.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainer.backends.autotrain_env import VERSION, autotrain_python, bin_path, child_env, environment_problem, tail_of
from trainer.backends.autotrain_pairs import logged_metrics, write_pairs
from trainer.config import Config
from trainer.config.autotrain import data_columns, export, project_name
from trainer.config.autotrain_differences import differences
from trainer.errors import RunStopped, UserError
from trainer.rundir import MetricsLog, RunSummary, guard_run_dir, merge_saved_adapter, plot_losses, write_model_card

LOG_PREFIX = "[autotrain] "
FAILURE_MARKER = "has failed due to an exception"  # AutoTrain's @monitor logs this and the process still exits 0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the hand-over -------------------------------------------------------------------------------------------------

def write_data(config: Config, tokenizer: Any, data: Any, folder: Path) -> None:
    """train.jsonl (and validation.jsonl) in AutoTrain's local layout, with the examples trainer's pipeline accepted,
    in the column data_columns() names: the conversations, or the text trainer's template renders from them.
    Preference pairs go as prompt/chosen/rejected text (autotrain_pairs.py)."""
    from trainer.data.templates import resolve_template
    from trainer.data.tokenize import Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    if config.training.objective != "sft":
        assert data.encoder is not None  # prepare_data keeps what tokenized the pairs: the hand-over renders them alike
        for note in write_pairs(data.encoder, (list(data.examples(0)), list(data.examples(1))), config.training.objective, folder):
            _say(f"warning: {note}")
        return
    column, _ = data_columns(config)
    encoder = None
    if column == "text" and config.data.format != "text":
        encoder = Tokenizer(tokenizer, resolve_template(config.data.chat_template, tokenizer), "all", config.data.max_seq_length,
                            fold_system=config.data.system_prompt == "fold")
    for name, examples in (("train", data.examples(0)), ("validation", data.examples(1))):
        rows = []
        for example in examples:
            if example.text is not None:
                rows.append({"text": example.text})
                continue
            if encoder is not None:  # tool calls, results and reasoning rendered as trainer renders them
                rows.append({"text": encoder.render(encoder.template_messages(example.messages), False, example.tools)})
                continue
            if example.tools or any(m.tool_calls or m.reasoning or m.role == "tool" for m in example.messages):
                raise UserError(f"{example.file}:{example.line}: AutoTrain applies the tokenizer's template without tools, tool calls "
                                "or reasoning; set data.chat_template to a named template (e.g. hermes) so trainer renders the "
                                "conversations for it, or use backend.name: peft.")
            rows.append({"messages": [{"role": m.role, "content": m.content} for m in example.messages]})
        if rows:
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def materialise_model(config: Config, tokenizer: Any, folder: Path) -> str:
    """What AutoTrain's `base_model` should be: a Hub id as it is; a local folder or .gguf file as a folder that
    transformers 4.48 reads exactly as trainer does (weights linked, config and tokenizer files rewritten)."""
    from trainer.models import dequantised_gguf, is_gguf

    name = config.model.name_or_path
    path = Path(name).expanduser()
    if is_gguf(name):
        source = dequantised_gguf(path)
    elif path.is_dir():
        source = path
    else:
        return name  # a Hub id: AutoTrain downloads it itself
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for item in source.iterdir():
        if item.suffix == ".safetensors" or item.name in ("model.safetensors.index.json", "generation_config.json") or item.suffix == ".bin":
            (folder / item.name).symlink_to(item.resolve())
    model_config = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(legacy_model_config(model_config), indent=2))
    save_legacy_tokenizer(tokenizer, folder)
    return str(folder.resolve())


def legacy_model_config(data: dict) -> dict:
    """A transformers-5 config.json as transformers 4.48 expects it: 4.48 reads rope_theta and rope_scaling at the
    top level and ignores rope_parameters, so without this it would silently use the default rope_theta (a
    different model)."""
    data = dict(data)
    rope = data.get("rope_parameters")
    if isinstance(rope, dict) and "layer_types" not in rope:
        data.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            data.setdefault("rope_scaling", {**scaling, "type": scaling.get("rope_type")})
        else:
            data.setdefault("rope_scaling", None)
    if "dtype" in data:
        data.setdefault("torch_dtype", data["dtype"])
    return data


def save_legacy_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Save the tokenizer so that transformers 4.48 loads it: transformers 5 names a `TokenizersBackend` class that
    4.48 does not have, and keeps the chat template in a separate file 4.48 does not read."""
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("backend", "is_local", "local_files_only"):
        data.pop(key, None)
    template = tokenizer.chat_template
    if isinstance(template, str) and template:
        data["chat_template"] = template
    extra = data.pop("extra_special_tokens", None)
    if isinstance(extra, list) and extra:
        data.setdefault("additional_special_tokens", extra)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def mixed_precision_for(config: Config) -> str | None:
    """AutoTrain's params.mixed_precision for training.precision on this machine (auto: bf16 where native)."""
    from trainer.hardware import Hardware
    from trainer.models import mixed_precision

    value = mixed_precision(config, Hardware.detect().device("auto"))
    return None if value == "no" else value


def prepare_handover(config: Config, work: Path) -> tuple[dict, Any, Any]:
    """Write data, model and autotrain.yml into `work`; return (AutoTrain YAML data, tokenizer, prepared data)."""
    import yaml

    from trainer.data.pipeline import prepare_data
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
    data = prepare_data(config, tokenizer)
    write_data(config, tokenizer, data, work / "data")
    base = materialise_model(config, tokenizer, work / "base-model")
    document = export(config, base_model=base, data_dir="data", mixed_precision=mixed_precision_for(config))
    (work / "autotrain.yml").write_text(
        f"# Written by trainer for AutoTrain Advanced {VERSION}. Run it from this folder: autotrain --config autotrain.yml\n"
        + yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return document, tokenizer, data


# --- running it ----------------------------------------------------------------------------------------------------

class AutoTrainLog:
    """Follows AutoTrain's output: the loss lines (logged dicts), the failure it logs but does not exit with."""

    _DICT = re.compile(r"(\{'(?:loss|train_runtime|eval_loss)'.*\})\s*$")

    def __init__(self, path: Path):
        self.file = open(path, "w", encoding="utf-8")
        self.losses: list[dict] = []
        self.final: dict = {}
        self.failure: list[str] | None = None

    def feed(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()
        if self.failure is not None and len(self.failure) < 60:
            self.failure.append(line)
        if FAILURE_MARKER in line:
            self.failure = [line]
        match = self._DICT.search(line) if "on_log" in line else None  # its logger's line, not the progress bar's copy
        if match:
            try:
                logged = ast.literal_eval(match.group(1))
            except (ValueError, SyntaxError):
                return
            if "train_runtime" in logged:
                self.final = logged
            elif "loss" in logged:
                self.losses.append(logged)

    def close(self) -> None:
        self.file.close()


def run_autotrain(python: Path, work: Path, config: Config, log: AutoTrainLog) -> None:
    """`autotrain --config autotrain.yml` in `work`, as an argument list (no shell), in its own process group."""
    cmd = [str(bin_path(python, "autotrain")), "--config", "autotrain.yml"]
    child = subprocess.Popen(cmd, cwd=work, env=child_env(python, config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, bufsize=1, errors="replace", start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        assert child.stdout is not None  # stdout=PIPE
        for line in child.stdout:
            line = line.rstrip("\n")
            log.feed(line)
            if line.strip():
                print(LOG_PREFIX + line, file=sys.stderr, flush=True)
        code = child.wait()
    except KeyboardInterrupt:
        _stop_group(child)
        raise RunStopped("stopped: AutoTrain and its training processes were ended. AutoTrain cannot resume a run; "
                        "start it again with the same command.") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        log.close()
    if code != 0:
        raise UserError(f"AutoTrain exited with status {code}. The end of its log ({work / 'autotrain.log'}):\n{tail_of(chr(10).join(log.failure or []) or _last_lines(work / 'autotrain.log'))}")
    if log.failure is not None:
        raise UserError(f"AutoTrain reported a failure (and exited 0). From its log ({work / 'autotrain.log'}):\n{_failure_text(log.failure)}")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_group(child: subprocess.Popen) -> None:
    """Ctrl-C / SIGTERM: stop AutoTrain and the accelerate/python processes it started (the whole group)."""
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_lines(path: Path) -> str:
    return tail_of(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else ""


def _failure_text(lines: list[str]) -> str:
    """The exception AutoTrain logged: its last traceback line says what went wrong; keep a few lines around it."""
    text = [line for line in lines if line.strip()]
    errors = [line for line in text if re.match(r"^\w+(\.\w+)*(Error|Exception)\b", line.strip())]
    head = errors[-1].strip() if errors else text[0].strip()
    return head + "\n" + tail_of("\n".join(text), 12)


# --- bringing the result back ---------------------------------------------------------------------------------------

def collect(config: Config, run_dir: Path, work: Path, tokenizer: Any, data: Any, log: AutoTrainLog) -> RunSummary:
    """AutoTrain's project folder -> trainer's run directory (model/, merged/, metrics.jsonl, loss.png, card)."""
    adapter = config.training.method != "full"
    collect_model(config, run_dir, work, tokenizer)
    metrics, history = log_metrics(config, run_dir, log)
    final = log.final
    steps = round(final.get("train_runtime", 0) * final.get("train_steps_per_second", 0)) or (history[-1][0] if history else 0)
    eval_loss, figures = validation_loss(config, run_dir, data)
    if eval_loss is not None and figures:  # dpo, orpo: their loss has no perplexity; the rewards say more
        metrics.write(step=steps, eval_loss=eval_loss, **figures)
    elif eval_loss is not None:
        metrics.write_eval(steps, eval_loss)
    summary = summarise(config, log.final, history, steps, eval_loss, data)
    summary.write(run_dir)
    plot_losses(history, metrics, run_dir / "loss.png")
    if config.output.merge_adapter and adapter:
        merge_saved_adapter(run_dir)
    write_model_card(run_dir, config, summary)
    return summary


def collect_model(config: Config, run_dir: Path, work: Path, tokenizer: Any) -> None:
    """<run>/model from AutoTrain's project folder: the adapter (naming the real base model) or the weights."""
    project = work / project_name(config.output.dir)
    adapter = config.training.method != "full"
    marker = "adapter_config.json" if adapter else "config.json"
    if not (project / marker).is_file():
        raise UserError(f"AutoTrain finished but wrote no model ({project / marker} is missing). Its log: {work / 'autotrain.log'}")
    model_dir, tmp = run_dir / "model", run_dir / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for item in project.iterdir():
        if item.is_file() and (item.name.startswith("adapter_") or item.suffix == ".safetensors" or item.name in ("config.json", "generation_config.json")):
            shutil.copy2(item, tmp / item.name)
    if adapter:
        adapter_config = json.loads((tmp / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = config.model.name_or_path  # not the temporary materialised copy
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    for name in ("training_params.json", "README.md"):
        if (project / name).is_file():
            shutil.copy2(project / name, work / f"autotrain-{name}")


def log_metrics(config: Config, run_dir: Path, log: AutoTrainLog) -> tuple[MetricsLog, list[list]]:
    """metrics.jsonl from the losses AutoTrain logged; returns it and the (step, loss) history."""
    metrics = MetricsLog(run_dir / "metrics.jsonl", None, config.logging.report_to == "tensorboard")
    steps_per_log = max(1, int(config.logging.log_every))
    history: list[list] = []
    for i, logged in enumerate(log.losses, start=1):
        step = i * steps_per_log  # AutoTrain logs every logging_steps (= logging.log_every) steps
        history.append([step, float(logged["loss"])])
        metrics.write(step=step, epoch=logged.get("epoch"), loss=float(logged["loss"]), lr=logged.get("learning_rate"),
                      **logged_metrics(logged))
    return metrics, history


def summarise(config: Config, final: dict, history: list[list], steps: int, eval_loss: float | None, data: Any) -> RunSummary:
    """The run's summary from AutoTrain's final log line (its train_* figures) and trainer's validation loss."""
    seconds = float(final.get("train_runtime", 0.0))
    if config.training.objective == "sft":  # AutoTrain's SFT trains on every token of full packed blocks of block_size tokens
        tokens = round(final.get("train_samples_per_second", 0) * seconds) * config.data.max_seq_length
    else:  # its dpo and orpo train the answers of each pair, as trainer counts them, once an epoch
        tokens = round(sum(pair.trained for pair in data.train) * float(final.get("epoch", 0.0)))
    return RunSummary(
        backend="autotrain",
        steps=steps,
        epochs=float(final.get("epoch", 0.0)),
        final_train_loss=float(final.get("train_loss", history[-1][1] if history else 0.0)) if (final or history) else None,
        final_eval_loss=eval_loss,
        best_eval_loss=eval_loss,
        best_step=steps if eval_loss is not None else None,
        stopped_early=False,
        trained_tokens=tokens,
        train_seconds=seconds,
        trained_tokens_per_second=tokens / seconds if seconds else 0.0,
    )


def validation_loss(config: Config, run_dir: Path, data: Any) -> tuple[float | None, dict[str, float]]:
    """The validation loss of the result, computed exactly as the peft backend computes it (per trained token, or per
    pair for dpo and orpo with their reward accuracy and margin), and those figures; (None, {}) without validation data."""
    if not data.validation:
        return None, {}
    from trainer.generate import load_run
    from trainer.hardware import Hardware
    from trainer.loop import Batching, LossOnTrainedTokens, evaluate
    from trainer.strategies import make_accelerator

    device = Hardware.detect().device(config.backend.peft.device)
    accelerator = make_accelerator(config, device)
    loaded = load_run(run_dir, device)
    tokenizer: Any = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if config.training.objective != "sft":
        return preference_validation(config, run_dir, data, loaded, accelerator, pad_id)
    module = accelerator.prepare(LossOnTrainedTokens(loaded.model))
    batching = replace(Batching.of(config, pad_id), flash=False)
    return evaluate(module, data.validation, accelerator, batching), {}


def preference_validation(config: Config, run_dir: Path, data: Any, loaded: Any, accelerator: Any, pad_id: int) -> tuple[float | None, dict[str, float]]:
    """dpo and orpo as trainer's loop measures them. AutoTrain's DPO reference is the base model (TRL switches the new
    adapter off; a full fine-tune's is the base model loaded again): its log-probs go to the run directory, as the
    peft backend's do, for `trainer eval`."""
    from trainer.generate import load_base
    from trainer.loop import evaluate
    from trainer.objectives import Preference, load_or_compute_reference

    objective = Preference(config)
    module = objective.module(loaded.model)
    batching = objective.batching(config, pad_id)
    if config.training.objective == "dpo":
        has_adapter = hasattr(loaded.model, "disable_adapter")
        reference_model = loaded.model if has_adapter else load_base(config, loaded.device).model
        reference_loss = module if has_adapter else Preference(config).module(reference_model)
        assert isinstance(reference_loss, type(module))
        reference = load_or_compute_reference(run_dir, reference_loss, reference_model, batching, {"validation": data.validation},
                                              accelerator, fresh_adapter=has_adapter)
        batching = replace(batching, reference=reference, split="validation")
    loss = evaluate(module, data.validation, accelerator, batching)
    return loss, objective.take_metrics("eval_")


class AutoTrainBackend:
    name = "autotrain"

    def check(self, config: Config) -> list[tuple[tuple, str]]:
        """What a run of this config would refuse, whatever the machine: AutoTrain's differences, unless allowed."""
        if config.backend.autotrain.allow_differences:
            return []
        return [(path, message + " Set backend.autotrain.allow_differences: true to run it anyway (AutoTrain's way), "
                 "or use backend.name: peft.") for path, message in differences(config)]

    def check_machine(self, config: Config) -> list[tuple[tuple, str]]:
        """What this machine lacks for the run: AutoTrain's own environment."""
        problem = environment_problem(autotrain_python(config))
        return [(("backend", "autotrain", "python"), problem)] if problem else []

    def train(self, config: Config, run_dir: Path, resume: bool) -> Path:
        for path, message in differences(config):
            _say(f"warning: {'.'.join(path)}: {message}")
        if resume and (run_dir / "model").is_dir() and (run_dir / "summary.json").is_file():
            _say(f"{run_dir} already holds the finished AutoTrain run; nothing to resume.")
            return run_dir
        guard_run_dir(run_dir, resume)
        if resume:
            _say("AutoTrain cannot continue an interrupted run; it starts again from the beginning.")
        run_dir.mkdir(parents=True, exist_ok=True)
        work = run_dir / "autotrain"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        python = autotrain_python(config)
        _, tokenizer, data = prepare_handover(config, work)
        unit = "examples" if config.training.objective == "sft" else "pairs"
        _say(f"Data: {len(data.train)} training and {len(data.validation)} validation {unit}; "
             f"running AutoTrain {VERSION} ({work / 'autotrain.yml'}) ...")
        log = AutoTrainLog(work / "autotrain.log")
        run_autotrain(python, work, config, log)
        summary = collect(config, run_dir, work, tokenizer, data, log)
        shutil.rmtree(work / project_name(config.output.dir), ignore_errors=True)  # its copy is now in model/
        _say(f"Done in {summary.train_seconds / 60:.1f} min of AutoTrain training. Run directory: {run_dir}")
        if config.output.push_to_hub is not None:
            from trainer.hub import push_run

            target = config.output.push_to_hub
            _say(f"Uploaded to {push_run(run_dir, target.repo_id, target.private)}")
        return run_dir
