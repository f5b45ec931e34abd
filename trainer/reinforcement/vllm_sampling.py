"""grpo's answers sampled by vLLM on an NVIDIA GPU, beside training on the same GPU (colocated), for LoRA runs.

vLLM (paged attention, continuous batching, CUDA graphs) writes the answers many times faster than transformers'
generate, which is most of a grpo step. It holds its own copy of the base model in its share of the GPU's memory
(training.grpo.vllm_gpu_memory) and runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), as TRL's colocate mode
does. The policy is that base plus the LoRA adapter as training has it now, handed over as files: before each batch of
prompts the adapter is saved (a few MB) and given to vLLM as a new LoRARequest, so vLLM's weights are never patched in
place (what a full fine-tune would need, through vLLM internals that change between releases). Hence lora and qlora
runs only (vLLM's base is not quantized: a QLoRA policy samples on the weights it was quantized from), on a base vLLM
loads as it is; trainer/config/rules.py (grpo_vllm_samples_for_lora_runs) refuses the rest, and `auto` takes
transformers for them.

The answers are sampled at the run's temperature and top_p, every token eligible (no top_k) and no repetition penalty
(our SamplingParams; the model's generation_config is not read), up to max_completion_length tokens, ending at the stop
ids transformers' path uses. vLLM computes in its own kernels, so its distribution differs from the training model's
by rounding; the loss takes its ratios against the training model's own log-probabilities of the sampled tokens, as
it does for transformers' samples, with no importance correction for that difference. The rows are built by
sampling.samples_from, as transformers' are.

vLLM failing to start, or on its first batch, hands sampling to transformers' generate under generation: auto (said,
with the reason: start_sampler, loop.sample_batch) and ends the run with the reason under vllm (give_up).
"""
from __future__ import annotations

import gc
import importlib.util
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.errors import UserError
from trainer.generate import stop_ids
from trainer.reinforcement.loop import say
from trainer.reinforcement.sampling import Samples, left_padded, pad_id, samples_from
from trainer.serve.vllm import vllm_max_lora_rank

if TYPE_CHECKING:
    from torch import nn

    from trainer.config import Config
    from trainer.config.sections import TrainingGrpoConfig
    from trainer.data.prompts import Prompt

ADAPTERS_DIR = ".vllm-adapters"  # in the run directory: the adapter of the batch vLLM samples now


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_generation(config: Config, device: str) -> str:
    """What samples this run's answers on this machine, vllm or transformers (training.grpo.generation; auto: vLLM
    where it is installed and can)."""
    wanted = config.training.grpo.generation
    if wanted == "transformers":
        return "transformers"
    if wanted == "vllm":
        if device != "cuda":
            raise UserError("training.grpo.generation is vllm, which samples on NVIDIA GPUs, and this run is on the "
                            f"{device}; set training.grpo.generation: transformers (or auto).")
        if not vllm_installed():
            raise UserError("training.grpo.generation is vllm, and vLLM is not installed here: pip install vllm (it brings "
                            "its own CUDA build of torch), or set training.grpo.generation: transformers.")
        return "vllm"
    from trainer.config.rules import why_vllm_cannot_sample

    return "vllm" if device == "cuda" and vllm_installed() and why_vllm_cannot_sample(config) is None else "transformers"


class VllmSampler:
    """vLLM's engine for one run, and the adapter files it samples with (module docstring)."""

    def __init__(self, config: Config, model: nn.Module, run_dir: Path):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process, beside training
        from vllm import LLM

        adapter = model.peft_config["default"]  # type: ignore[index]  # a peft model: rules allow lora and qlora only
        if getattr(adapter, "use_dora", False):
            raise UserError(f"the adapter this run trains further ({config.model.adapter}) is a DoRA adapter, which vLLM does not "
                            "apply; set training.grpo.generation: transformers.")
        self.folder = run_dir / ADAPTERS_DIR
        shutil.rmtree(self.folder, ignore_errors=True)
        self.batches = 0
        t = config.training
        rank = max([int(adapter.r), *(int(r) for r in (getattr(adapter, "rank_pattern", None) or {}).values())])  # vLLM checks both
        # a batch's answers at once (max_num_seqs); max_num_batched_tokens as TRL sets it: vLLM's default misleads the
        # memory profile it takes at start; bf16 where the GPU has it (a float32 config would be served as float16)
        self.llm = LLM(model=config.model.name_or_path, revision=config.model.revision, trust_remote_code=config.model.trust_remote_code,
                       enable_lora=True, max_loras=1, max_lora_rank=vllm_max_lora_rank(rank),
                       gpu_memory_utilization=t.grpo.vllm_gpu_memory, max_model_len=config.data.max_seq_length,
                       max_num_seqs=t.batch_size * t.grpo.num_generations, max_num_batched_tokens=max(4096, config.data.max_seq_length),
                       dtype="bfloat16" if torch.cuda.is_bf16_supported() else "float16", seed=t.seed, generation_config="vllm")

    def sample(self, model: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], settings: TrainingGrpoConfig, device: str,
               on_answer: Callable[[int, str], None] | None = None) -> Samples:
        """As sampling.sample_answers, by vLLM with the adapter `model` has now; on_answer hears of the answers when
        vLLM has written all of them (it writes them together)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        self.batches += 1
        adapter = self.folder / f"batch-{self.batches}"
        model.save_pretrained(str(adapter))  # type: ignore[operator]  # peft: adapter_config.json and the adapter's weights
        stops, pad, group = stop_ids(tokenizer), pad_id(tokenizer), settings.num_generations
        params = SamplingParams(n=group, temperature=settings.temperature, top_p=settings.top_p,
                                max_tokens=settings.max_completion_length, stop_token_ids=stops, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p.input_ids)) for p in prompts], params,
                                    lora_request=LoRARequest(f"policy-{self.batches}", self.batches, str(adapter)), use_tqdm=False)
        shutil.rmtree(self.folder / f"batch-{self.batches - 1}", ignore_errors=True)  # vLLM has read the one before
        answers = [answer_ids(c, stops, tokenizer.eos_token_id) for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        rows = torch.full((len(answers), max(1, max(len(a) for a in answers))), pad, dtype=torch.long)
        for row, ids in enumerate(answers):
            rows[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        ids, mask = left_padded(prompts, pad, group)
        samples = samples_from(prompts, ids.to(device), mask.to(device), rows.to(device), stops, pad, tokenizer)
        if on_answer is not None:
            for row, text in enumerate(samples.texts):
                on_answer(row, text)
        return samples


    def close(self) -> None:
        """Remove the adapter files (the run's own adapter is in checkpoints/ and model/) and let the engine go, with the
        GPU memory it holds."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.llm = None
        _release_gpu_memory()


def start_sampler(config: Config, model: nn.Module, run_dir: Path) -> VllmSampler | None:
    """vLLM's sampler for this run. Under generation: auto, None when vLLM cannot start here (another release's API,
    too little free GPU memory beside training, ...): transformers' generate samples instead, and the run says why;
    under generation: vllm, that failure ends the run with the reason."""
    try:
        return VllmSampler(config, model, run_dir)
    except UserError:
        raise
    except Exception as error:
        _release_gpu_memory()  # what a half-built engine took
        give_up(config, error, "could not start")
        return None


def _release_gpu_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def give_up(config: Config, error: Exception, when: str) -> None:
    """Under generation: auto, say that vLLM is left for transformers' generate and why; under vllm, refuse to go on."""
    reason = f"{type(error).__name__}: {error}".strip()[:800]
    if config.training.grpo.generation == "vllm":
        raise UserError(f"vLLM {when}: {reason}. Set training.grpo.generation: transformers (or auto, which falls back to it), "
                        "or lower training.grpo.vllm_gpu_memory if the GPU ran out of memory.") from error
    say(f"vLLM {when} ({reason}); sampling with transformers' generate instead (training.grpo.generation: transformers "
        "skips trying vLLM; vllm makes this an error).")


def answer_ids(completion: Any, stops: list[int], eos: int) -> list[int]:
    """An answer's token ids, ending with the token that ended it, which samples_from needs to know the answer ended.
    vLLM's V1 engine keeps it in token_ids, the end-of-sequence token and a stop id alike (stop_reason: None or the
    id); appended here where a version leaves it out."""
    ids = list(completion.token_ids)
    if completion.finish_reason == "stop" and (not ids or ids[-1] not in stops):
        ids.append(completion.stop_reason if isinstance(completion.stop_reason, int) else eos)
    return ids
