"""Shared by the benchmarks: an SFT'd starting checkpoint, built once and reused while its settings match."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path


def prepare_policy(recipe, cache: Path) -> Path:
    """The shared starting checkpoint: tiny MoE + the recipe's SFT, reused when the settings match (the whole
    data section: a change of task, e.g. the teacher's slips, must not reuse an old checkpoint)."""
    from longcot.data import build_task
    from longcot.pipeline import run_sft_stage
    from longcot.policies.build import build_tiny_moe
    from longcot.policies.load import load_policy, load_tokenizer
    from longcot.run import RunDir

    key = {"build_seed": recipe.model.build_seed, "sft": vars(recipe.sft), "data": dataclasses.asdict(recipe.data),
           "seed": recipe.seed}
    stamp = cache / "sft_key.json"
    sft_path = cache / "checkpoints" / "sft"
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(key)) \
            and (sft_path / "config.json").is_file():
        return sft_path
    run = RunDir(cache)
    init = build_tiny_moe(cache / "init", seed=recipe.model.build_seed)
    tok = load_tokenizer(init)
    model = load_policy(init)
    t0 = time.perf_counter()
    run_sft_stage(recipe, model, tok, build_task(recipe.data), run)
    logging.info("SFT checkpoint in %.0fs", time.perf_counter() - t0)
    stamp.write_text(json.dumps(key))
    return sft_path
