"""Rollout engines: ``build_engine("vllm" | "hf", model_path, tokenizer, **options)``.

Engines are registered by name in :data:`ENGINES`; a ``module.path:attr`` kind imports a user's engine
class or factory with the same signature. The heavy imports (vLLM, transformers) happen only when an
engine is built.
"""

from __future__ import annotations

from typing import Any

from longcot.registry import Registry, check_options
from longcot.rollout.base import Engine, Prompt, SamplingConfig

ENGINES: Registry = Registry("rollout engine")


@ENGINES.register("vllm")
def _build_vllm(model_path: str, tokenizer: Any, **options: Any) -> Engine:
    from longcot.rollout.vllm import VLLMEngine

    # Unknown options go on to vllm.LLM (its engine arguments), which rejects what it does not know.
    return VLLMEngine(model_path, tokenizer, **options)


@ENGINES.register("hf")
def _build_hf(model_path: str, tokenizer: Any, **options: Any) -> Engine:
    from longcot.rollout.hf import HFEngine

    options.pop("seed", None)  # an engine-wide seed means nothing here: every request carries its own seeds
    check_options(HFEngine.__init__, options, "rollout engine 'hf'")
    return HFEngine(model_path, tokenizer, **options)


def build_engine(kind: str, model_path: str, tokenizer: Any, **options: Any) -> Engine:
    """The engine named ``kind`` ("vllm" or "hf", or ``module:attr``) for the model at ``model_path``."""
    if not isinstance(kind, str) or not kind:
        raise KeyError(f"rollout engine kind must be a non-empty string like 'vllm' or 'hf', got {kind!r}")
    return ENGINES.get(kind)(model_path, tokenizer, **options)


__all__ = ["ENGINES", "Engine", "Prompt", "SamplingConfig", "build_engine"]
