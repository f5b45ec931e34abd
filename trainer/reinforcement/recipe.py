"""grpo's recipe on the peft backend: setup -> the dry run -> the loop (loop.py) -> save, with the peft recipe's steps
(accelerator, run directory, model and adapter, optimizer, schedule, resume) reused as they are.

The dry run, before the first step of a new run: the starting model answers a few training prompts num_generations
times and the graders score them. If every group's answers got the same reward, the advantages are all 0 and training
would change nothing; that is a UserError (exit 2) saying what the answers scored and what to change.
"""
from __future__ import annotations

import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, cast

from trainer import checkpoint
from trainer.backends.peft.loop import StopRequested
from trainer.backends.peft.recipe import (
    setup_accelerator,
    setup_model,
    setup_optimizer,
    setup_resume,
    setup_run_dir,
    setup_scheduler,
)
from trainer.config import Config
from trainer.data.prompts import Prompt, check_prompts, encode_prompts, read_prompts
from trainer.errors import RunStopped, UserError
from trainer.objectives.grpo import GRPO
from trainer.reinforcement.loop import GrpoRun, grade_round, keep_completions_until, round_prompts, sample_round, say, train_loop
from trainer.reinforcement.rewards import load_rewards
from trainer.reinforcement.vllm_sampling import choose_generation, start_sampler
from trainer.rundir import MetricsLog, RunSummary, plot_losses, write_merged, write_model_card

if TYPE_CHECKING:
    from trainer.objectives.base import Objective

DRY_RUN_PROMPTS = 4


def train(config: Config, run_dir: Path, resume: bool) -> Path:
    run = setup(config, run_dir, resume)
    try:
        if run.resumed_at_step is None:
            dry_run(run)
        try:
            state = train_loop(run)
        except StopRequested:
            raise RunStopped(f"stopped at step {run.state.step}; the checkpoint is in {checkpoint.checkpoints_dir(run_dir)}. "
                             "Continue with the same command plus --resume.") from None
        save_outputs(run)
        say(f"Done in {state.seconds / 60:.1f} min. Run directory: {run_dir}")
    finally:
        if run.sampler is not None:
            run.sampler.close()
        run.strategy.end(together=True)
    return run_dir


def setup(config: Config, run_dir: Path, resume: bool) -> GrpoRun:
    from accelerate.utils import set_seed

    from trainer.data.pipeline import _NO_TEMPLATE, checked_template, model_label
    from trainer.data.tokenize import Tokenizer
    from trainer.models import load_tokenizer, mixed_precision

    device, accelerator, strategy = setup_accelerator(config)
    generation = choose_generation(config, device)  # before the model loads: generation: vllm on a CPU is said at once
    precision = mixed_precision(config, device)
    newest = setup_run_dir(run_dir, resume, accelerator)
    set_seed(config.training.seed)
    objective = GRPO(config)
    rewards = load_rewards(config.training.grpo.graders)
    tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
    prompt_set = read_prompts(config, rewards)
    check_prompts(prompt_set, config.data.on_invalid)
    template = checked_template(config, tokenizer) if config.data.format != "text" else None
    encode = Tokenizer(tokenizer, template or _NO_TEMPLATE, config.data.train_on, config.data.max_seq_length,
                       fold_system=config.data.system_prompt == "fold", model_name=model_label(config.model))
    prompts, problems = encode_prompts(prompt_set.train, encode, config.data.max_seq_length - config.training.grpo.max_completion_length)
    if problems and config.data.on_invalid == "error" or not prompts:
        raise UserError(problems[:20] or "no prompt fits data.max_seq_length", title=f"{len(problems)} prompt(s) do not fit; nothing was trained.")
    say(f"Data: {len(prompts)} training prompts ({prompt_set.splits[0].detection}); graders: "
        + ", ".join(f"{r.name} ({type(r.grader).__name__}{f', weight {r.weight:g}' if r.weight != 1 else ''})" for r in rewards))
    # setup_model asks the objective only for its loss module; grpo has no batching of the Objective kind (loop.py rows)
    model, loss_module, trainable = setup_model(config, device, precision, accelerator, strategy, cast("Objective", objective))
    optimizer = setup_optimizer(config, trainable, device)
    t = config.training
    rounds_per_epoch = max(1, math.ceil(len(prompts) / (t.batch_size * t.gradient_accumulation)))
    steps = t.max_steps if t.max_steps is not None else max(1, math.ceil((t.epochs or 1) * rounds_per_epoch)) * t.grpo.num_iterations
    loss_module, optimizer = strategy.prepare(loss_module, optimizer, config, precision)
    scheduler = setup_scheduler(config, optimizer, steps)
    optimizer = strategy.prepare_optimizer(optimizer)
    state = setup_resume(newest, strategy, model, optimizer, scheduler, steps, accelerator)
    resumed = state.step if newest is not None else None
    metrics = MetricsLog(run_dir / "metrics.jsonl", resumed, config.logging.report_to == "tensorboard")
    (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    if resumed is not None:
        keep_completions_until(run_dir, resumed)
    sampler = None
    if generation == "vllm":
        say(f"Answers sampled by vLLM on the GPU, in {config.training.grpo.vllm_gpu_memory:.0%} of its memory "
            "(training.grpo.vllm_gpu_memory) ...")
        sampler = start_sampler(config, model, run_dir)
    return GrpoRun(config, run_dir, accelerator, strategy, tokenizer, model, loss_module, trainable, optimizer, scheduler, objective,
                   rewards, prompts, state, steps, rounds_per_epoch, metrics, resumed, sampler=sampler)


def dry_run(run: GrpoRun) -> None:
    """Score the starting model's answers to a few prompts; refuse a reward that cannot teach anything (module docstring)."""
    settings = run.config.training.grpo
    prompts: list[Prompt] = round_prompts(run.prompts, min(DRY_RUN_PROMPTS, len(run.prompts)), 0, 0, run.config.training.seed + 1)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="grader") as pool:
        sampled = sample_round(run, prompts, pool)
        scored, _ = grade_round(run, sampled)
    run.objective.reward_totals["train"].zero_()  # the dry run is not a training step's figures
    group = settings.num_generations
    groups = [scored.rewards[i : i + group] for i in range(0, len(scored.rewards), group)]
    spread = sum(1 for g in groups if len({round(r, 9) for r in g if not math.isnan(r)}) > 1)
    scores = [r for r in scored.rewards if not math.isnan(r)]
    per_grader = ", ".join(f"{r.name} {sum(s) / len(s):.3f}" for i, r in enumerate(run.rewards) if (s := scored.scores(i)))
    if spread:
        say(f"Dry run: {len(prompts)} prompts x {group} answers of the starting model, mean reward {sum(scores) / max(len(scores), 1):.3f} "
            f"({per_grader}); {spread} of {len(groups)} groups have answers that score differently, so the reward can teach.")
        return
    if not scores:
        why = f"no grader could score any answer; the first failure: {scored.errors[0]}"
    else:
        values = sorted({round(r, 6) for r in scores})
        why = (f"every answer to the same prompt got the same reward (the rewards seen: {', '.join(f'{v:g}' for v in values[:5])})"
               + (f"; {len(scored.errors)} grades failed, the first: {scored.errors[0]}" if scored.errors else ""))
    answer = sampled.batches[0].texts[0]
    raise UserError(f"the reward cannot teach anything: the starting model answered {len(prompts)} training prompts {group} times each, and "
                    f"{why}. grpo learns only from answers that score better or worse than the others to the same prompt. Check the "
                    f"graders on such answers with `trainer grade` (one answer: {answer!r}); raise training.grpo.temperature or "
                    "num_generations for more varied answers, or use a grader that gives partial credit (text_similarity, json_list_f1).")


def save_outputs(run: GrpoRun) -> None:
    """The run directory as the peft recipe leaves it: model (adapter) with its tokenizer, optionally merged, summary, card, curves."""
    run_dir, state = run.run_dir, run.state
    tmp, model_dir = run_dir / ".tmp-model", run_dir / "model"
    shutil.rmtree(tmp, ignore_errors=True)
    run.model.save_pretrained(tmp)
    run.tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    if run.config.output.merge_adapter and hasattr(run.model, "merge_and_unload"):
        write_merged(run_dir, run.model, run.tokenizer)
    summary = RunSummary(backend="peft", steps=state.step, epochs=state.epoch + state.batch_in_epoch / run.rounds_per_epoch,
                         final_train_loss=state.history[-1][1] if state.history else None, final_eval_loss=None, best_eval_loss=None,
                         best_step=None, stopped_early=False, trained_tokens=state.trained_tokens, train_seconds=state.seconds,
                         trained_tokens_per_second=state.trained_tokens / state.seconds if state.seconds else 0.0)
    summary.write(run_dir)
    assert run.metrics is not None
    plot_losses(state.history, run.metrics, run_dir / "loss.png")
    write_model_card(run_dir, run.config, summary)
