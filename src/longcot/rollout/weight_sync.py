"""Helpers for pushing trainer weights into a rollout engine.

Kept apart from the engines so the trainer can reuse them (e.g. to time or log a sync) and so the vLLM
MoE workaround lives in one documented place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

# Wrappers add these to parameter names: DDP/accelerate ("module."), torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter name as the checkpoint spells it, with wrapper prefixes removed."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name.replace("._orig_mod.", ".")


def checkpoint_named_params(named_params: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs with clean names and detached tensors, ready for a loader.

    Lazy on purpose: vLLM's loader consumes the iterator layer by layer, so no second full copy of the
    weights is ever held.
    """
    for name, tensor in named_params:
        yield clean_name(name), tensor.detach()


def repack_fused_moe(model: nn.Module) -> int:
    """Re-run the fused-MoE experts' weight post-processing after an in-place reload; return modules fixed.

    Why: vLLM 0.32's ``UnquantizedFusedMoEMethod`` treats a second ``process_weights_after_loading`` as a
    "weight update" and skips ``moe_kernel.fused_experts.process_weights_after_loading``. On CPU that hook
    is what prepacks w13/w2 into the grouped-GEMM layout, so after ``reload_weights`` the experts read
    checkpoint-layout data as if it were prepacked and logprobs come out wrong with no error. Calling the
    hook again redoes exactly what the first load did. For experts whose hook is a no-op (Triton on GPU)
    this costs nothing. ``tests/test_weight_sync.py`` asserts both the failure and the fix.
    """
    fixed = 0
    for module in model.modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        if experts is not None and hasattr(experts, "process_weights_after_loading"):
            experts.process_weights_after_loading(module)
            fixed += 1
    return fixed
