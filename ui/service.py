"""The Jobs tab: the fine-tuning jobs of a `trainer api` service (or any service that answers OpenAI's fine-tuning
API), listed, followed and cancelled over its HTTP API, so a Space can show a service that trains elsewhere.

httpx (Gradio's own HTTP client, so no new dependency) calls the REST paths the official client calls; a service's
answer that is an error (its OpenAI error object) is shown as its message, never as a traceback. The service is
TRAINER_API_URL when set (then the only one the tab talks to: a hosted UI must not fetch URLs its visitors type),
else whatever URL the user gives; the key is the user's, held in the browser session only.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

JOB_COLUMNS = ["job", "model", "method", "status", "progress", "fine-tuned model", "created"]
EVENT_COLUMNS = ["time", "level", "message"]
TIMEOUT_S = 20.0


class ServiceError(Exception):
    """What the service (or the way to it) said went wrong, in words for the page."""


def fixed_url() -> str | None:
    """The service the operator set for this UI (TRAINER_API_URL), if any."""
    return os.environ.get("TRAINER_API_URL") or None


@dataclass(frozen=True)
class Service:
    url: str  # the API's base, e.g. http://127.0.0.1:8000/v1
    key: str

    @classmethod
    def of(cls, url: str, key: str) -> Service:
        fixed = fixed_url()
        if fixed is not None and url.strip().rstrip("/") != fixed.rstrip("/"):
            raise ServiceError(f"this UI talks to {fixed} only (TRAINER_API_URL)")
        url = (fixed or url).strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ServiceError("give the service's URL, e.g. http://127.0.0.1:8000/v1")
        return cls(url, key.strip() or "none")

    def call(self, method: str, path: str, **params: Any) -> Any:
        try:
            answer = httpx.request(method, f"{self.url}{path}", params=params or None, timeout=TIMEOUT_S,
                                   headers={"Authorization": f"Bearer {self.key}"})
        except httpx.HTTPError as exc:
            raise ServiceError(f"{self.url} cannot be reached: {exc}") from None
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            message = error.get("message") if isinstance(error, dict) else answer.text[:300]
            raise ServiceError(f"{answer.status_code}: {message}")
        if body is None:
            raise ServiceError(f"{self.url}{path} did not answer JSON: is this the API's base URL (ending in /v1)?")
        return body

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.call("GET", "/fine_tuning/jobs", limit=limit)["data"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/fine_tuning/jobs/{job_id}"))

    def events(self, job_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/fine_tuning/jobs/{job_id}/events", limit=limit)["data"])

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/fine_tuning/jobs/{job_id}/cancel"))


def progress(events: list[dict[str, Any]]) -> str:
    """The newest training step of a job's events, as `step/total (percent)`; empty before the first."""
    for event in events:  # newest first
        data = event.get("data") or {}
        if event.get("type") == "metrics" and "train_loss" in data and data.get("total_steps"):
            step, total = int(data["step"]), int(data["total_steps"])
            reward = f", reward {data['reward']:.3f}" if isinstance(data.get("reward"), (int, float)) else ""
            return f"step {step}/{total} ({step / total:.0%}), loss {data['train_loss']:.4f}{reward}"
    return ""


def _when(stamp: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if isinstance(stamp, (int, float)) else ""


def job_rows(service: Service) -> list[list[Any]]:
    """One row per job, newest first; the progress of the running ones from their events."""
    rows = []
    for job in service.jobs():
        done = job.get("status") in ("succeeded", "failed", "cancelled")
        method = (job.get("method") or {}).get("type", "supervised")
        rows.append([job["id"], job.get("model"), method, job.get("status"), "" if done else progress(service.events(job["id"], 20)),
                     job.get("fine_tuned_model") or "", _when(job.get("created_at"))])
    return rows


def job_view(service: Service, job_id: str) -> tuple[str, list[list[Any]]]:
    """(a summary of the job in Markdown, its events newest first as rows)."""
    job, events = service.job(job_id), service.events(job_id)
    lines = [f"**{job['id']}**: {job.get('status')} ({(job.get('method') or {}).get('type', 'supervised')} on {job.get('model')})"]
    if (now := progress(events)) and job.get("status") not in ("succeeded", "failed", "cancelled"):
        lines.append(f"Progress: {now}")
    if job.get("estimated_finish"):
        lines.append(f"Estimated finish: {_when(job['estimated_finish'])}")
    if job.get("fine_tuned_model"):
        lines.append(f"Fine-tuned model: `{job['fine_tuned_model']}`")
    if job.get("trained_tokens"):
        lines.append(f"Trained tokens: {job['trained_tokens']}")
    if job.get("error"):
        lines.append(f"Error ({job['error'].get('code')}): {job['error'].get('message')}")
    return "\n\n".join(lines), [[_when(e.get("created_at")), e.get("level"), e.get("message")] for e in events]


# --- what the tab's events call: page values, a service's error shown as its message ---

def listed(url: str, key: str) -> tuple[list[list[Any]], str]:
    """(the job rows, a status line) for the List button."""
    try:
        service = Service.of(url, key)
        rows = job_rows(service)
    except ServiceError as exc:
        return [], f"**{exc}**"
    return rows, f"{len(rows)} job(s) at {service.url}" if rows else f"no jobs yet at {service.url}"


def shown(url: str, key: str, job_id: str) -> tuple[str, list[list[Any]]]:
    """(the job's summary, its events) for the Show button and the timer."""
    if not job_id.strip():
        return "Pick a job: click its row, or type its id.", []
    try:
        return job_view(Service.of(url, key), job_id.strip())
    except ServiceError as exc:
        return f"**{exc}**", []


def cancelled(url: str, key: str, job_id: str) -> tuple[str, list[list[Any]]]:
    """Cancel the job (the service stops its training: it saves a checkpoint first), then show it."""
    if not job_id.strip():
        return "Pick a job to cancel.", []
    try:
        Service.of(url, key).cancel(job_id.strip())
    except ServiceError as exc:
        return f"**{exc}**", []
    return shown(url, key, job_id)
