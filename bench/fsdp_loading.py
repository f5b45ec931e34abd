"""FSDP loads the weights in one process: the peak memory of each process, fsdp against ddp, on a model of ~400 MB.

Run by hand: .venv/bin/python bench/fsdp_loading.py [--processes 2] [--layers 6] [--strategies fsdp,ddp]

A random Llama (hidden 1024, MLP 4096, 16 heads, `--layers` layers: 100M parameters, 403 MB in float32 at 6 layers)
and the tests' character tokenizer are written to a temporary folder; `trainer --config` trains a LoRA on it for two
steps with `--processes` CPU processes. Printed per strategy and per process: its peak RSS (VmHWM, read from /proc
while it runs), and the same less the peak of a process that imports everything but loads no model (the baseline:
torch, transformers, trainer). Under ddp every process loads the whole model; under fsdp only the first reads it, the
others build it on the meta device and receive their shards, so their peak above the baseline is about the weights
divided by the processes (plus one whole tensor in transit), not the whole weights.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def write_model(folder: Path, layers: int) -> float:
    """The model and tokenizer in `folder`; returns the weights' size in MB."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import make_char_tokenizer
    from trainer.data.templates import CHATML

    tokenizer = make_char_tokenizer(CHATML)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6


def peak_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run(strategy: str, processes: int, model: Path, work: Path) -> dict[int, float]:
    """Peak RSS in MB of each training process (by its rank), as last read before it ended."""
    import json

    import psutil

    from conftest import TINY_DATA

    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TINY_DATA))
    config = work / f"{strategy}.yaml"
    config.write_text(f"model: {{name_or_path: {model}}}\ndata: {{train: {data}, validation_split: 0, max_seq_length: 64}}\n"
                      "training: {max_steps: 2, batch_size: 2, precision: fp32, save_every: 2, warmup_ratio: 0.0}\n"
                      f"distributed: {{strategy: {strategy}, num_processes: {processes}}}\noutput: {{dir: {work / strategy}}}\n")
    log = work / f"{strategy}.log"
    launcher = subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=open(log, "w"), text=True)
    peaks: dict[int, float] = {}
    ranks: dict[int, int] = {}
    while launcher.poll() is None:
        for child in psutil.Process(launcher.pid).children():
            try:
                if child.pid not in ranks:
                    ranks[child.pid] = int(child.environ().get("RANK", "-1"))
            except psutil.Error:
                continue
            kb = peak_kb(child.pid)
            if kb is not None:
                peaks[ranks[child.pid]] = max(peaks.get(ranks[child.pid], 0.0), kb / 1024)
        time.sleep(0.05)
    if launcher.returncode != 0:
        sys.exit(f"{strategy} failed:\n{log.read_text()[-3000:]}")
    return dict(sorted(peaks.items()))


def baseline_mb() -> float:
    """The peak RSS of a process that imports what a training process does, and loads no model."""
    probe = ("import resource, torch, transformers, peft, accelerate, trainer.backends.peft.recipe; "
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    return int(subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--strategies", default="fsdp,ddp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = write_model(work / "model", args.layers)
        base = baseline_mb()
        print(f"weights: {weights:.0f} MB; a process with the imports and no model: {base:.0f} MB peak RSS")
        for strategy in args.strategies.split(","):
            for rank, peak in run(strategy, args.processes, work / "model", work).items():
                print(f"{strategy:5} rank {rank}: peak RSS {peak:6.0f} MB, {peak - base:6.0f} MB above the baseline "
                      f"({(peak - base) / weights:.2f} x the weights)")


if __name__ == "__main__":
    main()
