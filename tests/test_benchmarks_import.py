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


def test_every_arm_of_the_async_benchmark_is_a_valid_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arms are override lists that only a 12-minute run would load: a renamed key must fail here."""
    import sys

    from longcot.config import load_recipe

    monkeypatch.syspath_prepend(str(BENCHMARKS[0].parent))
    sys.modules.pop("async_rollouts", None)
    bench = importlib.import_module("async_rollouts")
    for name, overrides in bench.ARMS.items():
        recipe = load_recipe(bench.RECIPE, overrides)
        assert recipe.cluster.backend == name.split("-")[0].rstrip("1")
        assert (recipe.trainer.ranks == 2) == name.endswith("ddp2")
    with pytest.raises(SystemExit):  # one in-process engine per run
        bench.parse_args(["--arms", "local", "local-ddp2"])
    assert bench.parse_args(["--arms", "local-ddp2", "ray-ddp2"]).arms == ["local-ddp2", "ray-ddp2"]
