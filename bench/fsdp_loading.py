"""FSDP loads the weights in one process: the peak memory of each process, fsdp against ddp, on a model of ~400 MB.

Run by hand: .venv/bin/python bench/fsdp_loading.py [--processes 2] [--layers 6] [--strategies fsdp,ddp]

A random Llama (hidden 1024, MLP 4096, 16 heads, `--layers` layers: 100M parameters, 403 MB in float32 at 6 layers)
and the tests' character tokenizer are written to a temporary folder; `trainer --config` trains a LoRA on it for two
steps with `--processes` CPU processes. Printed per strategy and per process: its peak RSS (VmHWM, read from /proc
while it runs) once the model is loaded and sharded, and over the whole run, each also as a multiple of the weights
above the same process's peak in the same run of a 0.1 MB model (the baseline: imports, data, process group).
Training adds FSDP's gathered copies of a layer or two at a time; set MALLOC_MMAP_THRESHOLD_=65536 so that freed
memory is returned to the system rather than kept by glibc (as bench/distributed_memory.py advises). Under ddp every process loads the whole model; under fsdp only the first reads it, the
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


def write_model(folder: Path, layers: int, hidden: int = 1024) -> float:
    """The model and tokenizer in `folder`; returns the weights' size in MB."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import make_char_tokenizer
    from trainer.data.templates import CHATML

    tokenizer = make_char_tokenizer(CHATML)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=512,
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


def run(strategy: str, processes: int, model: Path, work: Path) -> dict[int, tuple[float, float]]:
    """(peak RSS in MB once the model is loaded and sharded, peak RSS over the whole run) of each training process, by
    its rank, as last read before it ended. "Loaded": when the log says how many parameters the method trains, which
    the first process prints after every process has its shards (the filling is collective)."""
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
    loaded: dict[int, float] = {}
    ranks: dict[int, int] = {}
    while launcher.poll() is None:
        for child in psutil.Process(launcher.pid).children():
            try:
                rank = ranks.setdefault(child.pid, int(child.environ()["RANK"]))
            except (psutil.Error, KeyError):
                continue
            kb = peak_kb(child.pid)
            if kb is not None:
                peaks[rank] = max(peaks.get(rank, 0.0), kb / 1024)
                if "Method " not in log.read_text():
                    loaded[rank] = peaks[rank]
        time.sleep(0.05)
    if launcher.returncode != 0:
        sys.exit(f"{strategy} failed:\n{log.read_text()[-3000:]}")
    return {rank: (loaded.get(rank, 0.0), peaks[rank]) for rank in sorted(peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--strategies", default="fsdp,ddp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = write_model(work / "model", args.layers)
        write_model(work / "speck", 1, hidden=64)
        # the baseline: the same run of a model of 0.1 MB, whose processes hold everything but the weights
        base = run("ddp", args.processes, work / "speck", work / "speck")
        print(f"weights: {weights:.0f} MB; the same run with a 0.1 MB model: " +
              ", ".join(f"rank {r} {loaded:.0f} MB loaded, {peak:.0f} MB in all" for r, (loaded, peak) in base.items()))
        for strategy in args.strategies.split(","):
            for rank, (loaded, peak) in run(strategy, args.processes, work / "model", work).items():
                above = (loaded - base[rank][0]) / weights, (peak - base[rank][1]) / weights
                print(f"{strategy:5} rank {rank}: loaded {loaded:5.0f} MB ({above[0]:4.2f} x the weights above the baseline), "
                      f"whole run {peak:5.0f} MB ({above[1]:4.2f} x)")

if __name__ == "__main__":
    main()
