"""GRPO throughput and memory: trainer's loop against TRL's GRPOTrainer, with its defaults and set up for a CPU; and
how much time grading during generation saves with a slow grader.

Run by hand (the quickstart adapter in runs/quickstart first: `trainer --config configs/quickstart.yaml`):

    .venv/bin/python bench/grpo_throughput.py [--steps 4] [--systems ours,trl,trl_cpu]
    .venv/bin/python bench/grpo_throughput.py --grading-overlap 0.5 [--rounds 2]

The same workload for each system: SmolLM2-135M-Instruct (the demo GGUF) with the quickstart's LoRA adapter (r 16,
alpha 32, trained further), the first steps x 4 prompts of data/recipes-grpo/train.jsonl, 4 prompts per optimizer
step x 4 answers each (16 answers sampled at once), at most 96 answer tokens, temperature 1, top_p 1, no top_k, no KL
term (beta 0), one pass per round, loss dapo (TRL's default), rewards scaled by the group's spread, reward
json_list_f1 against the recipe's reference (trainer's grader, called by TRL as a reward function), the same
learning rate. Each system runs in its own process (peak RSS is its own). Printed per system: prompts/s and trained
(answer) tokens/s over the training (loading, and our dry run before the first step, left out), peak RSS, the time
spent generating (sampling and grading) and training (the rest: the forward and backward passes and the optimizer)
apart, and the CPU seconds the process used for each (all its threads): on a machine shared with other work the wall
times stretch with the load, the CPU seconds much less, so prompts per CPU second compares the systems there.

  ours     trainer's loop (`trainer --config`, in the process; precision auto: fp32 on a CPU without bf16): logits at the answer
           positions only, each answer graded as soon as generate ends it
  trl      TRL's GRPOTrainer with its defaults (bf16 autocast, gradient checkpointing on) on the CPU
  trl_cpu  TRL set up by hand for this CPU: fp32 where the CPU has no bf16 instructions (bf16 where it has them),
           gradient checkpointing off (a 135M model fits without it)

--grading-overlap SECONDS times one round of our loop (the same 16 answers) graded by a python grader that sleeps
SECONDS per answer (a stand-in for a score_model grader waiting on its server): grading each answer as it ends, while
generate goes on (what the loop does), against sampling the whole round first and grading afterwards, on the same pool
of 8 threads; --rounds times each (after one untimed round), the order alternating, the same seed for both of a round.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROMPTS_PER_STEP, GENERATIONS, MAX_COMPLETION, LR = 4, 4, 96, 2e-5
PROMPTS = REPO / "data" / "recipes-grpo" / "train.jsonl"
ADAPTER = REPO / "runs" / "quickstart" / "model"
F1 = {"type": "builtin", "name": "f1", "metric": "json_list_f1", "reference": "{{ item.answer }}"}
# --start base: a new adapter on the untuned model, whose answers are prose (json_list_f1 0 for all: nothing to learn),
# so the reward is the answer's closeness to the reference list instead (rapidfuzz's ratio)
CLOSE = {"type": "text_similarity", "name": "close", "evaluation_metric": "fuzzy_match", "input": "{{ sample.output_text }}",
         "reference": "{{ item.answer }}"}
START = {"adapter": ADAPTER}  # what main() sets from --start: {"adapter": path or None}


def reward() -> dict:
    return F1 if START["adapter"] else CLOSE


def prompts_seen(work: Path, steps: int) -> Path:
    """The prompts the steps train on, so that both loops (each with its own shuffle) see the same ones."""
    rows = [line for line in PROMPTS.read_text().splitlines() if line.strip()][: steps * PROMPTS_PER_STEP]
    path = work / "prompts.jsonl"
    path.write_text("".join(line + "\n" for line in rows), encoding="utf-8")
    return path


def config_text(out: Path, prompts: Path, steps: int, graders: list[dict]) -> str:
    from trainer.demo import demo_model_path

    adapter = START["adapter"] or "null"
    return f"""
model: {{name_or_path: {demo_model_path()}, adapter: {adapter}}}
data: {{train: {prompts}, validation_split: 0, max_seq_length: 512}}
training:
  objective: grpo
  grpo: {{num_generations: {GENERATIONS}, max_completion_length: {MAX_COMPLETION}, temperature: 1.0, top_p: 1.0, beta: 0.0,
          loss_type: dapo, scale_rewards: group, graders: {json.dumps(graders)}}}
  method: lora
  lora: {{r: 16, alpha: 32, dropout: 0.0}}
  max_steps: {steps}
  batch_size: {PROMPTS_PER_STEP}
  learning_rate: {LR}
  warmup_ratio: 0.0
output: {{dir: {out}}}
evaluation: {{after_training: false}}
logging: {{log_every: 1}}
"""


class Clock:
    """Wall and CPU seconds (all threads of this process: time.process_time) of the training, and of its generation."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.generation_wall = self.generation_cpu = 0.0

    def timed(self, fn, generation: bool):
        def wrapper(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            if generation:
                self.generation_wall += time.perf_counter() - wall
                self.generation_cpu += time.process_time() - cpu
            else:
                self.wall += time.perf_counter() - wall
                self.cpu += time.process_time() - cpu
            return out
        return wrapper

    def result(self, tokens: int, prompts: int) -> dict:
        return {"seconds": self.wall, "cpu_seconds": self.cpu, "generation_seconds": self.generation_wall,
                "generation_cpu_seconds": self.generation_cpu, "trained_tokens": tokens, "prompts": prompts}


def run_ours(steps: int, work: Path) -> dict:
    """`trainer --config` in this process, its loop and its sampling and grading timed (the dry run before the loop
    and the loading are not counted, as TRL's are not)."""
    from trainer.cli import main as trainer_main
    from trainer.reinforcement import loop, recipe

    cfg = work / "ours.yaml"
    cfg.write_text(config_text(work / "ours-run", prompts_seen(work, steps), steps, [reward()]))
    clock = Clock()
    # train_loop reads sample_round and grade_round from loop's namespace: the dry run (recipe's own names) is not timed
    loop.sample_round, loop.grade_round = clock.timed(loop.sample_round, True), clock.timed(loop.grade_round, True)
    recipe.train_loop = clock.timed(recipe.train_loop, False)
    if trainer_main(["--config", str(cfg)]) != 0:
        raise SystemExit("trainer failed")
    summary = json.loads((work / "ours-run" / "summary.json").read_text())
    return clock.result(summary["trained_tokens"], steps * PROMPTS_PER_STEP)


def has_bf16_instructions() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_trl(steps: int, work: Path, tuned_for_cpu: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainer.config import parse_config
    from trainer.graders import grade
    from trainer.models import load_model, load_tokenizer
    from trainer.reinforcement.rewards import load_rewards

    prompts = prompts_seen(work, steps)
    config = parse_config(config_text(work / "trl-run", prompts, steps, [reward()]))
    tokenizer = load_tokenizer(config.model.name_or_path)
    base = load_model(config, "cpu")
    if START["adapter"]:
        model = PeftModel.from_pretrained(base, str(START["adapter"]), is_trainable=True)
    else:  # the new adapter trainer's lora method makes (its default targets)
        lora, targets = config.training.lora, config.training.lora.target_modules
        model = get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                target_modules=targets if isinstance(targets, str) else list(targets)))
    rows = [json.loads(line) for line in prompts.read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": r["messages"], "answer": r["answer"]} for r in rows])
    (ours,) = load_rewards([reward()])

    def score(prompts, completions, answer, **_):  # trainer's grader, as TRL calls a reward function
        return [grade(ours.grader, {"output_text": c[0]["content"]}, {"answer": a}).score for c, a in zip(completions, answer)]

    clock, begun = Clock(), {}

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            begun.update(wall=time.perf_counter(), cpu=time.process_time())

        def on_train_end(self, *a, **k):
            clock.wall, clock.cpu = time.perf_counter() - begun["wall"], time.process_time() - begun["cpu"]

    extra = {"bf16": has_bf16_instructions(), "gradient_checkpointing": False} if tuned_for_cpu else {}
    args = GRPOConfig(output_dir=str(work / "trl-run"), max_steps=steps, per_device_train_batch_size=PROMPTS_PER_STEP * GENERATIONS,
                      gradient_accumulation_steps=1, num_generations=GENERATIONS, max_completion_length=MAX_COMPLETION,
                      temperature=1.0, top_p=1.0, beta=0.0, loss_type="dapo", scale_rewards="group", learning_rate=LR,
                      warmup_steps=0, logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True,
                      seed=42, **extra)
    trainer = GRPOTrainer(model=model, reward_funcs=[score], args=args, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[Timer()])
    counted = {"tokens": 0}
    compute_loss = trainer.compute_loss

    def counting(model, inputs, *a, **k):
        counted["tokens"] += int(inputs["completion_mask"].sum())
        return compute_loss(model, inputs, *a, **k)

    # sampling, decoding and the rewards: what TRL does before its loss
    trainer._generate_and_score_completions = clock.timed(trainer._generate_and_score_completions, True)
    trainer.compute_loss = counting
    trainer.train()
    return clock.result(counted["tokens"], steps * PROMPTS_PER_STEP)


def grading_overlap(seconds: float, rounds: int) -> None:
    """One round of the loop, graded as the answers end against graded after the round (module docstring)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from trainer.config import parse_config
    from trainer.reinforcement.loop import grade_round, round_prompts, sample_round
    from trainer.reinforcement.recipe import setup
    from trainer.reinforcement.rewards import score_answers
    from trainer.reinforcement.sampling import sample_answers

    slow = {"type": "python", "name": "slow", "source": f"import time\ndef grade(sample, item):\n    time.sleep({seconds})\n    return len(sample['output_text']) / 100\n"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = parse_config(config_text(work / "run", prompts_seen(work, 1), 1, [slow]))
        run = setup(config, work / "run", resume=False)
        prompts = round_prompts(run.prompts, PROMPTS_PER_STEP, 0, 0, 1)
        found: dict[str, list[float]] = {"as they end": [], "after the round": []}
        lengths = []
        def overlapped(pool, seed):
            torch.manual_seed(seed)
            return grade_round(run, sample_round(run, prompts, pool))[0]

        def sequential(pool, seed):
            torch.manual_seed(seed)
            run.model.eval()
            samples = sample_answers(run.model, run.tokenizer, prompts, config.training.grpo, "cpu")
            run.model.train()
            lengths.append(samples.completion_mask.sum(1).tolist())
            return score_answers(run.rewards, samples.texts, [p.item for p in prompts for _ in range(GENERATIONS)], pool)

        with ThreadPoolExecutor(8) as pool:
            overlapped(pool, rounds)  # a round untimed first: the first generate call pays for allocations the others reuse
            for r in range(rounds):
                scored = {}
                # the order alternates, so that neither way always runs on the warmer machine
                for name, way in ((("as they end", overlapped), ("after the round", sequential))[:: 1 if r % 2 == 0 else -1]):
                    started = time.perf_counter()
                    scored[name] = way(pool, r)
                    found[name].append(time.perf_counter() - started)
                assert scored["as they end"].rewards == scored["after the round"].rewards
    for name, times in found.items():
        print(f"{name:16s} {statistics.median(times):7.1f} s a round (median of {rounds}: {', '.join(f'{t:.1f}' for t in times)})")
    print(f"saved {statistics.median(found['after the round']) - statistics.median(found['as they end']):.1f} s a round; "
          f"answer lengths (tokens) of the rounds: {lengths}")
    print(json.dumps({k: [round(t, 2) for t in v] for k, v in found.items()}))


def child(system: str, steps: int, work: str) -> None:
    runs = {"ours": run_ours, "trl": lambda s, w: run_trl(s, w, False), "trl_cpu": lambda s, w: run_trl(s, w, True)}
    result = runs[system](steps, Path(work))
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--systems", default="ours,trl,trl_cpu")
    parser.add_argument("--grading-overlap", type=float, metavar="SECONDS", help="time grading during generation with a grader this slow")
    parser.add_argument("--rounds", type=int, default=2, help="with --grading-overlap: rounds timed each way")
    parser.add_argument("--start", default="quickstart", help="quickstart: from runs/quickstart's adapter, reward json_list_f1; "
                        "base: a new LoRA r16 on the untuned model, reward fuzzy_match; or the folder of another adapter to start from")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    START["adapter"] = {"quickstart": ADAPTER, "base": None}.get(args.start, Path(args.start).resolve())
    if args.child:
        return child(args.child, args.steps, args.work)
    for needed, how in ((PROMPTS, "data/recipes-grpo/make_prompts.py"), (START["adapter"] or PROMPTS, "trainer --config configs/quickstart.yaml")):
        if not needed.exists():
            sys.exit(f"{needed} is missing: run {how} first")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; bf16 instructions: {has_bf16_instructions()}")
    if args.grading_overlap is not None:
        return grading_overlap(args.grading_overlap, args.rounds)
    table = {}
    for system in args.systems.split(","):
        load = round(os.getloadavg()[0], 1)
        with tempfile.TemporaryDirectory() as work:
            done = subprocess.run([sys.executable, __file__, "--child", system, "--steps", str(args.steps), "--work", work, "--start", args.start],
                                  capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{system} failed:\n{done.stderr[-3000:]}")
        r = json.loads(line[7:])
        table[system] = {"prompts_per_s": round(r["prompts"] / r["seconds"], 4), "trained_tokens_per_s": round(r["trained_tokens"] / r["seconds"], 2),
                         "peak_rss_gb": round(r["peak_rss_gb"], 2), "generation_s": round(r["generation_seconds"], 1),
                         "training_s": round(r["seconds"] - r["generation_seconds"], 1), "cpu_s": round(r["cpu_seconds"], 1),
                         "generation_cpu_s": round(r["generation_cpu_seconds"], 1), "trained_tokens": r["trained_tokens"],
                         "prompts_per_cpu_s": round(r["prompts"] / r["cpu_seconds"], 4), "load_before": load, "load_after": round(os.getloadavg()[0], 1)}
        t = table[system]
        print(f"{system:8s} {t['prompts_per_s']:.4f} prompts/s  {t['trained_tokens_per_s']:7.2f} trained tok/s  peak RSS {t['peak_rss_gb']:.2f} GB  "
              f"generating {t['generation_s']:.0f} s, training {t['training_s']:.0f} s  CPU {t['cpu_s']:.0f} s (generating "
              f"{t['generation_cpu_s']:.0f} s)  load {load} -> {t['load_after']}", flush=True)
    for other in ("trl", "trl_cpu"):
        if "ours" in table and other in table:
            print(f"ours / {other}: {table['ours']['prompts_per_s'] / table[other]['prompts_per_s']:.2f}x prompts/s, "
                  f"{table['ours']['prompts_per_cpu_s'] / table[other]['prompts_per_cpu_s']:.2f}x prompts per CPU second")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
