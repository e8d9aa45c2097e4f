"""``longcot score`` (grade existing generations, no model) and ``longcot rewards list``.

Input rows (JSONL): ``{"id", "response", "answer"}`` for math, ``{"id", "response", "tests"}`` for code;
optional ``finish`` (default "stop"), ``group`` (group id for group rewards such as ``k15_length``; default
the row's own id), ``response_ids`` or ``length`` (token count for length rewards; default the number of
characters). Every other key is kept in ``sample.meta`` for custom rewards. Output rows keep ``id`` and add
``reward`` (weighted sum) and every component.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longcot.jsonl import read_jsonl
from longcot.record import Trajectory
from longcot.rewards import REWARDS, RewardSpec, compute_rewards


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_specs(names: str, sets: list[str], weights: list[str]) -> list[RewardSpec]:
    """``--rewards a,b --set a.key=value --weight b=0.5`` as reward specs (unknown names/keys fail early)."""
    specs = {n: RewardSpec(n) for n in (x.strip() for x in names.split(",")) if n}
    if not specs:
        raise SystemExit("--rewards: give at least one reward name (longcot rewards list)")
    for item, what in [(s, "set") for s in sets] + [(w, "weight") for w in weights]:
        key, eq, value = item.partition("=")
        name, _, option = key.rpartition(".") if what == "set" else (key, "", "")
        if not eq or name not in specs:
            raise SystemExit(f"--{what} {item!r}: expected {'NAME.KEY=VALUE' if what == 'set' else 'NAME=W'} "
                             f"with NAME one of {sorted(specs)}")
        if what == "set":
            specs[name].options[option] = _value(value)
        else:
            specs[name].weight = float(value)
    for spec in specs.values():
        spec.resolve()  # unknown reward or option: a clear error before any grading
    return list(specs.values())


def row_to_sample(row: dict, where: str) -> Trajectory:
    """One input row as a :class:`Trajectory` (see module docstring)."""
    for key in ("id", "response"):
        if key not in row:
            raise SystemExit(f"{where}: missing key '{key}' (rows need id, response, and answer or tests)")
    response = str(row["response"])
    ids = row.get("response_ids") or [0] * int(row.get("length", len(response)))
    meta = {k: v for k, v in row.items() if k not in ("response", "response_ids")}
    return Trajectory(prompt_id=str(row["id"]), group_id=str(row.get("group", row["id"])), prompt_ids=[],
                      response_ids=list(ids), rollout_logprobs=[], finish=row.get("finish", "stop"),
                      response_text=response, meta=meta)


def read_rows(path: Path) -> list[dict]:
    try:
        return read_jsonl(path)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def score_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="longcot score", description="Grade existing generations (no model).")
    p.add_argument("--data", required=True, type=Path, help="input JSONL")
    p.add_argument("--rewards", required=True, help="comma-separated reward names or module:function")
    p.add_argument("--out", required=True, type=Path, help="output JSONL")
    p.add_argument("--set", action="append", default=[], metavar="NAME.KEY=VALUE", help="reward option")
    p.add_argument("--weight", action="append", default=[], metavar="NAME=W", help="reward weight (default 1)")
    args = p.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"--data: {args.data} does not exist")
    specs = parse_specs(args.rewards, args.set, args.weight)
    samples = [row_to_sample(r, f"{args.data}:{i + 1}") for i, r in enumerate(read_rows(args.data))]
    metrics = compute_rewards(samples, specs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for s in samples:
            f.write(json.dumps({"id": s.meta["id"], "reward": s.reward, **s.rewards}) + "\n")
    summary = {"rows": len(samples), **metrics}
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


def list_main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="longcot rewards list", description="Registered rewards.").parse_args(argv)
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
