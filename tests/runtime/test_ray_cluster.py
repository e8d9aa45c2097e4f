"""Multi-node placement on one machine: a two-node cluster simulated with ``ray.cluster_utils.Cluster``, the run
joins it by address, and its rollout worker lands on the second node (a custom resource only that node has)."""

import json
import os
import shutil
import tempfile

import pytest
from raytest import PROMPTS, RAY_ARGS, RECIPE, rows

from longcot.config import load_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="lcray-c-", dir="/tmp")
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp  # the cluster's address file and sessions, not /tmp/ray
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1, resources={"rollout_node": 1})
    yield cluster, second.node_id
    cluster.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    if before is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = before


def test_worker_on_the_second_node_and_the_run_finishes(two_nodes, tmp_path, monkeypatch):
    from longcot.pipeline import train

    cluster, second_node = two_nodes
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    recipe = load_recipe(RECIPE, [*RAY_ARGS, f"out_dir={tmp_path}", "name=two", "rl.steps=2",
                                  f"cluster.address={cluster.address}", "cluster.worker_resources={rollout_node: 1}"])
    summary = train(recipe)
    placed = json.loads((tmp_path / "two" / "cluster.json").read_text())
    assert placed["workers"][0]["node"] == second_node and placed["trainer"]["node"] != second_node
    assert [r["step"] for r in rows(tmp_path / "two")] == [0, 1]
    assert all(r["async/batch_samples"] == PROMPTS * 4 for r in rows(tmp_path / "two"))
    assert summary["eval"]["after_rl"]["n"] == 8
