"""``longcot train RECIPE --dry-run``: the plan of a job before it runs, from the recipe and the model's config.

Parameters, memory per device (trainer weights, gradients, optimizer state and activations at the recipe's trace
length; the engine's weights and the KV-cache room left), tokens per step, and the data mapping applied to the
first row of each source. Nothing is downloaded but, when online, a model's ``config.json``; the formulas are in
:mod:`longcot.plan.memory`.
"""

from __future__ import annotations

from dataclasses import dataclass

from longcot.plan.data_preview import SourcePreview, preview_sources
from longcot.plan.memory import (
    DTYPE_BYTES,
    GB,
    ModelShape,
    activation_bytes_per_token,
    engine_memory,
    shape_of,
    trainer_memory,
)
from longcot.plan.model_config import ModelConfigError, find_model_config, to_pretrained_config

__all__ = ["ModelConfigError", "Plan", "dry_run", "make_plan"]


@dataclass
class Plan:
    recipe: object
    shape: ModelShape
    config_from: str
    architecture: str
    sources: list[SourcePreview]
    prompt_tokens: int
    prompt_tokens_measured: bool

    @property
    def trace_tokens(self) -> int:
        return self.prompt_tokens + self.recipe.rollout.max_tokens

    def format(self) -> str:
        return "\n".join(_lines(self))


def _prompt_tokens(sources: list[SourcePreview], tokenizer) -> tuple[int, bool]:
    """Prompt length of the first training row: measured with the tokenizer, else ~4 characters per token."""
    first = sources[0]
    if first.prompt_text is not None and tokenizer is not None:
        return len(tokenizer(first.prompt_text, add_special_tokens=False).input_ids), True
    text = "".join(m["content"] for m in first.messages or []) or first.fields.get("problem", "")
    return max(1, len(text) // 4 + 16), False


def make_plan(recipe) -> Plan:
    """Everything :func:`Plan.format` prints; raises on what would fail later (config, columns, SFT data)."""
    if recipe.tracking.log_with != "none":
        from longcot.run.trackers import check_available

        check_available(recipe.tracking.log_with)
    cfg, where = find_model_config(recipe.model)
    shape = shape_of(to_pretrained_config(cfg))
    sources, tok = preview_sources(recipe)
    tokens, measured = _prompt_tokens(sources, tok)
    arch = ",".join(cfg.get("architectures") or [cfg.get("model_type", "?")])
    return Plan(recipe, shape, where, arch, sources, tokens, measured)


def dry_run(recipe) -> int:
    """Print the plan (exit status 0), or what would fail (status 2): a column path, a missing file, no model
    config, no SFT target, a tracker that is not installed."""
    import sys

    from longcot.run.trackers import TrackerError

    try:
        print(make_plan(recipe).format())
    except (ValueError, KeyError, OSError, TrackerError) as e:
        print(f"longcot train --dry-run: {e}", file=sys.stderr)
        return 2
    return 0


def _gb(x: float | None) -> str:
    return "?" if x is None else f"{x / GB:,.1f} GiB" if x >= 0.1 * GB else f"{x / 1024**2:,.1f} MiB"


def _b(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"


def _lines(p: Plan) -> list[str]:
    r, s = p.recipe, p.shape
    hw = r.hardware
    hw_text = hw.name or (f"{hw.devices} device(s) x {hw.memory_gb:g} GiB" if hw.memory_gb else "not stated")
    moe = f", {s.experts} experts top-{s.experts_per_token} in {s.moe_layers} layers" if s.experts else ""
    out = [f"plan: {r.name} (hardware: {hw_text})",
           f"model: {r.model.path or 'tiny MoE'} [{p.architecture}] config from {p.config_from}",
           f"  parameters {_b(s.params)} (active per token {_b(s.active_params)}), {s.layers} layers, hidden "
           f"{s.hidden}, vocab {s.vocab}{moe}"]
    how = "measured" if p.prompt_tokens_measured else "estimated at ~4 chars/token: tokenizer not available offline"
    seqs = r.rl.prompts_per_step * r.rollout.n
    out += [f"trace: prompt {p.prompt_tokens} tokens (first training row, {how}) + rollout.max_tokens "
            f"{r.rollout.max_tokens} = {p.trace_tokens} tokens",
            f"tokens per step: {r.rl.prompts_per_step} prompts x {r.rollout.n} samples = {seqs} sequences; at most "
            f"{seqs * r.rollout.max_tokens:,} response tokens, {seqs * p.trace_tokens:,} tokens in all"]
    out += _trainer_lines(p) + _engine_lines(p) + _data_lines(p)
    return out


def _trainer_lines(p: Plan) -> list[str]:
    r, s = p.recipe, p.shape
    w = DTYPE_BYTES[r.model.dtype]  # compute precision of activations; weights, gradients, AdamW: float32
    micro = r.rl.micro_batch_size * p.trace_tokens
    if r.rl.micro_batch_tokens:  # the token budget caps a micro-batch; a longer trace is one of its own
        micro = min(micro, max(r.rl.micro_batch_tokens, p.trace_tokens))
    ckpt, chunked = r.rl.gradient_checkpointing, r.rl.logit_chunk_tokens > 0
    shards = r.trainer.ranks if r.trainer.strategy == "fsdp" else r.hardware.devices
    cols = [("unsharded", 1)] + ([(f"FSDP x {shards}", shards)] if shards > 1 else [])
    ref = bool(r.rl.kl_coef)
    mems = [trainer_memory(s, w, n, micro, ckpt, reference=ref, master_bytes=4, chunked_logits=chunked)
            for _, n in cols]
    head = f"trainer memory per device (float32 master weights and AdamW, {r.model.dtype} activations; micro-batch " \
           f"{micro:,} tokens{', checkpointing' if ckpt else ''}{', chunked log-probs' if chunked else ''}):"
    out = [head, "  " + " " * 14 + "".join(f"{name:>16}" for name, _ in cols)]
    for part in ("weights", "gradients", "optimizer") + (("reference",) if ref else ()) + ("activations", "total"):
        out.append(f"  {part:<14}" + "".join(f"{_gb(getattr(m, part)):>16}" for m in mems))
    if not (ckpt and chunked):
        lean = micro * activation_bytes_per_token(s, w, checkpointing=True, chunked_logits=True)
        out.append(f"  with rl.gradient_checkpointing and rl.logit_chunk_tokens, activations would be {_gb(lean)}")
    if r.hardware.memory_gb:
        cap = r.hardware.memory_gb * GB
        shared = r.cluster.backend == "local"  # ray: the trainer actor has GPUs of its own (cluster.trainer_gpus)
        engine = _engine_share(r) * cap if shared else 0.0
        where = f"next to the engine's {_gb(engine)} (the local backend shares each device)" if shared else \
            "on the trainer's own devices (cluster.backend=ray)"
        out.append(f"  fits in {r.hardware.memory_gb:g} GiB {where}: "
                   + ", ".join(f"{name} {'yes' if m.total + engine <= cap else 'NO'}"
                               for (name, _), m in zip(cols, mems, strict=True)))
    return out


def _engine_share(r) -> float:
    """The fraction of a device the rollout engine reserves (its gpu_memory_utilization)."""
    opts = r.rollout.engine_options
    return float(opts.get("gpu_memory_utilization", _engine_default("gpu_memory_utilization", r.rollout.engine)))


def _engine_default(option: str, engine: str) -> float:
    """The engine's own default for an option (VLLMEngine's gpu_memory_utilization is 0.5, not vLLM's 0.9)."""
    if engine != "vllm":
        return 0.9
    import inspect

    from longcot.rollout.vllm import VLLMEngine

    return inspect.signature(VLLMEngine.__init__).parameters[option].default


def _engine_lines(p: Plan) -> list[str]:
    r, s = p.recipe, p.shape
    opts = r.rollout.engine_options
    tp = int(opts.get("tensor_parallel_size", 1))
    util = _engine_share(r)
    dtype = str(opts.get("dtype", r.model.dtype))
    mem = r.hardware.memory_gb * GB if r.hardware.memory_gb else None
    e = engine_memory(s, DTYPE_BYTES.get(dtype, 2), tp, mem, util)
    line = (f"engine ({r.rollout.engine}, tensor_parallel_size {tp}, {dtype}): weights {_gb(e.weights)} per device, "
            f"KV cache {e.kv_bytes_per_token / 1024:,.1f} KB per token")
    tokens = e.kv_tokens()
    if tokens is None:
        import os

        cpu_kv = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")) * GB
        tokens = int(cpu_kv // e.kv_bytes_per_token)
        room = f"  KV room: hardware.memory_gb unset; on CPU VLLM_CPU_KVCACHE_SPACE={cpu_kv / GB:g} GiB holds"
    else:
        room = f"  KV room: {r.hardware.memory_gb:g} GiB x gpu_memory_utilization {util} - weights = {_gb(e.kv_room)}:"
    return [line, f"{room} {tokens:,} tokens = {tokens // max(p.trace_tokens, 1):,} sequences of {p.trace_tokens} "
                  f"tokens at once (a step has {r.rl.prompts_per_step * r.rollout.n})"]


def _data_lines(p: Plan) -> list[str]:
    out = ["data (the mapping applied to the first row of each source):"]
    for src in p.sources:
        mapping = ", ".join(f"{k} <- {v}" for k, v in src.mapping.items()) or "standard column names"
        out.append(f"  {src.role}: {src.source} [{mapping}]")
        out += [f"    {k}: {v}" for k, v in src.fields.items()]
        if src.messages is not None:
            out.append(f"    chat messages: {src.messages!r}"[:400])
        if src.prompt_text is not None:
            out.append(f"    prompt as the model sees it: {src.prompt_text!r}"[:600])
        elif src.messages is not None:
            out.append("    prompt text: not rendered (the tokenizer and its chat template are not available offline)")
        if src.gold_check:
            out.append(f"    gold: {src.gold_check}")
    return out
