"""A job request in OpenAI's shape, and the trainer config it becomes.

OpenAI's hyperparameters map onto trainer's settings (docs/coming-from-openai.md has the table):
  n_epochs                 -> training.epochs
  batch_size               -> training.batch_size
  learning_rate_multiplier -> training.learning_rate = the base model's learning rate (the operator's YAML, else
                              trainer's default) x this
  beta (dpo)               -> training.dpo.beta
"auto" is resolved as OpenAI documents it, from the number of training examples: n_epochs by the cookbook's rule
(3 epochs, raised towards 100 examples seen or lowered towards 25,000, within 1..25), batch_size ~0.2% of the
examples (1..256), beta 0.1. OpenAI's auto multiplier (0.05-0.2 of a pretraining learning rate) has no counterpart
for a LoRA on an open model: auto is 1, the operator's learning rate as it is. Anything else is refused, not ignored.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from trainer.api.catalog import BaseModel as CatalogModel

Auto = Literal["auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a 400, never silently dropped


class Hyperparameters(_Strict):
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=2)] = "auto"


class Supervised(_Strict):
    hyperparameters: Hyperparameters | None = None


class Dpo(_Strict):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: dict[str, Any] | None = None


class CreateJob(_Strict):
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None  # the legacy place: supervised only
    method: Method | None = None
    suffix: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9._-]*$")] | None = None  # part of the model name: no ':'
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    integrations: list[dict[str, Any]] | None = None


class Refused(ValueError):
    """A request the service cannot carry out: (message, param) for OpenAI's 400."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Resolved:
    objective: Literal["sft", "dpo"]
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None  # dpo only

    def hyperparameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_epochs": self.n_epochs, "batch_size": self.batch_size, "learning_rate_multiplier": self.learning_rate_multiplier}
        return out if self.beta is None else {**out, "beta": self.beta}

    def method(self) -> dict[str, Any]:
        kind = "supervised" if self.objective == "sft" else "dpo"
        return {"type": kind, kind: {"hyperparameters": self.hyperparameters()}}


def chosen_hyperparameters(request: CreateJob) -> tuple[Literal["sft", "dpo"], Hyperparameters]:
    """The objective and the hyperparameters as asked, wherever the request put them."""
    if request.integrations:
        raise Refused("integrations (Weights & Biases) are not supported here: every job's metrics are in its events "
                      "and its result file", "integrations")
    method = request.method
    if method is not None and request.hyperparameters is not None:
        raise Refused("give the hyperparameters in method, not also at the top level (the legacy place)", "hyperparameters")
    if method is None or method.type == "supervised":
        if method is not None and (method.dpo is not None or method.reinforcement is not None):
            raise Refused("method.type is supervised: give method.supervised only", "method")
        given = method.supervised.hyperparameters if method is not None and method.supervised else request.hyperparameters
        return "sft", given or Hyperparameters()
    if method.type == "dpo":
        if method.supervised is not None or method.reinforcement is not None:
            raise Refused("method.type is dpo: give method.dpo only", "method")
        return "dpo", (method.dpo.hyperparameters if method.dpo else None) or DpoHyperparameters()
    raise Refused("method.type reinforcement is not supported by this service yet; use supervised or dpo", "method.type")


def auto_epochs(examples: int) -> int:
    """OpenAI's default, as its cookbook states it: 3 epochs, adjusted so training sees 100 to 25,000 examples."""
    if examples * 3 < 100:
        return min(25, max(1, 100 // max(examples, 1)))
    if examples * 3 > 25_000:
        return max(1, 25_000 // examples)
    return 3


def resolve(objective: Literal["sft", "dpo"], given: Hyperparameters, examples: int) -> Resolved:
    beta = getattr(given, "beta", "auto") if objective == "dpo" else None
    return Resolved(
        objective,
        auto_epochs(examples) if given.n_epochs == "auto" else given.n_epochs,
        max(1, min(256, round(examples * 0.002))) if given.batch_size == "auto" else given.batch_size,
        1.0 if given.learning_rate_multiplier == "auto" else given.learning_rate_multiplier,
        None if beta is None else (0.1 if beta == "auto" else float(beta)),
    )


def new_seed() -> int:
    return random.randrange(2**31)


def job_config(model: CatalogModel, base_learning_rate: float | None, resolved: Resolved, seed: int, train: str,
               validation: str | None, run_dir: str) -> str:
    """The YAML of the job's `trainer --config`: the operator's settings for the model, the request laid over them
    (`base_learning_rate` None: the learning rate is left as the operator's YAML or trainer's default has it)."""
    config: dict[str, Any] = copy.deepcopy(model.config)
    config.setdefault("model", {})["name_or_path"] = model.path
    data = config.setdefault("data", {})
    data["train"], data["validation"] = train, validation
    if validation is None:
        data["validation_split"] = 0  # as at OpenAI: no validation file, no validation
    training = config.setdefault("training", {})
    training.update(objective=resolved.objective, epochs=resolved.n_epochs, batch_size=resolved.batch_size, seed=seed)
    if base_learning_rate is not None:
        training["learning_rate"] = base_learning_rate * resolved.learning_rate_multiplier
    if resolved.beta is not None:
        training.setdefault("dpo", {})["beta"] = resolved.beta
    config.setdefault("output", {})["dir"] = run_dir
    return yaml.safe_dump(config, sort_keys=False)


def base_config(model: CatalogModel) -> str:
    """The YAML of a job on `model` with every setting the operator's (a supervised epoch, no file of a client's): what
    the model's own learning rate and chat template are read from."""
    return job_config(model, None, Resolved("sft", 1, 1, 1.0, None), 0, "train.jsonl", None, "run")
