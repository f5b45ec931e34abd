"""Bringing AutoTrain's result back: its project folder -> trainer's run directory (model/, merged/,
metrics.jsonl, summary.json, loss.png, the card), with the validation loss measured the way the peft backend
measures it."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainer.backends.autotrain.pairs import logged_metrics
from trainer.backends.autotrain.params import project_name
from trainer.backends.autotrain.process import AutoTrainLog
from trainer.config import Config
from trainer.errors import UserError
from trainer.methods import method_for
from trainer.objectives import objective_for
from trainer.rundir import MetricsLog, RunSummary, common_system_prompt, merge_saved_adapter, plot_losses, write_model_card


def collect(config: Config, run_dir: Path, work: Path, tokenizer: Any, data: Any, log: AutoTrainLog) -> RunSummary:
    """AutoTrain's project folder -> trainer's run directory (model/, merged/, metrics.jsonl, loss.png, card)."""
    adapter = method_for(config).has_adapter
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
    adapter = method_for(config).has_adapter
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
        common_system_prompt=common_system_prompt(data.examples(0)),
    )


def validation_loss(config: Config, run_dir: Path, data: Any) -> tuple[float | None, dict[str, float]]:
    """The validation loss of the result, computed exactly as the peft backend computes it (per trained token, or per
    pair for dpo and orpo with their reward accuracy and margin), and those figures; (None, {}) without validation data."""
    if not data.validation:
        return None, {}
    from trainer.data.batching import Batching
    from trainer.evaluation.loss import evaluate
    from trainer.generate import load_run
    from trainer.hardware import Hardware
    from trainer.objectives.sft import LossOnTrainedTokens
    from trainer.strategies import make_accelerator

    device = Hardware.detect().device(config.backend.peft.device)
    accelerator = make_accelerator(config, device)
    loaded = load_run(run_dir, device)
    tokenizer: Any = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if objective_for(config).pairs:
        return preference_validation(config, run_dir, data, loaded, accelerator, pad_id)
    module = accelerator.prepare(LossOnTrainedTokens(loaded.model))
    batching = replace(Batching.of(config, pad_id), flash=False)
    return evaluate(module, data.validation, accelerator, batching), {}


def preference_validation(config: Config, run_dir: Path, data: Any, loaded: Any, accelerator: Any, pad_id: int) -> tuple[float | None, dict[str, float]]:
    """dpo and orpo as trainer's loop measures them. AutoTrain's DPO reference is the base model (TRL switches the new
    adapter off; a full fine-tune's is the base model loaded again): its log-probs go to the run directory, as the
    peft backend's do, for `trainer eval`."""
    from trainer.data.batching import PairBatching
    from trainer.evaluation.loss import evaluate
    from trainer.generate import load_base
    from trainer.objectives.preference import load_or_compute_reference

    objective = objective_for(config)
    module = objective.module(loaded.model)
    batching = objective.batching(config, pad_id)
    assert isinstance(batching, PairBatching)  # a pair objective's
    if objective.needs_reference:
        has_adapter = hasattr(loaded.model, "disable_adapter")
        reference_model = loaded.model if has_adapter else load_base(config, loaded.device).model
        reference_loss = module if has_adapter else objective_for(config).module(reference_model)
        assert isinstance(reference_loss, type(module))
        reference = load_or_compute_reference(run_dir, reference_loss, reference_model, batching, {"validation": data.validation},
                                              accelerator, fresh_adapter=has_adapter)
        batching = replace(batching, reference=reference, split="validation")
    loss = evaluate(module, data.validation, accelerator, batching)
    return loss, objective.take_metrics("eval_")
