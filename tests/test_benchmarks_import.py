"""The benchmarks are scripts that no fast test runs end to end, so an API rename in the package breaks them
silently (benchmarks/async_rollouts.py imported a helper a merge had removed). Every ``from longcot... import
name`` in benchmarks/*.py must resolve."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def longcot_imports(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) for every ``from longcot... import name`` in the file, nested imports included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "longcot":
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "longcot"]
    return out


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_longcot_import_of_a_benchmark_resolves(path: Path) -> None:
    missing = []
    for module, name, line in longcot_imports(path):
        mod = importlib.import_module(module)
        if name and not hasattr(mod, name):
            try:  # a submodule imported by name: from longcot.rl import batch
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{path.name}:{line}: {module}.{name}")
    assert not missing, "benchmarks import names the package no longer has:\n" + "\n".join(missing)
