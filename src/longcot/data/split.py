"""Held-out rows of a dataset task: from their own source or split, or a seeded random fraction.

Never the head of the training file: a file's first rows are often its easiest or one source's, and "the first
10%" silently changes when the file does. A random fraction also keeps every copy of a held-out problem out of
training (files repeat problems). The choice is recorded (``split.json`` in the run directory) with the held-out
ids, and held-out problems that also appear in training (from a separate eval source) are counted and reported.
"""

from __future__ import annotations

import logging
import math
import random

from longcot.data.answers import require_answers
from longcot.data.sources import load_rows

log = logging.getLogger(__name__)


def problem_key(row: dict) -> str:
    """A row's problem text with whitespace normalised: how repeats and held-out overlaps are recognised."""
    return " ".join(str(row.get("problem", "")).split())


def heldout_source(cfg, eval_cfg) -> tuple[str, str, dict, str] | None:
    """(source, split, column mapping, its recipe key) of the held-out rows when the recipe names them (eval.source
    and/or eval.split), else None (a random fraction of the training rows)."""
    if eval_cfg is None or not (eval_cfg.source or eval_cfg.split):
        return None
    source = eval_cfg.source or cfg.source
    split = eval_cfg.split or ("train" if eval_cfg.source else cfg.split)
    return source, split, eval_cfg.columns or cfg.columns, "eval.columns" if eval_cfg.columns else "data.columns"


def dataset_split(cfg, eval_cfg, needs: tuple[str, ...]) -> tuple[list[dict], list[dict], dict]:
    """(train, heldout, info) for ``data.task: dataset`` (``cfg`` = the data section, ``eval_cfg`` = eval)."""
    if not cfg.source:
        raise ValueError("data.task=dataset needs data.source (hub name, .jsonl or .parquet path)")
    rows, skipped = _load(cfg.source, cfg.split, cfg.columns, needs, "data.columns", cfg.skip_missing_answers)
    train_info = {"source": cfg.source, "split": cfg.split, "skipped_no_answer": skipped}
    named = heldout_source(cfg, eval_cfg)
    if named is not None:
        source, split, columns, key = named
        if source == cfg.source and split == cfg.split:
            raise ValueError(f"eval.source/eval.split name the training data itself ({source}, split {split}): "
                             "held-out rows would be training rows; give another split or file, or leave both "
                             "empty for a random eval.fraction of the training source")
        heldout, _ = _load(source, split, columns, needs, key, cfg.skip_missing_answers)
        train = rows
        info = {"how": "eval.source" if eval_cfg.source else "eval.split", "source": source, "split": split}
    else:
        fraction = eval_cfg.fraction if eval_cfg is not None else 0.1
        n_held = min(cfg.num_heldout, math.floor(fraction * len(rows)))
        if n_held < 1 or n_held >= len(rows):
            raise ValueError(f"{cfg.source}: {len(rows)} rows, eval.fraction={fraction} and data.num_heldout="
                             f"{cfg.num_heldout} leave {n_held} held-out rows; need at least 1 and a training row "
                             "(or give eval.source / eval.split)")
        chosen = set(random.Random(f"heldout-{cfg.seed}").sample(range(len(rows)), n_held))
        heldout = [r for i, r in enumerate(rows) if i in chosen]
        held_keys = {problem_key(r) for r in heldout} - {""}
        # a file that repeats a problem would otherwise put its copies on both sides of the split
        train = [r for i, r in enumerate(rows) if i not in chosen and problem_key(r) not in held_keys]
        dropped = len(rows) - len(heldout) - len(train)
        if dropped:
            log.info("%s: %d training rows repeat a held-out problem and are left out of training", cfg.source,
                     dropped)
        info = {"how": "fraction", "source": cfg.source, "split": cfg.split, "fraction": fraction,
                "max_rows": cfg.num_heldout, "seed": cfg.seed, "train_rows_dropped_as_repeats": dropped}
    ids = [r["id"] for r in heldout]
    if len(set(ids)) != len(ids):
        raise ValueError(f"held-out rows of {info['source']} have duplicate ids: map data.columns.id (or "
                         "eval.columns.id) to a unique column")
    seen = {problem_key(r) for r in train}
    overlap = sum(problem_key(r) in seen for r in heldout if problem_key(r))
    if overlap:
        log.warning("%d of %d held-out problems also appear in the training data (%s): held-out accuracy "
                    "overstates generalisation", overlap, len(heldout), cfg.source)
    info.update(rows=len(heldout), overlap_with_train=overlap, ids=ids)
    return train, heldout, {"heldout": info, "train": {**train_info, "rows": len(train)}}


def _load(source: str, split: str, columns: dict, needs: tuple[str, ...], key: str, skip: bool
          ) -> tuple[list[dict], int]:
    """Rows with every needed field; a missing gold answer (``None`` or empty, which a JSON loader fills in for
    rows that lack the key) is an error, or with ``data.skip_missing_answers`` a skip that is counted."""
    rows = load_rows(source, split, columns, require=tuple(f for f in needs if f != "answer"), key=key)
    if "answer" not in needs:
        return rows, 0
    kept, skipped = require_answers(rows, source, skip, "data.skip_missing_answers")
    return kept, len(skipped)
