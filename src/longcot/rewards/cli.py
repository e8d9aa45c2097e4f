"""``longcot score`` (grade existing generations, no model) and ``longcot rewards list``.

Input rows (JSONL): ``{"id", "response", "answer"}`` for math, ``{"id", "response", "tests"}`` for code;
optional ``finish`` (default "stop"), ``group`` (group id for group rewards such as ``k15_length``; default
the row's own id), ``response_ids`` (token ids; else ``--tokenizer`` makes them) or ``length`` (token count for
length rewards; default the number of characters). Every other key is kept in ``sample.meta`` for custom
rewards. Output rows keep ``id`` and add ``reward`` (weighted sum), every component, and ``reward_error``
(reward name -> "Type: message") on a row where a reward failed. Everything is checked before any grading
(:func:`longcot.config.validate.validate_score`): the output may not be the input, a token-level reward
(``repetition``) needs token ids.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longcot.errors import InputError
from longcot.jsonl import read_jsonl
from longcot.record import Trajectory
from longcot.rewards import REWARDS, RewardSpec, compute_rewards


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_specs(names: str, sets: list[str], weights: list[str]) -> list[RewardSpec]:
    """``--rewards a,b --set a.key=value --weight b=0.5`` as reward specs (names and options are checked by
    :func:`~longcot.config.validate.validate_score`, after ``--reward-module`` imports)."""
    specs = {n: RewardSpec(n) for n in (x.strip() for x in names.split(",")) if n}
    if not specs:
        raise InputError("--rewards: give at least one reward name (longcot rewards list)")
    for item, what in [(s, "set") for s in sets] + [(w, "weight") for w in weights]:
        key, eq, value = item.partition("=")
        name, _, option = key.rpartition(".") if what == "set" else (key, "", "")
        if not eq or name not in specs:
            raise InputError(f"--{what} {item!r}: expected {'NAME.KEY=VALUE' if what == 'set' else 'NAME=W'} "
                             f"with NAME one of {sorted(specs)}")
        if what == "set":
            specs[name].options[option] = _value(value)
        else:
            try:
                specs[name].weight = float(value)
            except ValueError:
                raise InputError(f"--weight {item!r}: the weight must be a number") from None
    return list(specs.values())


def row_to_sample(row: dict, where: str, tokenizer=None) -> Trajectory:
    """One input row as a :class:`Trajectory` (see module docstring). Without ``response_ids`` or a tokenizer,
    the ids are ``length`` (or the character count) placeholders: enough for length rewards, and
    :func:`~longcot.config.validate.validate_score` refuses token-level rewards in that case."""
    for key in ("id", "response"):
        if key not in row:
            raise InputError(f"{where}: missing key '{key}' (rows need id, response, and answer or tests)")
    response = str(row["response"])
    if row.get("response_ids"):
        ids = list(row["response_ids"])
    elif tokenizer is not None:
        ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    else:
        ids = [0] * int(row.get("length", len(response)))
    meta = {k: v for k, v in row.items() if k not in ("response", "response_ids")}
    return Trajectory(prompt_id=str(row["id"]), group_id=str(row.get("group", row["id"])), prompt_ids=[],
                      response_ids=list(ids), rollout_logprobs=[], finish=row.get("finish", "stop"),
                      response_text=response, meta=meta)


def read_rows(path: Path) -> list[dict]:
    try:
        return read_jsonl(path)
    except ValueError as e:
        raise InputError(str(e)) from None


def score_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="longcot score", description="Grade existing generations (no model).")
    p.add_argument("--data", required=True, type=Path, help="input JSONL")
    p.add_argument("--rewards", required=True,
                   help="comma-separated reward names, module:function or path/to/file.py:function")
    p.add_argument("--out", required=True, type=Path, help="output JSONL (never the input)")
    p.add_argument("--set", action="append", default=[], metavar="NAME.KEY=VALUE", help="reward option")
    p.add_argument("--weight", action="append", default=[], metavar="NAME=W", help="reward weight (default 1)")
    p.add_argument("--tokenizer", help="tokenise responses that have no response_ids (needed by repetition)")
    p.add_argument("--reward-module", action="append", default=[], metavar="MODULE",
                   help="import a module of @reward functions first (a name found in the cwd, or a .py path)")
    args = p.parse_args(argv)
    from longcot.config.validate import validate_score

    try:
        specs = parse_specs(args.rewards, args.set, args.weight)
        rows = read_rows(args.data) if args.data.is_file() else []
        have_ids = all(r.get("response_ids") for r in rows) if rows else None
        validate_score(args.data, args.out, specs, args.reward_module, args.tokenizer, have_ids)
        tok = None
        if args.tokenizer:
            from longcot.policies.load import load_tokenizer

            tok = load_tokenizer(args.tokenizer)
        samples = [row_to_sample(r, f"{args.data}:{i + 1}", tok) for i, r in enumerate(rows)]
    except InputError as e:
        print(f"longcot score: {e}", file=sys.stderr)
        return 2
    from longcot.rewards.errors import RewardError, RewardSetupError

    try:
        metrics = compute_rewards(samples, specs, enforce=False)  # a failed row is marked, the others still count
    except (RewardError, RewardSetupError) as e:  # on_error: raise, or a reward that cannot run here
        print(f"longcot score: {e}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    with args.out.open("w") as f:
        for s in samples:
            row = {"id": s.meta["id"], "reward": s.reward, **s.rewards}
            if s.reward_errors:
                row["reward_error"] = dict(s.reward_errors)
                failed += 1
            f.write(json.dumps(row) + "\n")
    summary = {"rows": len(samples), "rows_with_reward_error": failed, **metrics}
    print(json.dumps(summary, indent=1, sort_keys=True))
    if failed:
        print(f"longcot score: {failed} of {len(samples)} rows had a reward error (scored as on_error says; see "
              f"'reward_error' in {args.out})", file=sys.stderr)
    return 0


def list_main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="longcot rewards list", description="Registered rewards.").parse_args(argv)
    from longcot.rewards.registry import load_builtin_rewards

    load_builtin_rewards()
    for name in REWARDS.names():
        fn = REWARDS.get(name)
        kind = "group " if getattr(fn, "per_group", False) else "sample"
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        print(f"{name:16s} {kind}  {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m longcot.rewards.cli score ...`` / ``... list``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["score"]:
        return score_main(argv[1:])
    if argv[:1] == ["list"]:
        return list_main(argv[1:])
    print("usage: python -m longcot.rewards.cli {score,list} ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
