"""The trainer memory formula (longcot.rl.memory): parameter counts equal the real models', and the estimate
follows the measured step peaks of the tiny MoE (benchmarks/trainer_memory.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from longcot.policies.build import tiny_moe_config
from longcot.rl.memory import GIB, Shape, parameter_counts, training_memory

ROOT = Path(__file__).resolve().parents[2]


def config(name: str):
    if name == "tiny":
        return tiny_moe_config(100)
    d = json.loads((ROOT / "benchmarks" / "configs" / f"{name}.json").read_text())
    d.pop("_source")
    return AutoConfig.for_model(d.pop("model_type"), **d)


@pytest.mark.parametrize("name", ["tiny", "qwen2.5-1.5b", "qwen3-30b-a3b"])
def test_parameter_count_equals_the_model_built_from_the_config(name):
    cfg = config(name)
    with torch.device("meta"):  # the structure only: no memory, no init
        model = AutoModelForCausalLM.from_config(cfg)
    total, active = parameter_counts(Shape.of(cfg))
    assert total == sum(p.numel() for p in model.parameters())
    assert (active < total) == (name != "qwen2.5-1.5b")
    if name == "qwen3-30b-a3b":
        assert 3.2e9 < active < 3.5e9  # "A3B": about 3.3B active


def test_estimate_follows_the_measured_tiny_moe_step_peaks():
    """Within 20% of every measured 4k-32k point, both with and without checkpointing (fp32, CPU)."""
    points = json.loads((ROOT / "benchmarks" / "results" / "trainer_memory.json").read_text())["points"]
    checked = 0
    for p in points:
        if p["variant"] not in ("plain", "ckpt+chunk") or p["response_tokens"] < 4096 or "step_peak_mib" not in p:
            continue
        ckpt = p["variant"] == "ckpt+chunk"
        est = training_memory(tiny_moe_config(100), precision="fp32", micro_batch_tokens=p["response_tokens"] + 16,
                              gradient_checkpointing=ckpt, logit_chunk_tokens=1024 if ckpt else 0)
        measured = p["step_peak_mib"] * 2**20
        assert 0.8 * measured <= est.activations + est.lm_head <= 1.2 * measured, (p, est.gib())
        checked += 1
    assert checked >= 6


def test_strategy_and_knobs_move_the_right_parts():
    cfg = config("qwen3-30b-a3b")
    single = training_memory(cfg, strategy="single", micro_batch_tokens=8192, gradient_checkpointing=True)
    fsdp = training_memory(cfg, strategy="fsdp", ranks=8, micro_batch_tokens=8192, gradient_checkpointing=True)
    assert fsdp.states == pytest.approx(single.states / 8) and single.states / GIB > 400  # 16 bytes x 30.5B
    plain = training_memory(cfg, strategy="fsdp", ranks=8, micro_batch_tokens=8192, gradient_checkpointing=False,
                            logit_chunk_tokens=0)
    assert plain.activations > 10 * fsdp.activations and plain.lm_head > 5 * fsdp.lm_head
    assert training_memory(cfg, strategy="ddp", ranks=8).states > single.states  # buckets on top
    with pytest.raises(ValueError, match="strategy"):
        training_memory(cfg, strategy="zero3")
