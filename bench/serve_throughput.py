"""Serving many users on a CPU: total generated tokens/s and time to first token (median, p95) at 1, 8 and 32
concurrent clients, 64 generated tokens each, for

  (a) the old `trainer serve` (one request at a time through llama-cpp-python), from a checkout given by --old-checkout
      (a commit before llama-server became the engine, e.g. `git worktree add /tmp/old 38c3804`);
  (b) llama-server run by hand on the same GGUF, with the flags trainer serve would give it;
  (c) the new `trainer serve` (llama-server behind trainer's router);

then the engine's decode ceiling on this machine (the decode rate of all sequences at once against one alone, from
llama-server's own timings: the most any batching can give over a queue here; --ceiling-only measures only that),
the cost of the router per request (median latency of a 1-token answer through (c) minus straight from (b)), and 4
LoRA adapters over one base against the same 4 runs merged and served apart: memory (the proportional set
size, PSS, of every process serving) and tokens/s with requests spread over the 4 models.

    .venv/bin/python bench/serve_throughput.py --run runs/quickstart [--old-checkout /tmp/old] [--clients 1,8,32]

Every server runs in its own process on 127.0.0.1 and is asked through the official `openai` client, streaming, so
the time to the first content chunk is measured as a client sees it; each client sends one request (at least 4 in
all); `ignore_eos` keeps every answer at 64 tokens (with --natural-length it is not sent: every system then gives
the same greedy answers, ended at their end-of-turn, which is the fair comparison with the old server, which ignores it)
where the engine honours it (llama-server). Prompts are the quickstart's validation recipes. The 4 adapter runs are
copies of --run with their LoRA B matrices scaled (0.5, 0.75, 1, 1.25): real adapters of the same shape.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def prompts(count: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in (REPO / "data" / "recipes" / "validation.jsonl").read_text().splitlines()]
    return [rows[i % len(rows)]["messages"][:-1] for i in range(count)]


NATURAL_LENGTH = False  # --natural-length


def measure(base_url: str, names: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    """`requests` streamed chat completions from `clients` threads, spread over `names`; tokens/s over the wall time."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=os.environ.get("TRAINER_API_KEY", "none"), max_retries=0, timeout=1800)
    conversations = prompts(requests)
    client.chat.completions.create(model=names[0], messages=conversations[0], max_tokens=4)  # warm-up

    def one(i: int) -> tuple[float, int]:
        begin, first, usage = time.perf_counter(), None, None
        stream = client.chat.completions.create(model=names[i % len(names)], messages=conversations[i], max_tokens=max_tokens,
                                                temperature=0, stream=True, stream_options={"include_usage": True},
                                                extra_body={} if NATURAL_LENGTH else {"ignore_eos": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - begin
            if getattr(chunk, "usage", None):
                usage = chunk.usage
        return first or 0.0, usage.completion_tokens if usage else 0

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - started
    firsts = sorted(r[0] for r in results)
    return {"tokens_per_s": sum(r[1] for r in results) / seconds, "ttft_median_s": statistics.median(firsts),
            "ttft_p95_s": firsts[min(len(firsts) - 1, int(0.95 * len(firsts)))], "tokens": sum(r[1] for r in results)}


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 1800) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer in time")


def start_trainer_serve(args: list[str], pythonpath: Path = REPO) -> tuple[subprocess.Popen, int]:
    from test_serve import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    process = subprocess.Popen([sys.executable, "-m", "trainer", "serve", *args, "--port", str(port)], cwd=pythonpath, env=env,
                               stderr=sys.stderr)
    wait_ready(f"http://127.0.0.1:{port}/health", process)
    return process, port


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


def pss_bytes(pids: list[int]) -> int:
    """The proportional set size of these processes: shared pages (one mmapped base) counted once in all."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


def serving_pids(port: int, router: subprocess.Popen) -> list[int]:
    import httpx

    engines = httpx.get(f"http://127.0.0.1:{port}/health").json()["engines"]
    return [router.pid] + [e["pid"] for e in engines]


def row(name: str, clients: int, r: dict) -> str:
    line = f"| {name} | {clients} | {r['tokens_per_s']:.1f} | {r['ttft_median_s'] * 1000:.0f} ms | {r['ttft_p95_s'] * 1000:.0f} ms |"
    print(f"measured: {line}", file=sys.stderr, flush=True)  # as it comes: a long run cut short keeps what it measured
    return line


def start_llama_server(args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    """llama-server run by hand on the run's merged q8_0 GGUF (exported first if missing), with the flags trainer serve
    gives it and --parallel slots; answering when this returns."""
    from trainer.export.gguf import run_name
    from trainer.serve.llamaserver import EngineSpec, Model, free_port, server_binary, size_engine
    from trainer.serve.runs import merged_gguf

    spec = EngineSpec(merged_gguf(args.run, "q8_0", print), [Model(run_name(args.run))])
    size_engine(spec, None, args.parallel, None)
    port = free_port()
    engine = subprocess.Popen(spec.command(server_binary(), port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", engine)
    except BaseException:
        stop(engine)
        raise
    return engine, port


def engine_table(args: argparse.Namespace, clients_list: list[int]) -> list[str]:
    import httpx

    from trainer.export.gguf import run_name

    lines = []
    if args.old_checkout:
        for clients in clients_list:
            process, port = start_trainer_serve(["--run", str(args.run), "--engine", "llama.cpp"], args.old_checkout)
            try:
                lines.append(row("(a) old trainer serve (queue, llama-cpp-python)", clients,
                                 measure(f"http://127.0.0.1:{port}/v1", [run_name(args.run)], clients, max(4, clients), args.max_tokens)))
            finally:
                stop(process)
    # (c) first: it exports the run's merged GGUF if missing, which (b) then serves too
    router, port = start_trainer_serve(["--run", str(args.run), "--merged", "--parallel", str(args.parallel)])
    name = run_name(args.run)
    try:
        for clients in clients_list:
            lines.append(row("(c) trainer serve (router + llama-server)", clients,
                             measure(f"http://127.0.0.1:{port}/v1", [name], clients, max(4, clients), args.max_tokens)))
        # the router against its own engine, asked straight on its port
        engine_port = httpx.get(f"http://127.0.0.1:{port}/health").json()["engines"][0]["port"]
        overhead = router_overhead(engine_port, port, router.pid, name, args.overhead_rounds)
    finally:
        stop(router)
    engine, direct_port = start_llama_server(args)  # the GGUF (c) exported
    try:
        for clients in clients_list:
            lines.append(row("(b) llama-server by hand, same GGUF and flags", clients,
                             measure(f"http://127.0.0.1:{direct_port}/v1", [name], clients, max(4, clients), args.max_tokens)))
    finally:
        stop(engine)
    return lines + [overhead]


def decode_ceiling(args: argparse.Namespace, clients_list: list[int]) -> list[str]:
    """What batching can give on this machine at most: llama-server alone (the flags of (b)), `clients` requests at
    once of `--max-tokens` tokens each (ignore_eos, no prompt cache), and the engine's own timings: the decode rate of
    each sequence (prompt processing left out) and of all of them together, against one sequence alone. A queue gets
    the 1-client rate at any load; continuous batching at most the best ratio here."""
    import httpx

    engine, port = start_llama_server(args)
    conversations = prompts(max(clients_list))
    lines = ["", "| llama-server alone | clients | decode tokens/s per sequence | decode tokens/s, all sequences | against 1 client |",
             "|---|---|---|---|---|"]
    try:
        with httpx.Client(timeout=1800) as http:
            def one(i: int) -> float:
                body = {"messages": conversations[i], "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True,
                        "cache_prompt": False}
                reply = http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
                reply.raise_for_status()
                return float(reply.json()["timings"]["predicted_per_second"])

            one(0)  # warm-up
            alone = None
            for clients in clients_list:
                with ThreadPoolExecutor(clients) as pool:
                    rates = list(pool.map(one, range(clients)))
                each = statistics.mean(rates)
                alone = alone or (each if clients == 1 else None)
                ratio = f"{each * clients / alone:.2f}x" if alone else "-"
                lines.append(f"| (b) decode | {clients} | {each:.1f} | {each * clients:.1f} | {ratio} |")
                print(f"measured: {lines[-1]}", file=sys.stderr, flush=True)
    finally:
        stop(engine)
    return lines


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def router_overhead(direct_port: int, router_port: int, router_pid: int, name: str, rounds: int = 200) -> str:
    """What trainer's router adds to a request: the CPU time its process spends per forwarded request (robust on a
    loaded machine), and the median latency of the same 1-token answer (its prompt cached by the engine), alternating
    between llama-server straight and through the router."""
    import httpx

    body = {"model": name, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1, "temperature": 0}
    times: dict[int, list[float]] = {direct_port: [], router_port: []}
    spent = 0.0
    with httpx.Client(timeout=60) as http:
        for _ in range(rounds):
            for port in (direct_port, router_port):
                before, begin = cpu_seconds(router_pid), time.perf_counter()
                http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body).raise_for_status()
                times[port].append(time.perf_counter() - begin)
                if port == router_port:
                    spent += cpu_seconds(router_pid) - before
    direct, routed = statistics.median(times[direct_port]), statistics.median(times[router_port])
    return (f"\nRouter cost per request: {spent / rounds * 1000:.2f} ms of CPU in trainer serve's process; median latency "
            f"{routed * 1000:.2f} ms through it against {direct * 1000:.2f} ms straight to llama-server ({(routed - direct) * 1000:+.2f} ms; "
            f"{rounds} 1-token requests each, alternating)")


def adapter_runs(run: Path, folder: Path) -> list[Path]:
    """4 LoRA runs of one base: copies of `run` with the adapter's B matrices scaled."""
    import yaml
    from safetensors.torch import load_file, save_file

    runs = []
    for k, scale in enumerate((0.5, 0.75, 1.0, 1.25)):
        target = folder / f"adapter{k + 1}"
        shutil.copytree(run / "model", target / "model")
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["output"]["dir"] = str(target)
        (target / "config.yaml").write_text(yaml.safe_dump(config))
        weights = target / "model" / "adapter_model.safetensors"
        save_file({n: t * scale if "lora_B" in n else t for n, t in load_file(weights).items()}, weights)
        runs.append(target)
    return runs


def adapters_table(args: argparse.Namespace) -> list[str]:
    lines = ["", "| 4 runs on one base | processes | memory (PSS, all serving processes) | tokens/s, 8 clients spread over the 4 |",
             "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        runs = adapter_runs(args.run, Path(tmp))
        names = [r.name for r in runs]
        for label, extra in (("4 LoRA adapters over one base", []), ("4 merged models, served apart", ["--merged"])):
            # 8 slots of 1024 tokens: 4 merged llama-servers each hold their own KV cache, which at --parallel 32 x 4096
            # would dwarf the weights being compared (and took 12 GB)
            flags = [f for r in runs for f in ("--run", str(r))] + ["--parallel", "8", "--context", "1024", *extra]
            router, port = start_trainer_serve(flags)
            try:
                result = measure(f"http://127.0.0.1:{port}/v1", names, 8, 16, args.max_tokens)
                pids = serving_pids(port, router)
                memory = pss_bytes(pids)
            finally:
                stop(router)
            lines.append(f"| {label} | {len(pids)} | {memory / 1e6:.0f} MB | {result['tokens_per_s']:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "quickstart")
    parser.add_argument("--old-checkout", type=Path, help="a checkout of trainer before llama-server (for row (a))")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=32, help="llama-server slots for (b) and (c)")
    parser.add_argument("--skip-adapters", action="store_true")
    parser.add_argument("--natural-length", action="store_true", help="answers end at their end-of-turn (no ignore_eos), as the old server's do")
    parser.add_argument("--overhead-rounds", type=int, default=200)
    parser.add_argument("--ceiling-only", action="store_true", help="only the engine's decode ceiling (1 client first)")
    args = parser.parse_args()
    args.run = args.run.resolve()
    global NATURAL_LENGTH
    NATURAL_LENGTH = args.natural_length
    clients = [int(c) for c in args.clients.split(",")]
    load = os.getloadavg()
    lines = []
    if not args.ceiling_only:
        lines += ["| system | clients | generated tokens/s (all clients) | median time to first token | p95 time to first token |",
                  "|---|---|---|---|---|", *engine_table(args, clients)]
    lines += decode_ceiling(args, sorted({1, *clients}))
    if not args.skip_adapters and not args.ceiling_only:
        lines += adapters_table(args)
    print(f"\n{'at most ' if NATURAL_LENGTH else ''}{args.max_tokens} tokens per answer, greedy, q8_0, run {args.run}; {os.cpu_count()} cores, load average "
          f"{load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
