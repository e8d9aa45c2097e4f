"""``longcot`` command line: train | eval | score | report | rewards list | long2short.

Each subcommand lives in the module that owns it; this file only dispatches, so ``longcot --help`` stays
fast (no torch import).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

USAGE = """longcot <command> [args]        (longcot --version; python -m longcot works too)

commands:
  train RECIPE [key=value ...]   run a training recipe (build -> SFT -> RL -> eval) into runs/<name>/
  eval RECIPE [key=value ...]    AIME-style evaluation (or --responses FILE to re-score generations)
  score --data F --rewards N     grade existing generations with registered rewards
  report RUN_DIR                 summarise a run: evals, time breakdown per step, curves
  rewards list                   list registered reward functions
  long2short RECIPE [key=value]  a short-CoT model from a long-CoT checkpoint (merge | shortest_rejection | dpo | rl)
  long2short report RUN_DIR...   token-efficiency table and plot of long2short runs
"""


def train_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="longcot train", description="Run a training recipe.")
    ap.add_argument("recipe", help="path to a recipe YAML (recipes/tiny/arith-moe.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rl.steps=10 seed=1")
    ap.add_argument("--dry-run", action="store_true",
                    help="check everything the recipe names (rewards, losses, data, files, this machine's sandbox), "
                         "print the resolved recipe and the plan (memory, tokens, data mapping), then exit")
    ap.add_argument("--reward-module", action="append", default=[], metavar="MODULE",
                    help="import a module of @reward functions first (adds to the recipe's reward_modules)")
    ap.add_argument("--resume", action="store_true",
                    help="continue runs/<name>/ from its latest training state (docs/recipes.md 'Resuming a run')")
    ap.add_argument("--overwrite", action="store_true", help="delete an existing runs/<name>/ and start afresh")
    ns = ap.parse_intermixed_args(argv)  # --dry-run may come before or after the overrides
    from longcot.config import ConfigError, load_recipe, to_dict
    from longcot.config.loader import add_reward_modules
    from longcot.config.validate import validate_recipe
    from longcot.errors import InputError, RunStoppedError, message
    from longcot.rewards.errors import RewardError, RewardSetupError

    try:
        recipe = load_recipe(ns.recipe, ns.overrides)
        add_reward_modules(recipe, ns.reward_module)
        if ns.dry_run:  # a run validates in pipeline.train, before any work (one sandbox probe, not two)
            validate_recipe(recipe)
    except InputError as e:
        print(f"longcot train: {e}", file=sys.stderr)
        return 2
    if ns.dry_run:
        import yaml

        print(yaml.safe_dump(to_dict(recipe), sort_keys=False))
        from longcot.plan import dry_run

        return dry_run(recipe)
    from longcot.data.columns import ColumnError
    from longcot.data.sft_data import SFTDataError
    from longcot.pipeline import train
    from longcot.run.preemption import Preempted
    from longcot.run.state import StateError
    from longcot.run.trackers import TrackerError

    try:
        summary = train(recipe, resume=ns.resume, overwrite=ns.overwrite)
    except (ConfigError, StateError, ColumnError, SFTDataError, TrackerError) as e:  # before work: a bad mapping,
        print(f"longcot train: {message(e)}", file=sys.stderr)  # no SFT target, a missing tracker, an existing run
        return 2
    except (InputError, RewardError, RewardSetupError, RunStoppedError) as e:  # bad data rows, a broken reward,
        print(f"longcot train: {message(e)}", file=sys.stderr)  # diverging updates, a dead trainer: no traceback
        return 1
    except Preempted as e:
        print(f"longcot train: {e}\ncontinue with: {_resume_command(ns)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside a step that saves (an evaluation, the engine's start), or a second one
        print(f"\nlongcot train: interrupted; finished stages and training states are kept\n"
              f"continue with: {_resume_command(ns)}", file=sys.stderr)
        return 130
    ev = summary.get("eval", {})
    for stage in ("initial", "after_sft", "after_rl"):
        if stage in ev:
            print(f"{stage}: accuracy {ev[stage]['accuracy']:.3f} (n={ev[stage]['n']})")
    print(f"run directory: {recipe.out_dir}/{recipe.name}")
    return 0


def _resume_command(ns: argparse.Namespace) -> str:
    modules = [f"--reward-module {m}" for m in ns.reward_module]
    return " ".join(["longcot train", ns.recipe, *ns.overrides, *modules, "--resume"])


def _dispatch(cmd: str, rest: list[str]) -> int:
    if cmd == "train":
        return train_main(rest)
    if cmd == "eval":
        from longcot.eval.cli import main as eval_main

        return eval_main(rest)
    if cmd == "score":
        from longcot.rewards.cli import score_main

        return score_main(rest)
    if cmd == "report":
        from longcot.report import main as report_main

        return report_main(rest)
    if cmd == "long2short":
        from longcot.long2short.cli import main as long2short_main

        return long2short_main(rest)
    if cmd == "rewards":
        if rest[:1] != ["list"]:
            print("usage: longcot rewards list", file=sys.stderr)
            return 2
        from longcot.rewards.cli import list_main

        return list_main(rest[1:])
    from longcot.registry import did_you_mean

    commands = ["train", "eval", "score", "report", "rewards", "long2short"]
    print(f"longcot: unknown command '{cmd}'{did_you_mean(cmd, commands)}\n\n{USAGE}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from longcot import __version__

        print(f"longcot {__version__}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # vLLM's log level is chosen here, the same for every run: importing TRL (SFT, DPO) would set ERROR for the whole
    # process when unset (trl/_compat.py), hiding vLLM's warnings only in runs that ran SFT before the engine
    # started. The start-up lines that report nothing wrong are filtered instead (longcot.rollout.vllm._VLLM_NOISE).
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return _dispatch(argv[0], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
