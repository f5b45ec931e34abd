"""The SkyPilot task: `num_nodes` machines with the planned accelerator, trainer installed from this source, and
`trainer --config ... --node-rank $SKYPILOT_NODE_RANK` on each, meeting at the first node's IP (MASTER_ADDR).

The config and the local files it names are uploaded (file_mounts) and the run reads them from there (--set); the
run directory is a bucket mounted on every node (MOUNT_CACHED: written locally, uploaded behind, as SkyPilot advises
for checkpoints), so a run that lost its spot nodes goes on from its last checkpoint on new ones: `sky jobs launch`
brings them back and the run starts again with --resume.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

import trainer
from trainer import __version__
from trainer.distributed import DEFAULT_RENDEZVOUS_PORT
from trainer.launch import LaunchSpec, comment
from trainer.patterns import is_local_data, is_local_model

REMOTE = "~/trainer-run"  # the uploaded config and files, on every node
RUNS = "/runs"  # where the bucket of run directories is mounted


class _Dumper(yaml.SafeDumper):
    pass


# setup and run as YAML block text (|), as one writes them by hand
_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def task(spec: LaunchSpec) -> dict[str, Any]:
    """The task, as SkyPilot's YAML holds it (checked by `sky.Task.from_yaml` in the tests)."""
    low, high = spec.nodes
    mounts, sets = _uploads(spec)
    run_dir = f"{RUNS}/{spec.run_dir.name}"
    trainer_args = spec.trainer_args((*sets, f"output.dir={run_dir}"))
    config_at = f"{REMOTE}/{spec.config_file.name}"
    command = " ".join(shlex.quote(a) for a in _remote_config(trainer_args, str(spec.config_file), config_at))
    assert spec.gpu is not None  # launch_spec(need_gpu=True)
    resources: dict[str, Any] = {"accelerators": f"{spec.gpu.skypilot}:{spec.gpus_per_node}", "use_spot": True}
    if spec.config.distributed.max_restarts:  # a failed node, beyond a preemption: restart the job from its checkpoint
        resources["job_recovery"] = {"max_restarts_on_errors": spec.config.distributed.max_restarts}
    elastic = [f"# elastic: {low} to {high} nodes; the rendezvous numbers the nodes that come"] if low != high else []
    out: dict[str, Any] = {
        "name": spec.name,
        "num_nodes": high,
        "resources": resources,
        "file_mounts": {"~/trainer-src": str(_source()), **mounts, config_at: str(spec.config_file),
                        RUNS: {"name": _bucket(spec.name), "mode": "MOUNT_CACHED"}},
        "setup": "\n".join([
            "set -e",
            f"pip install \"$HOME/trainer-src[{','.join(_extras(spec))}]\"  # trainer {__version__}, from its source (file_mounts)",
        ]) + "\n",
        "run": "\n".join([
            "set -e",
            *elastic,
            "cd ~  # the uploaded files are read from the home folder; trainer on each node starts a process per GPU",
            *([] if spec.endpoint else [  # distributed.rendezvous, when set, comes before these
                'export MASTER_ADDR="$(echo "$SKYPILOT_NODE_IPS" | head -n 1)"  # where the nodes meet: node 0',
                f"export MASTER_PORT={DEFAULT_RENDEZVOUS_PORT}"]),
            f"python {command} \\",
            '    --node-rank "$SKYPILOT_NODE_RANK"',
        ]) + "\n",
    }
    if not is_local_model(spec.config.model.name_or_path):
        out["secrets"] = {"HF_TOKEN": None}  # from `sky jobs launch --secret HF_TOKEN`: gated models; never written here
    return out


def task_yaml(spec: LaunchSpec) -> str:
    low, high = spec.nodes
    header = [
        f"SkyPilot task for {spec.config_file} on {high} node(s) x {spec.gpus_per_node} {spec.gpu.name if spec.gpu else ''} GPU(s), "
        f"written by `trainer launch --to skypilot` (trainer {__version__}).",
        f"Launch it: sky jobs launch {spec.name}.sky.yaml{' --secret HF_TOKEN' if not is_local_model(spec.config.model.name_or_path) else ''}",
        "(a managed job: spot nodes lost to a preemption are replaced, and the run continues from its last checkpoint).",
        f"The run directory is the bucket {_bucket(spec.name)} (mounted at {RUNS}); `sky launch` instead of `sky jobs launch` runs it",
        "once, on nodes that stay up afterwards.",
        "",
        *spec.plan_comment,
    ]
    body = yaml.dump(task(spec), Dumper=_Dumper, sort_keys=False, width=200)
    return "\n".join(comment(header)) + "\n\n" + body


def submit_hint(spec: LaunchSpec, file: Path) -> str:
    secret = " --secret HF_TOKEN" if not is_local_model(spec.config.model.name_or_path) else ""
    return f"sky jobs launch {file}{secret}"


def _uploads(spec: LaunchSpec) -> tuple[dict[str, str], list[str]]:
    """The config's local files (data, model, adapter): uploaded to every node, and the --set that points the run at them."""
    c = spec.config
    refs = [("data.train", c.data.train, is_local_data), ("data.validation", c.data.validation, is_local_data),
            ("evaluation.test", c.evaluation.test, is_local_data), ("model.name_or_path", c.model.name_or_path, is_local_model),
            ("model.adapter", c.model.adapter, lambda ref: True)]
    mounts, sets = {}, []
    for key, ref, local in refs:
        if ref is None or not local(ref):
            continue
        source = (spec.workdir / Path(ref).expanduser()).resolve()
        remote = f"{REMOTE}/files/{key.replace('.', '-')}-{source.name}"
        mounts[remote] = str(source)
        sets.append(f"{key}={remote.replace('~/', '')}")  # relative to the home folder the run starts in
    return mounts, sets


def _remote_config(args: list[str], local: str, remote: str) -> list[str]:
    return [remote.replace("~/", "") if a == local else a for a in args]


def _extras(spec: LaunchSpec) -> list[str]:
    extras = ["gpu"]
    if spec.config.distributed.strategy == "deepspeed":
        extras.append("deepspeed")
    if spec.config.logging.report_to == "tensorboard":
        extras.append("tensorboard")
    return extras


def _bucket(name: str) -> str:
    """A bucket name the clouds accept: lower case, digits and dashes, 3 to 63 characters."""
    return ("trainer-" + re.sub(r"[^a-z0-9-]+", "-", name.lower())).strip("-")[:63]


def _source() -> Path:
    """The folder trainer is installed from (its pyproject.toml), uploaded for `pip install` on the nodes: trainer is
    not on PyPI."""
    root = Path(trainer.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        from trainer.errors import UserError

        raise UserError(f"trainer is installed without its source ({root} has no pyproject.toml); the SkyPilot task installs "
                        "trainer from its source: run `trainer launch` from a checkout installed with `pip install -e .`.")
    return root
