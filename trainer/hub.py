"""Uploading a run's result to the Hugging Face Hub, with the token from HF_TOKEN only (never written anywhere)."""
from __future__ import annotations

import os
from pathlib import Path

from trainer.errors import UserError

# What a user downloads: the model, its card and config, the curves and the evaluation. Not the checkpoints.
UPLOADED = ["model/*", "merged/*", "README.md", "config.yaml", "summary.json", "metrics.jsonl", "loss.png", "eval.*"]


def push_run(run_dir: Path, repo_id: str, private: bool) -> str:
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise UserError("output.push_to_hub: the HF_TOKEN environment variable is not set; nothing was uploaded.")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(run_dir), allow_patterns=UPLOADED,
                                   commit_message="Upload fine-tuned model from trainer")
    except Exception as exc:  # huggingface_hub raises HTTP, connection and validation errors
        message = str(exc).replace(token, "***").splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"output.push_to_hub: uploading {run_dir} to {repo_id} failed: {message}. The run directory is complete; "
            f"upload it later with `huggingface-cli upload {repo_id} {run_dir}`."
        ) from None
    return getattr(commit, "commit_url", f"https://huggingface.co/{repo_id}")
