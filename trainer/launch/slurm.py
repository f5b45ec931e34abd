"""The Slurm batch script: one task per node, each running `trainer --config ... --node-rank $SLURM_NODEID`, whose
launcher (torchrun's elastic agent) starts a trainer process per GPU.

The nodes meet at the first node of the allocation (`scontrol show hostnames`, head: MASTER_ADDR), or at
distributed.rendezvous.
Slurm gives no shared disk of its own: the run directory and the config must be on storage every node mounts, and
the script checks that before training. Before the time limit (`--signal=B:USR1@...`) or on a preemption (SIGTERM),
the script passes SIGTERM to the training: every trainer process checkpoints, and the script requeues the job
(`--requeue`), whose next start continues with --resume. trainer exits 3 after such a stop; the script goes by the
signal it caught all the same (a node killed outright has no status to give).
"""
from __future__ import annotations

import shlex
from pathlib import Path

from trainer import __version__
from trainer.distributed import DEFAULT_RENDEZVOUS_PORT
from trainer.launch import LaunchSpec, comment

CPUS_PER_GPU = 8  # data loading and the launcher; lower it where a node has fewer cores per GPU
NOTICE_SECONDS = 600  # the warning before the time limit: time to save a full fine-tune's checkpoint


def sbatch_script(spec: LaunchSpec) -> str:
    low, high = spec.nodes
    nodes = str(low) if low == high else f"{low}-{high}"
    trainer = " ".join(shlex.quote(arg) for arg in spec.trainer_args())
    quoted = shlex.quote
    header = [
        f"Slurm batch script for {spec.config_file} on {nodes} node(s) x {spec.gpus_per_node} GPU(s), "
        f"written by `trainer launch --to slurm` (trainer {__version__}).",
        f"Submit it from a login node: sbatch {spec.name}.sbatch (add --partition, --account, --time as your cluster asks;",
        "export HF_TOKEN first for a gated model: sbatch passes the environment on).",
        "Each node runs trainer once (one task per node, --node-rank from Slurm), whose launcher starts a trainer process",
        f"per GPU; the nodes meet at {spec.endpoint or 'the first node of the job'}. The run directory must be on storage every node",
        "sees: the script checks it.",
        f"Before the time limit ({NOTICE_SECONDS} s ahead) or on a preemption, trainer checkpoints and the job is requeued;",
        "its next start continues from the checkpoint (--resume).",
        "",
        *spec.plan_comment,
    ]
    lines = [
        "#!/bin/bash",
        *comment(header),
        "#",
        f"#SBATCH --job-name={spec.name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={spec.gpus_per_node}",
        f"#SBATCH --cpus-per-task={CPUS_PER_GPU * spec.gpus_per_node}",
        f"#SBATCH --output={spec.name}-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{NOTICE_SECONDS}",
        "",
        "set -uo pipefail",
        f"cd {quoted(str(spec.workdir))}  # relative paths in the config start here",
        f"RUN_DIR={quoted(str(spec.run_dir))}",
        f"PYTHON=${{TRAINER_PYTHON:-{quoted(spec.python)}}}  # trainer's Python, on storage the nodes share",
        *([] if spec.endpoint else [  # distributed.rendezvous, when set, comes before these
            'export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}  # where the nodes meet: node 0',
            f"export MASTER_PORT=${{MASTER_PORT:-{DEFAULT_RENDEZVOUS_PORT}}}"]),
        "",
        "# every node must see the run directory: the first process writes checkpoints there and every one reads them back",
        'mkdir -p "$RUN_DIR" && touch "$RUN_DIR/.slurm-$SLURM_JOB_ID"',
        'if ! srun --ntasks-per-node=1 test -e "$RUN_DIR/.slurm-$SLURM_JOB_ID"; then',
        '    echo "$RUN_DIR is not on storage every node shares; set output.dir to such a folder (--set output.dir=...)." >&2',
        "    exit 2",
        "fi",
        'rm -f "$RUN_DIR/.slurm-$SLURM_JOB_ID"',
        "",
        "stopping=0",
        "stop() {  # USR1: the time limit is near; TERM: a preemption. The trainer processes checkpoint and stop.",
        "    stopping=1",
        '    kill -TERM "$training" 2>/dev/null',
        "}",
        "trap stop USR1 TERM",
        "",
        "# each task is one node: bash gives it the node's own rank, which srun's command line cannot",
        """srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c 'exec "$0" "$@" --node-rank "$SLURM_NODEID"' "$PYTHON" \\""",
        f"    {trainer} &",
        "training=$!",
        'wait "$training"; status=$?',
        'while kill -0 "$training" 2>/dev/null; do wait "$training"; status=$?; done  # a caught signal ends a wait early',
        'if [ "$status" -gt 128 ]; then wait "$training"; status=$?; fi  # so its own status, kept by bash, is asked again',
        'if [ "$stopping" = 1 ]; then',
        '    echo "stopped after a checkpoint; requeued: the next start continues with --resume" >&2',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def submit_hint(spec: LaunchSpec, file: Path) -> str:
    return f"sbatch {file}"
