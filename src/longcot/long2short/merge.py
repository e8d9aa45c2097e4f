"""Model merging (k1.5 long2short): a weighted average of checkpoints, tensor by tensor, with no training.

k1.5 averages the weights of a long-CoT and a short-CoT model. Averaging only makes sense between models that
share an architecture and a basin (fine-tuned from one parent), so every tensor must match in name, shape and
dtype; anything else is an error, not a best effort. Floating tensors are accumulated in float64 and rounded
once to their dtype, so a 0.5/0.5 merge equals ``(a + b) / 2`` exactly; non-floating tensors (integer buffers)
must be equal in every input and are copied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

# config fields that may differ between two checkpoints of one architecture
_CONFIG_BOOKKEEPING = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"}


def merge_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]],
                      weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * state_dicts[i]`` for every tensor; the weights must sum to 1."""
    if len(state_dicts) < 2 or len(state_dicts) != len(weights):
        raise ValueError(f"merge: need >= 2 state dicts and one weight each, got {len(state_dicts)} and "
                         f"{len(weights)} weights")
    if not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
        raise ValueError(f"merge: weights must sum to 1, got {list(weights)} (sum {sum(weights)})")
    keys = list(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], 1):
        if set(sd) != set(keys):
            missing, extra = sorted(set(keys) - set(sd)), sorted(set(sd) - set(keys))
            raise ValueError(f"merge: checkpoint {i} has different tensors (missing {missing[:5]}, extra {extra[:5]})")
    merged = {}
    for key in keys:
        tensors = [sd[key] for sd in state_dicts]
        first = tensors[0]
        for i, t in enumerate(tensors[1:], 1):
            if t.shape != first.shape or t.dtype != first.dtype:
                raise ValueError(f"merge: '{key}' is {tuple(first.shape)} {first.dtype} in checkpoint 0 but "
                                 f"{tuple(t.shape)} {t.dtype} in checkpoint {i}")
        if first.is_floating_point():
            acc = sum(w * t.detach().to(torch.float64) for w, t in zip(weights, tensors, strict=True))
            merged[key] = acc.to(first.dtype)
        else:
            if any(not torch.equal(first, t) for t in tensors[1:]):
                raise ValueError(f"merge: non-floating tensor '{key}' differs between checkpoints")
            merged[key] = first.clone()
    return merged


def check_same_architecture(configs: Sequence) -> None:
    """Raise unless the model configs agree on everything but bookkeeping (names, versions)."""
    ref = {k: v for k, v in configs[0].to_dict().items() if k not in _CONFIG_BOOKKEEPING}
    for i, cfg in enumerate(configs[1:], 1):
        other = {k: v for k, v in cfg.to_dict().items() if k not in _CONFIG_BOOKKEEPING}
        diff = sorted(k for k in set(ref) | set(other) if ref.get(k) != other.get(k))
        if diff:
            raise ValueError(f"merge: checkpoint {i} has another architecture; config keys that differ: {diff[:8]}")


def merge_checkpoints(paths: Sequence[str | Path], weights: Sequence[float], out_dir: str | Path,
                      dtype: str = "float32") -> Path:
    """Merge HF checkpoints into ``out_dir`` (config, generation config and tokenizer of ``paths[0]``)."""
    from longcot.policies.load import load_policy, load_tokenizer

    models = [load_policy(p, dtype) for p in paths]
    check_same_architecture([m.config for m in models])
    merged = merge_state_dicts([m.state_dict() for m in models], weights)
    base = models[0]
    base.load_state_dict(merged)
    out = Path(out_dir)
    base.save_pretrained(out)
    load_tokenizer(paths[0]).save_pretrained(out)
    return out
