"""Test cases of published code datasets, in the one form the ``code`` reward reads.

The reward (:mod:`longcot.rewards.code`) takes ``{"kind": "io", "cases": [{"input", "output"}, ...]}`` (stdin ->
stdout) or ``{"kind": "assert", "prompt", "test", "entry_point"}`` (HumanEval style). Published sets store tests
differently, often as a JSON string inside a column:

* DeepCoder / LiveCodeBench / PrimeIntellect style: a list ``[{"input": ..., "output": ..., "testtype": "stdin"}]``;
* APPS / TACO ``input_output`` style: ``{"inputs": [...], "outputs": [...]}``;
* longcot's own form, passed through.

Call-based cases (``testtype: functional``, ``fn_name``) call a function with parsed arguments, a protocol the
reward does not implement: they are an error here, not a silent zero at training time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from longcot.data.columns import ColumnError, preview


def _io(inputs: Sequence, outputs: Sequence, where: str) -> dict:
    if len(inputs) != len(outputs) or not inputs:
        raise ColumnError(f"{where}{len(inputs)} inputs for {len(outputs)} outputs; need the same number, >= 1")
    return {"kind": "io", "cases": [{"input": _text(i), "output": _text(o)} for i, o in zip(inputs, outputs,
                                                                                                   strict=True)]}


def _text(value: Any) -> str:
    if isinstance(value, list):  # TACO sometimes stores a case as a list of lines
        return "\n".join(map(str, value))
    return str(value)


def normalize_tests(value: Any, where: str = "") -> dict:
    """``value`` (a dict, a list, or either as a JSON string) as the ``code`` reward's tests dict."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ColumnError(f"{where}a tests string must be JSON ({e}); got {preview(value, 160)}") from None
    if isinstance(value, Mapping):
        if value.get("kind") in ("io", "assert"):
            return dict(value)
        if "fn_name" in value:
            raise ColumnError(f"{where}call-based tests (fn_name={value['fn_name']!r}) are not supported by the "
                              "code reward; keep stdin/stdout problems only")
        if "inputs" in value and "outputs" in value:
            return _io(value["inputs"], value["outputs"], where)
    if isinstance(value, Sequence) and value and all(isinstance(c, Mapping) for c in value):
        kinds = {str(c.get("testtype", "stdin")) for c in value}
        if kinds - {"stdin"}:
            raise ColumnError(f"{where}test types {sorted(kinds)}: only 'stdin' cases are supported by the code "
                              "reward (functional cases call a function with parsed arguments)")
        if all("input" in c and "output" in c for c in value):
            return _io([c["input"] for c in value], [c["output"] for c in value], where)
    raise ColumnError(f"{where}unrecognised tests {preview(value, 160)}; expected {{'kind': 'io'|'assert', ...}}, "
                      "[{'input', 'output'}, ...] or {'inputs': [...], 'outputs': [...]} (docs/data.md)")
