"""A job request in OpenAI's shape, and the trainer config it becomes.

OpenAI's hyperparameters map onto trainer's settings (docs/coming-from-openai.md has the table):
  n_epochs                 -> training.epochs
  batch_size               -> training.batch_size
  learning_rate_multiplier -> training.learning_rate = the base model's learning rate (the operator's YAML, else
                              trainer's default) x this
  beta (dpo)               -> training.dpo.beta
  reinforcement: grader    -> training.grpo.graders: [grader] (objective grpo; trainer/graders reads it as OpenAI writes it)
  compute_multiplier       -> training.grpo.num_generations = the operator's (else trainer's default) x this, at least 2
"auto" is resolved as OpenAI documents it, from the number of training examples: n_epochs by the cookbook's rule
(3 epochs, raised towards 100 examples seen or lowered towards 25,000, within 1..25), batch_size ~0.2% of the
examples (1..256), beta 0.1. OpenAI's auto multiplier (0.05-0.2 of a pretraining learning rate) has no counterpart
for a LoRA on an open model: auto is 1, the operator's learning rate as it is; auto compute_multiplier is 1. Anything
else is refused, not ignored: a reinforcement job's eval_interval and eval_samples (grpo measures no validation set
while it trains), a reasoning_effort but "default", a response_format but text (the sampler does not constrain its
answers), and python and score_model graders unless the operator trusts clients' graders (they run code on the
service's machine, or call out from it with its keys).
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from trainer.api.catalog import BaseModel as CatalogModel
from trainer.errors import UserError

Auto = Literal["auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a 400, never silently dropped


class Hyperparameters(_Strict):
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=2)] = "auto"


class ReinforcementHyperparameters(Hyperparameters):
    compute_multiplier: Auto | Annotated[float, Field(gt=0, le=16)] = "auto"
    eval_interval: Auto | Annotated[int, Field(ge=1)] = "auto"
    eval_samples: Auto | Annotated[int, Field(ge=1)] = "auto"
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"


class Supervised(_Strict):
    hyperparameters: Hyperparameters | None = None


class Dpo(_Strict):
    hyperparameters: DpoHyperparameters | None = None


class Reinforcement(_Strict):
    grader: dict[str, Any]  # read by trainer/graders (check_grader): its problems are said at their key paths
    response_format: dict[str, Any] | None = None
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: Reinforcement | None = None


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


Objective = Literal["sft", "dpo", "grpo"]
_METHODS: dict[str, str] = {"sft": "supervised", "dpo": "dpo", "grpo": "reinforcement"}


@dataclass(frozen=True)
class Asked:
    """What a request asks for, before "auto" is resolved."""
    objective: Objective
    hyperparameters: Hyperparameters
    grader: dict[str, Any] | None = None  # grpo: the grader object as the client wrote it, checked


@dataclass(frozen=True)
class Resolved:
    objective: Objective
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None = None  # dpo only
    compute_multiplier: float | None = None  # grpo only
    grader: dict[str, Any] | None = None  # grpo only

    def hyperparameters(self) -> dict[str, Any]:
        """The top-level (legacy) hyperparameters field: OpenAI shows the three every method has, and dpo's beta."""
        out: dict[str, Any] = {"n_epochs": self.n_epochs, "batch_size": self.batch_size, "learning_rate_multiplier": self.learning_rate_multiplier}
        return out if self.beta is None else {**out, "beta": self.beta}

    def method(self) -> dict[str, Any]:
        kind = _METHODS[self.objective]
        if self.objective != "grpo":
            return {"type": kind, kind: {"hyperparameters": self.hyperparameters()}}
        hyperparameters = {**self.hyperparameters(), "compute_multiplier": self.compute_multiplier, "eval_interval": "auto",
                           "eval_samples": "auto", "reasoning_effort": "default"}
        return {"type": kind, kind: {"grader": self.grader, "hyperparameters": hyperparameters, "response_format": None}}


def chosen_hyperparameters(request: CreateJob, trust_graders: bool = False) -> Asked:
    """The objective and the hyperparameters as asked, wherever the request put them (`trust_graders`: the operator
    lets clients' python and score_model graders run)."""
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
        return Asked("sft", given or Hyperparameters())
    if method.type == "dpo":
        if method.supervised is not None or method.reinforcement is not None:
            raise Refused("method.type is dpo: give method.dpo only", "method")
        return Asked("dpo", (method.dpo.hyperparameters if method.dpo else None) or DpoHyperparameters())
    if method.supervised is not None or method.dpo is not None:
        raise Refused("method.type is reinforcement: give method.reinforcement only", "method")
    if method.reinforcement is None:
        raise Refused("method.type is reinforcement: give method.reinforcement.grader, the grader that scores the answers "
                      "(docs/graders.md)", "method.reinforcement")
    return Asked("grpo", _reinforcement_hyperparameters(method.reinforcement), check_grader(method.reinforcement.grader, trust_graders))


_WHERE = "method.reinforcement"


def _reinforcement_hyperparameters(asked: Reinforcement) -> ReinforcementHyperparameters:
    if asked.response_format is not None and asked.response_format.get("type", "text") != "text":
        raise Refused("response_format: trainer's sampler does not constrain the answers to a schema; leave it out, and reward "
                      "answers that match the schema with a grader instead (a builtin grader with metric json_schema)",
                      f"{_WHERE}.response_format")
    given = asked.hyperparameters or ReinforcementHyperparameters()
    for name in ("eval_interval", "eval_samples"):
        if getattr(given, name) != "auto":
            raise Refused(f"{name}: grpo measures no validation set while it trains (compare the tuned model with trainer eval "
                          "afterwards); leave it out or \"auto\"", f"{_WHERE}.hyperparameters.{name}")
    if given.reasoning_effort != "default":
        raise Refused(f"reasoning_effort {given.reasoning_effort}: the open models trained here have no reasoning effort to set; "
                      "leave it out or \"default\"", f"{_WHERE}.hyperparameters.reasoning_effort")
    return given


def check_grader(data: dict[str, Any], trusted: bool) -> dict[str, Any]:
    """The grader object as trainer reads it (every problem at its key path: a 400 naming the first), or Refused for a
    type the operator has not let clients run."""
    from trainer.graders import parse_grader
    from trainer.graders.objects import Multi, Python, ScoreModel

    try:
        grader = parse_grader(data, path=("grader",))
    except UserError as exc:
        first = exc.problems[0]
        raise Refused(f"{len(exc.problems)} problem(s) with the grader: " + "; ".join(str(p) for p in exc.problems[:10]),
                      f"{_WHERE}.{first.path}" if first.path else f"{_WHERE}.grader") from None

    def untrusted(found: Any, path: str) -> None:
        if isinstance(found, Multi):
            for key, sub in found.graders.items():
                untrusted(sub, f"{path}.graders.{key}")
        elif isinstance(found, (Python, ScoreModel)) and not trusted:
            kind = "python" if isinstance(found, Python) else "score_model"
            why = "runs the client's code on the service's machine" if kind == "python" else "calls a model endpoint from the service, with its keys"
            raise Refused(f"a {kind} grader {why}, and this service does not take such graders from clients (its operator allows "
                          "them with `trainer api --trust-graders`); use string_check, text_similarity, multi or builtin", path)

    untrusted(grader, f"{_WHERE}.grader")
    return data


def auto_epochs(examples: int) -> int:
    """OpenAI's default, as its cookbook states it: 3 epochs, adjusted so training sees 100 to 25,000 examples."""
    if examples * 3 < 100:
        return min(25, max(1, 100 // max(examples, 1)))
    if examples * 3 > 25_000:
        return max(1, 25_000 // examples)
    return 3


def resolve(asked: Asked, examples: int) -> Resolved:
    given, objective = asked.hyperparameters, asked.objective
    beta = getattr(given, "beta", "auto") if objective == "dpo" else None
    compute = getattr(given, "compute_multiplier", "auto") if objective == "grpo" else None
    return Resolved(
        objective,
        auto_epochs(examples) if given.n_epochs == "auto" else given.n_epochs,
        max(1, min(256, round(examples * 0.002))) if given.batch_size == "auto" else given.batch_size,
        1.0 if given.learning_rate_multiplier == "auto" else given.learning_rate_multiplier,
        None if beta is None else (0.1 if beta == "auto" else float(beta)),
        None if compute is None else (1.0 if compute == "auto" else float(compute)),
        asked.grader,
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
    if resolved.objective == "grpo":  # the operator's training.grpo settings are for reinforcement jobs only
        grpo = training.setdefault("grpo", {})
        generations = grpo.get("num_generations", _grpo_default("num_generations"))
        grpo["num_generations"] = max(2, min(256, round(generations * (resolved.compute_multiplier or 1.0))))
        grpo["graders"] = [resolved.grader]
    else:
        training.pop("grpo", None)
    config.setdefault("output", {})["dir"] = run_dir
    return yaml.safe_dump(config, sort_keys=False)


def _grpo_default(key: str) -> Any:
    from trainer.config.schema import subschema

    found = subschema(("training", "grpo", key))
    assert found is not None and "default" in found, key
    return found["default"]


# a grader for a config that needs one and has no client's: checking the operator's training.grpo settings at the start
PLACEHOLDER_GRADER = {"type": "string_check", "name": "check", "operation": "eq", "input": "{{ sample.output_text }}",
                      "reference": "{{ item.answer }}"}


def base_config(model: CatalogModel, objective: Objective = "sft") -> str:
    """The YAML of a job on `model` with every setting the operator's (an epoch, no file of a client's): what the
    model's own learning rate and chat template are read from, and the operator's settings checked at the start."""
    resolved = Resolved(objective, 1, 1, 1.0, 0.1 if objective == "dpo" else None, 1.0 if objective == "grpo" else None,
                        PLACEHOLDER_GRADER if objective == "grpo" else None)
    return job_config(model, None, resolved, 0, "train.jsonl", None, "run")
