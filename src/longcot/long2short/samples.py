"""The long model's graded samples on training problems: what shortest rejection sampling and DPO learn from.

``n`` samples per problem from the rollout engine (vLLM), graded by the recipe's ``rewards`` (the same registry
and worker pools as training). One JSON line per sample in ``samples.jsonl``:
``{"id", "sample", "prompt", "response", "tokens", "finish", "correct", "reward", "rewards"}``, with the settings
that produced them in ``samples_meta.json`` beside it, so a second run can reuse them only when they match.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from longcot.config import Recipe
from longcot.jsonl import read_jsonl
from longcot.rewards.errors import check_error_rate
from longcot.rewards.registry import compute_rewards, prepare_rewards
from longcot.rollout.base import SamplingConfig

log = logging.getLogger(__name__)


def sample_meta(recipe: Recipe) -> dict:
    """What determines the samples: compared field by field before a run reuses another run's samples."""
    cfg = recipe.long2short
    s = cfg.samples
    return {"long_model": str(Path(cfg.long_model).resolve()), "n": s.n, "temperature": s.temperature,
            "max_tokens": s.max_tokens or recipe.eval.max_tokens, "num_problems": s.num_problems,
            "seed": recipe.seed, "data_seed": recipe.data.seed, "correctness": cfg.correctness,
            "rewards": [r.name for r in recipe.rewards]}


def pick_problems(rows: list[dict], k: int, seed: int) -> list[dict]:
    """A seeded random subset of ``k`` training rows (all of them when there are fewer)."""
    if k >= len(rows):
        return list(rows)
    return random.Random(f"long2short-{seed}").sample(rows, k)


def draw_samples(engine, tokenizer, task, recipe: Recipe, run_root: Path) -> list[dict]:
    """Sample, grade and return the records (in problem order, then sample index). Each problem is graded and saved
    to ``run_root/samples.partial.jsonl`` as soon as its samples finish, and a rerun of the same recipe into the
    same run directory draws only the problems not saved yet (``longcot.eval.resumable``; with vLLM the very
    samples an uninterrupted run draws). Call :func:`drop_partial` once ``samples.jsonl`` is written."""
    from longcot.eval.resumable import ResumableGeneration

    cfg = recipe.long2short
    s = cfg.samples
    rows = pick_problems(task.train, s.num_problems, recipe.seed)
    prompts = [task.prompt(r, tokenizer) for r in rows]
    sampling = SamplingConfig(n=s.n, temperature=s.temperature, max_tokens=s.max_tokens or recipe.eval.max_tokens,
                              seed=recipe.seed, logprobs=False)
    prepare_rewards(recipe.rewards)

    # A problem is graded as soon as it finishes, but max_error_rate is a rate over many samples (a step's in RL):
    # it is checked over everything graded so far, once that is a chunk's worth, and at the end.
    failed: dict[str, list[tuple[str, str]]] = {}
    graded_n, window = 0, s.chunk_problems * s.n

    def graded(prompt, trajs) -> list[dict]:
        nonlocal graded_n
        compute_rewards(trajs, recipe.rewards, enforce=False)
        for t in trajs:
            for key, why in t.reward_errors.items():
                failed.setdefault(key, []).append((t.prompt_id, why))
        graded_n += len(trajs)
        if graded_n >= window:
            check_error_rate(failed, graded_n, recipe.rewards)
        return to_records(trajs, {prompt.prompt_id: prompt.prompt_text}, cfg.correctness)

    meta = sample_meta(recipe)
    generate = ResumableGeneration(engine, tokenizer, run_root, meta, keys=tuple(meta), rows=graded,
                                   chunk=s.chunk_problems, desc="long2short sampling",
                                   elsewhere="run the recipe under another name=")
    records, _ = generate(prompts, sampling)
    check_error_rate(failed, graded_n, recipe.rewards)
    return records


def drop_partial(run_root: Path) -> None:
    """The samples are in ``samples.jsonl``: an interrupted draw has nothing left to resume."""
    from longcot.eval.resumable import PARTIAL

    (Path(run_root) / PARTIAL).unlink(missing_ok=True)


def to_records(trajs, prompt_text: dict[str, str], correctness: str) -> list[dict]:
    """One record per trajectory; ``correct`` is the ``correctness`` reward component > 0.5."""
    counts: dict[str, int] = {}
    out = []
    for t in trajs:
        if correctness not in t.rewards:
            raise KeyError(f"long2short.correctness: '{correctness}' is not a component of the recipe's rewards "
                           f"(components: {sorted(t.rewards)})")
        i = counts.get(t.prompt_id, 0)
        counts[t.prompt_id] = i + 1
        out.append({"id": t.prompt_id, "sample": i, "prompt": prompt_text[t.prompt_id], "response": t.response_text,
                    "tokens": len(t.response_ids), "finish": t.finish, "correct": t.rewards[correctness] > 0.5,
                    "reward": t.reward, "rewards": dict(t.rewards)})
    return out


def write_samples(records: list[dict], meta: dict, run_root: Path) -> Path:
    path = run_root / "samples.jsonl"
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (run_root / "samples_meta.json").write_text(json.dumps(meta, indent=2))
    return path


def load_samples(path: str | Path, meta: dict) -> list[dict]:
    """Records of another run's ``samples.jsonl``, after checking that they are the samples this recipe asks for."""
    path = Path(path)
    meta_path = path.parent / "samples_meta.json"
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"long2short.samples.reuse: need {path} and {meta_path} (written by a "
                                "shortest_rejection or dpo run)")
    theirs = json.loads(meta_path.read_text())
    diff = {k: (theirs.get(k), v) for k, v in meta.items() if theirs.get(k) != v}
    if diff:
        raise ValueError(f"long2short.samples.reuse: {path} was drawn with other settings "
                         f"(key: theirs, this recipe): {diff}")
    return read_jsonl(path)


def sample_stats(records: list[dict]) -> dict:
    """Accuracy and lengths of the samples (what rejection sampling and DPO start from)."""
    correct = [r for r in records if r["correct"]]
    problems = {r["id"] for r in records}
    solved = {r["id"] for r in correct}
    return {"samples": len(records), "problems": len(problems), "accuracy": len(correct) / max(len(records), 1),
            "problems_solved": len(solved),
            "tokens_mean": sum(r["tokens"] for r in records) / max(len(records), 1),
            "correct_tokens_mean": sum(r["tokens"] for r in correct) / max(len(correct), 1)}
