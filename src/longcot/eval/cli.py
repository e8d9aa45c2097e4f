"""``longcot eval``: run an eval recipe against a model, or re-score someone's generations.

    longcot eval recipes/eval/aime24.yaml model=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    longcot eval recipes/eval/aime24.yaml --model runs/demo/checkpoints/final --n 4 --max-tokens 256
    longcot eval --responses samples.jsonl --dataset aime24.jsonl --k 1,4,16 --out runs/rescore

Flags are shorthands for recipe keys (``--top-p 0.9`` is ``top_p=0.9``); ``key=value`` overrides any key,
and later ones win (flags are applied after the positional overrides).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from longcot.eval.config import EvalConfig, load_eval_config

# flag -> recipe key
FLAG_KEYS = {
    "model": "model", "engine": "engine", "dataset": "dataset.source", "split": "dataset.split",
    "limit": "dataset.limit", "template": "template", "prompt": "prompt", "n": "n", "temperature": "temperature",
    "top_p": "top_p", "top_k": "top_k", "max_tokens": "max_tokens", "seed": "seed", "grader": "grader",
    "out": "out", "dtype": "dtype",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="longcot eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", help="[RECIPE.yaml] [key=value ...]")
    p.add_argument("--model", help="local path or hub name")
    p.add_argument("--engine", choices=["vllm", "hf", "auto"])
    p.add_argument("--dataset", help="hub name or .jsonl/.json/.parquet file (dataset.source)")
    p.add_argument("--split")
    p.add_argument("--limit", type=int, help="first N problems only")
    p.add_argument("--template", choices=["chat", "raw"])
    p.add_argument("--prompt", help="prompt pattern with {problem}")
    p.add_argument("--n", type=int, help="samples per problem")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", dest="top_p", type=float)
    p.add_argument("--top-k", dest="top_k", type=int)
    p.add_argument("--max-tokens", dest="max_tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--k", help="comma-separated k for pass@k and maj@k, e.g. 1,4,16")
    p.add_argument("--grader", help="reward name or module:function")
    p.add_argument("--dtype")
    p.add_argument("--out", help="output directory")
    p.add_argument("--responses", help="re-score mode: a jsonl of {id, response} rows; no model is loaded")
    p.add_argument("--tokenizer", help="re-score mode: count response tokens with this tokenizer")
    p.add_argument("--allow-missing", action="store_true", help="re-score mode: allow problems with no responses")
    p.add_argument("--reward-module", action="append", default=[], metavar="MODULE",
                   help="import a module of @reward functions first (a custom --grader); a name or a .py path")
    return p.parse_intermixed_args(argv)  # flags may come before, between or after the overrides


def config_from_args(ns: argparse.Namespace) -> EvalConfig:
    from longcot.config import ConfigError
    from longcot.config.loader import add_reward_modules

    recipe = None
    overrides = []
    for a in ns.args:
        if "=" in a:
            overrides.append(a)
        elif recipe is None:
            recipe = a
        else:
            raise ConfigError(f"two recipes given ('{recipe}', '{a}'); overrides are key=value")
    for flag, key in FLAG_KEYS.items():
        value = getattr(ns, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    if ns.k is not None:
        overrides.append(f"k=[{ns.k}]")
    cfg = load_eval_config(recipe, overrides)
    add_reward_modules(cfg, ns.reward_module)
    return cfg


def run_rescore(cfg: EvalConfig, ns: argparse.Namespace) -> dict:
    from longcot.eval.dataset import load_problems_counted
    from longcot.eval.rescore import read_responses, rescore
    from longcot.eval.run import grader_for

    rows, skipped = load_problems_counted(cfg.dataset)
    gold = {r["id"]: r["answer"] for r in rows}
    tok = None
    if ns.tokenizer:
        from longcot.policies.load import load_tokenizer

        tok = load_tokenizer(ns.tokenizer)
    info = {"responses": ns.responses, "dataset": cfg.dataset.source, "grader": cfg.grader, "k": cfg.k,
            "grade_truncated": cfg.grade_truncated}
    return rescore(read_responses(ns.responses), gold, grader_for(cfg), cfg.k, cfg.out, tok,
                   allow_missing=ns.allow_missing, info=info, skipped=skipped)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ns = parse_args(sys.argv[1:] if argv is None else argv)
    from longcot.config.validate import validate_eval
    from longcot.errors import InputError

    try:  # a user error (config, file, row) is one line, no traceback
        cfg = config_from_args(ns)
        validate_eval(cfg, responses=ns.responses, tokenizer=ns.tokenizer)
        if ns.responses:
            summary = run_rescore(cfg, ns)
        else:
            from longcot.eval.run import run_eval

            summary = run_eval(cfg)
    except InputError as e:
        print(f"longcot eval: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the problems finished so far are on disk (longcot.eval.resumable)
        kept = "" if ns.responses else ("; the problems already generated are kept: run the same command again to "
                                        "generate only the rest")
        print(f"\nlongcot eval: interrupted{kept}", file=sys.stderr)
        return 130
    shown = {k: v for k, v in summary["metrics"].items() if "@" in k or k in ("tokens_per_s", "truncation_rate")}
    print(json.dumps({"n": summary["n"], "metrics": shown, "out": cfg.out}, indent=2))
    return 0


def config_dict(cfg: EvalConfig) -> dict:
    """The recipe as plain data for ``summary.json`` and the report."""
    d = dataclasses.asdict(cfg)
    d["dataset"] = cfg.dataset.source
    return d


if __name__ == "__main__":
    sys.exit(main())
