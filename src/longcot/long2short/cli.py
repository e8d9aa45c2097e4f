"""``longcot long2short RECIPE [key=value ...]`` and ``longcot long2short report RUN_DIR... [--out PNG]``."""

from __future__ import annotations

import argparse
import sys


def run_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="longcot long2short",
                                 description="Make a short-CoT model from a long-CoT checkpoint (docs/long2short.md).")
    ap.add_argument("recipe", help="a recipe with a long2short section (recipes/tiny/long2short-srs.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=1 long2short.merge.long_weight=0.7")
    ap.add_argument("--dry-run", action="store_true", help="validate and print the resolved recipe, then exit")
    ap.add_argument("--resume", action="store_true", help="method rl: continue runs/<name>/ from its latest state")
    ap.add_argument("--overwrite", action="store_true", help="method rl: delete an existing runs/<name>/ first")
    ns = ap.parse_intermixed_args(argv)  # flags may come before, between or after the overrides
    from longcot.config import ConfigError, load_recipe, to_dict
    from longcot.long2short.run import check_recipe

    try:
        recipe = load_recipe(ns.recipe, ns.overrides)
        check_recipe(recipe)
        if recipe.long2short.method == "rl":
            from longcot.long2short.rl import check_rl_recipe

            check_rl_recipe(recipe)
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as e:
        print(f"longcot long2short: {e}", file=sys.stderr)
        return 2
    if ns.dry_run:
        import yaml

        print(yaml.safe_dump(to_dict(recipe), sort_keys=False))
        return 0
    from longcot.errors import InputError, RunStoppedError, message
    from longcot.long2short.run import run_long2short
    from longcot.rewards.errors import RewardError, RewardSetupError
    from longcot.run.preemption import Preempted

    again = " ".join(["longcot long2short", ns.recipe, *ns.overrides])
    again = f"{again} --resume" if recipe.long2short.method == "rl" else again  # the others redo their run
    try:
        block = run_long2short(recipe, resume=ns.resume, overwrite=ns.overwrite)["long2short"]
    except ConfigError as e:  # e.g. method rl on an existing run without --resume / --overwrite
        print(f"longcot long2short: {e}", file=sys.stderr)
        return 2
    except (InputError, RewardError, RewardSetupError, RunStoppedError) as e:
        print(f"longcot long2short: {message(e)}", file=sys.stderr)
        return 1
    except Preempted as e:  # method rl: SIGTERM / Ctrl-C during RL saved a training state
        print(f"longcot long2short: {e}\ncontinue with: {again}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # drawn samples are kept (samples.partial.jsonl), so are rl's states
        print(f"\nlongcot long2short: interrupted; continue with: {again}", file=sys.stderr)
        return 130
    for label in ("long", "short", "result"):
        if block.get(label):
            ev, n = block[label], block[label]["correct_len_mean"]
            print(f"{label:>6}: accuracy {ev['accuracy']:.3f}, mean correct length "
                  f"{'- (nothing correct)' if n is None else f'{n:.1f} tokens'}")
    change = block["correct_len_change"]
    print(f"correct length {'-' if change is None else f'{100 * change:+.0f}%'}, accuracy "
          f"{100 * block['accuracy_change']:+.1f} points; model: {block['result_model']}")
    print(f"run directory: {recipe.out_dir}/{recipe.name}")
    return 0


def report_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="longcot long2short report",
                                 description="Token-efficiency table and plot of long2short runs.")
    ap.add_argument("runs", nargs="+", help="run directories of `longcot long2short`")
    ap.add_argument("--out", help="write the token-efficiency plot (PNG) here")
    ap.add_argument("--json", help="write the table (rows) as JSON here")
    ns = ap.parse_args(argv)
    from longcot.long2short.report import report

    try:
        print(report(ns.runs, ns.out, ns.json))
    except (FileNotFoundError, ValueError) as e:
        print(f"longcot long2short report: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    return run_main(argv)
