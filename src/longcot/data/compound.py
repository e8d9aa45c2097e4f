"""Compound arithmetic: problems made of named parts that can be solved apart, for parallel-agent RL (PARL).

A problem names parts and asks for a combination of them, e.g.::

    a=(7+5)*2-3; b=9*2-4; c=a*2+1; find a+b-c

``a`` and ``b`` are independent; ``c`` depends on ``a``. With ``combine="tuple"`` the problem is *wide*: it asks
for every part's value, ``a=4+2+5; b=2-8+6; ...; h=1+5; find (a, b, ..., h)``, answered ``(11, 0, ..., 6)``
(graded as an ordered tuple). Each part is a short chain a small model gets right on its own; the whole serial
trace is long, and the answer is only right if every part is (docs/agents.md, "The wide task").
Two solver traces exist for each problem:

* serial: the policy works every part itself, one step per line (with ``check`` lines, the long
  chain-of-thought that parallelism can take off the critical path), then combines them;
* decomposed: the orchestrator spawns one sub-agent per part (``[c after a: {a}*2+1]`` for a dependent part),
  waits, reads ``[a = 21]`` ... and combines the answers (docs/agents.md).

The SFT warm-up mixes them (``decomposed_frac``, mostly serial), so RL starts from a policy that can
decompose but rarely does. Sub-agents see a part as an ordinary arithmetic prompt (``Q: (7+5)*2-3``) and
answer with the same step-by-step trace; the warm-up teaches that role too. Deterministic by seed; the
held-out split shares no problem text with training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from longcot.agents.protocol import WAIT, format_results, round_notes
from longcot.data.arith import _apply, disjoint_split

NAMES = "abcdefghijklmnop"  # part names; a problem has at most this many parts


@dataclass(frozen=True)
class CompoundSpec:
    min_parts: int = 3
    max_parts: int = 4
    min_ops: int = 2  # operations per part
    max_ops: int = 3
    max_operand: int = 9
    ops: str = "+-*"  # operations parts may use ("+-" keeps every value small: easier for a tiny model)
    dep_prob: float = 0.25  # chance that a part (after the first) starts from an earlier part's value
    recheck: bool = True  # a "check" line after every step of a part (the work sub-agents take over)
    decomposed_frac: float = 0.2  # fraction of SFT traces that decompose
    combine: str = "sum"  # the answer: "sum" (a signed sum of the parts) or "tuple" (every part's value, in order)
    roles: str = ""  # comma-separated sub-agent roles; each SFT directive picks one at random ([a@calc: ...]);
    # the first is the default role: its directives name no role

    def __post_init__(self) -> None:
        if not 2 <= self.min_parts <= self.max_parts <= len(NAMES):
            raise ValueError(f"compound task: need 2 <= min_parts <= max_parts <= {len(NAMES)}, "
                             f"got {self.min_parts}, {self.max_parts}")
        if not self.ops or set(self.ops) - set("+-*"):
            raise ValueError(f"compound task: ops must be a non-empty subset of '+-*', got {self.ops!r}")
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"compound task: need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if self.combine not in ("sum", "tuple"):
            raise ValueError(f"compound task: combine must be 'sum' or 'tuple', got {self.combine!r}")
        if self.combine == "tuple" and self.min_parts < 3:
            raise ValueError("compound task: combine='tuple' needs min_parts >= 3 (a pair reads as an interval)")
        if self.roles and not all(r.strip().isidentifier() for r in self.roles.split(",")):
            raise ValueError(f"compound task: roles must be comma-separated names like 'worker,calc', "
                             f"got {self.roles!r}")

    @property
    def role_names(self) -> list[str]:
        return [r.strip() for r in self.roles.split(",")] if self.roles else []


def chain(start: str, start_value: int, ops: list[tuple[str, int]], recheck: bool) -> tuple[str, list[str], int]:
    """Expression text (standard precedence, parentheses as needed), solver lines and value of a chain."""
    expr, acc, prev, lines = start, start_value, None, []
    for op, x in ops:
        if op == "*" and prev in ("+", "-"):
            expr = f"({expr})"
        expr = f"{expr}{op}{x}"
        new = _apply(acc, op, x)
        lines.append(f"{acc}{op}{x}={new}")
        if recheck:
            lines.append(f"check {acc}{op}{x}: {new} ok")
        acc, prev = new, op
    return expr, lines, acc


def _ops(rng: random.Random, spec: CompoundSpec) -> list[tuple[str, int]]:
    out = []
    for _ in range(rng.randint(spec.min_ops, spec.max_ops)):
        op = rng.choice(spec.ops)
        out.append((op, rng.randint(2, 3) if op == "*" else rng.randint(1, spec.max_operand)))
    return out


def make_compound(rng: random.Random, spec: CompoundSpec) -> dict:
    """One problem row: text, gold answer, parts (for both traces) and which trace the SFT uses."""
    parts = []
    for j in range(rng.randint(spec.min_parts, spec.max_parts)):
        name = NAMES[j]
        if j and rng.random() < spec.dep_prob:
            dep = parts[rng.randrange(j)]
            start, value, deps = dep["name"], dep["value"], [dep["name"]]
        else:
            value = rng.randint(1, spec.max_operand)
            start, deps = str(value), []
        ops = _ops(rng, spec)
        expr, _, result = chain(start, value, ops, spec.recheck)
        parts.append({"name": name, "expr": expr, "deps": deps, "ops": ops, "start": start, "value": result})
    if spec.combine == "tuple":
        signs = []
        combo = "(" + ", ".join(p["name"] for p in parts) + ")"
        answer = _tuple(p["value"] for p in parts)
    else:
        signs = ["+"] + [rng.choice("+-") for _ in parts[1:]]
        combo = "".join(f"{s}{p['name']}" if i else p["name"] for i, (s, p) in enumerate(zip(signs, parts,
                                                                                               strict=True)))
        answer = sum(p["value"] * (1 if s == "+" else -1) for s, p in zip(signs, parts, strict=True))
    problem = "; ".join(f"{p['name']}={p['expr']}" for p in parts) + f"; find {combo}"
    row = {"problem": problem, "answer": str(answer), "parts": parts, "signs": signs, "subtasks": subtasks(parts),
           "decompose": rng.random() < spec.decomposed_frac, "difficulty": sum(len(p["ops"]) for p in parts)}
    if spec.role_names:  # drawn last: a spec without roles makes the same problems as before roles existed
        row["roles"] = [rng.choice(spec.role_names) for _ in parts]
        row["default_role"] = spec.role_names[0]
    return row


def subtasks(parts: list[dict]) -> list[list[str]]:
    """Per part, the sub-agent tasks that are exactly that part (the fidelity check ``subtasks``): its expression,
    or for a part that starts from another, both ``{a}-4`` and the form with a's value filled in (``-9-4``)."""
    values = {p["name"]: p["value"] for p in parts}
    return [[part_task(p), p["expr"].replace(p["start"], str(values[p["start"]]), 1)] if p["deps"] else [p["expr"]]
            for p in parts]


def _tuple(values) -> str:
    return "(" + ", ".join(str(v) for v in values) + ")"


def _combine_lines(row: dict) -> list[str]:
    """The combination's steps (a running signed sum; none for a tuple, whose answer lists the values)."""
    if not row["signs"]:
        return []
    acc, lines = row["parts"][0]["value"], []
    for s, p in zip(row["signs"][1:], row["parts"][1:], strict=True):
        new = acc + p["value"] if s == "+" else acc - p["value"]
        lines.append(f"{acc}{s}{p['value']}={new}")
        acc = new
    return lines


def part_task(part: dict) -> str:
    """The sub-agent task for a part: a dependency's value is the ``{name}`` placeholder."""
    return part["expr"].replace(part["start"], "{" + part["start"] + "}", 1) if part["deps"] else part["expr"]


def subagent_solution(expr: str, spec: CompoundSpec) -> str:
    """What a sub-agent writes for ``Q: expr``: the arithmetic steps, then ``\\boxed{value}``."""
    from longcot.data.arith import evaluate_expression

    ops, start = _parse_chain(expr)
    _, lines, value = chain(str(start), start, ops, spec.recheck)
    assert value == evaluate_expression(expr), expr
    return "\n".join(lines) + f"\n\\boxed{{{value}}}"


def _parse_chain(expr: str) -> tuple[list[tuple[str, int]], int]:
    """Inverse of :func:`chain` for a concrete expression (parentheses dropped, leading sign kept)."""
    flat = expr.replace("(", "").replace(")", "")
    i = 1 if flat.startswith("-") else 0
    while i < len(flat) and flat[i].isdigit():
        i += 1
    start, ops = int(flat[:i]), []
    while i < len(flat):
        op, j = flat[i], i + 1
        while j < len(flat) and flat[j].isdigit():
            j += 1
        ops.append((op, int(flat[i + 1:j])))
        i = j
    return ops, start


def serial_solution(row: dict, spec: CompoundSpec) -> str:
    """Every part worked in turn (``a:`` ... ``a=21``), then the combination and ``\\boxed{}``."""
    lines = []
    for p in row["parts"]:
        start_value = _value(row, p["start"]) if p["deps"] else int(p["start"])
        _, steps, value = chain(str(start_value), start_value, p["ops"], spec.recheck)
        lines += [f"{p['name']}:", *steps, f"{p['name']}={value}"]
    return "\n".join([*lines, *_combine_lines(row), f"\\boxed{{{row['answer']}}}"])


def decomposed_turns(row: dict, max_rounds: int | None = None) -> tuple[str, str, str]:
    """(first turn, observation, final turn) of the orchestrator's decomposed solution; with ``roles`` in the row,
    each directive names its part's role (``[a@calc: 7-9-7]``) unless it is the default role. The decomposition
    is one round: given ``max_rounds`` (the recipe's ``agents.max_rounds``), the observation carries whatever notice
    the agent driver appends after that round, so the final turn is trained on the context it will see."""
    spawns = []
    roles = row.get("roles") or [None] * len(row["parts"])
    for p, role in zip(row["parts"], roles, strict=True):
        after = f" after {','.join(p['deps'])}" if p["deps"] else ""
        at = f"@{role}" if role and role != row.get("default_role") else ""
        spawns.append(f"[{p['name']}{at}{after}: {part_task(p)}]")
    first = "\n".join(spawns) + "\n" + WAIT
    obs = format_results([(p["name"], str(p["value"])) for p in row["parts"]],
                         [] if max_rounds is None else round_notes(1, max_rounds))
    final = "\n".join([*_combine_lines(row), f"\\boxed{{{row['answer']}}}"])
    return first, obs, final


def sft_pairs(rows: list[dict], prompt_text, spec: CompoundSpec,
              max_rounds: int | None = None) -> list[tuple[str, str]]:
    """(prompt, completion) pairs: serial rows give one; decomposed rows give the orchestrator's two turns
    (the observation sits in the second prompt, so it is never a training target) and one per sub-agent.
    ``max_rounds``: the agents' round limit the observation must reflect (:func:`decomposed_turns`; None: no
    agents)."""
    pairs = []
    for row in rows:
        prompt = prompt_text(row)
        if not row["decompose"]:
            pairs.append((prompt, serial_solution(row, spec)))
            continue
        first, obs, final = decomposed_turns(row, max_rounds)
        pairs += [(prompt, first), (prompt + first + obs, final)]
        for p in row["parts"]:
            expr = p["expr"].replace(p["start"], str(_value(row, p["start"])), 1) if p["deps"] else p["expr"]
            pairs.append((prompt_text({"problem": expr}), subagent_solution(expr, spec)))
    return pairs


def _value(row: dict, name: str) -> int:
    return next(p["value"] for p in row["parts"] if p["name"] == name)


def make_compound_split(spec: CompoundSpec, n_train: int, n_heldout: int, seed: int) -> tuple[list, list]:
    """Deterministic (train, heldout) rows with disjoint problem texts."""
    return disjoint_split(lambda rng: make_compound(rng, spec), n_train, n_heldout, f"compound-{{}}-{seed}",
                          f"{spec}: raise max_parts, max_ops or max_operand")


def build_compound_task(cfg):
    """A :class:`~longcot.data.Task` from a recipe's ``data`` section; compound knobs in ``data.task_options``."""
    from longcot.data import Task
    from longcot.data.templates import render_prompt

    known = set(CompoundSpec.__dataclass_fields__)
    unknown = set(cfg.task_options) - known
    if unknown:
        raise KeyError(f"data.task_options: unknown compound option(s) {sorted(unknown)}; valid: {sorted(known)}")
    spec = CompoundSpec(**{"max_operand": cfg.max_operand, **cfg.task_options})
    train, heldout = make_compound_split(spec, cfg.num_train, cfg.num_heldout, cfg.seed)

    def pairs(rows: list[dict], tokenizer, agents=None) -> list[tuple[str, str]]:
        max_rounds = agents.max_rounds if agents is not None and agents.enabled else None
        return sft_pairs(rows, lambda row: render_prompt(cfg.template, row, tokenizer), spec, max_rounds)

    return Task(train, heldout, cfg.template, sft_pairs=pairs)
