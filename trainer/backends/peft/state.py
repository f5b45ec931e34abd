"""Where a run of the peft backend is: carried by the loop and saved in every checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already trained on
    trained_tokens: int = 0
    seconds: float = 0.0  # training time before this process started
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    last_eval_loss: float | None = None
    eval_pending: bool = False  # a stop cut this step's validation short (or came before it): --resume runs it first
    history: list[list] = field(default_factory=list)  # (step, loss) of every optimizer step


def state_to_json(state: TrainState) -> dict:
    return asdict(state)


def state_from_json(data: dict) -> TrainState:
    return TrainState(**data)
