"""The Ray runtime driven directly, on one Ray instance shared by the module: weights in a worker after a sync
equal the trainer's, and a rollout worker killed with SIGKILL mid-run is restarted while every step still trains
on a complete batch."""

import os
import signal
import time

import pytest
import ray
import torch
from raytest import PROMPTS, RAY_ARGS, RECIPE, N, local_ray

from longcot.config import load_recipe
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.record import Trajectory
from longcot.rollout.base import Prompt

pytestmark = pytest.mark.slow
PAIRS = [([1, 40, 41, 42], list(range(10, 40))), ([1] + list(range(60, 90)), [5, 6, 7, 8, 9]), ([1, 7], [8, 9])]


@pytest.fixture(scope="module")
def ray_instance():
    with local_ray("lcray-t-"):
        yield


@pytest.fixture(scope="module")
def runtime(ray_instance, tmp_path_factory):
    """One worker and one trainer over the untrained tiny MoE, reused by the tests of this module."""
    from longcot.runtime.ray import RayRuntime

    root = tmp_path_factory.mktemp("run")
    model_dir = build_tiny_moe(root / "init")
    tok = load_tokenizer(model_dir)
    recipe = load_recipe(RECIPE, [*RAY_ARGS, "rl.steps=8"])
    rt = RayRuntime(recipe, root, str(model_dir), tok, max_model_len=256)
    counter = iter(range(10**6))

    def next_prompts(seq, k):
        return [Prompt(f"q{i}", tok(f"Q: {i % 9}+1\n").input_ids, meta={"answer": str(i % 9 + 1)})
                for i in (next(counter) for _ in range(k))]

    loop = rt.rl_trainer(load_policy(model_dir), next_prompts)
    yield rt, loop, model_dir
    rt.shutdown()


def hf_logprobs(model, prompt, response):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_worker_weights_equal_the_trainers_after_a_sync(runtime):
    rt, loop, model_dir = runtime
    row, _ = loop.step(0)
    assert row["policy_version"] == 1.0
    engine_lp = rt.engine.compute_logprobs([p for p, _ in PAIRS], [r for _, r in PAIRS])  # loads version 1
    trajs = [Trajectory(prompt_id=str(i), group_id=str(i), prompt_ids=p, response_ids=r, rollout_logprobs=[])
             for i, (p, r) in enumerate(PAIRS)]
    trainer_lp = loop.learner.policy_logprobs(trajs)
    gap = max(abs(a - b) for e, t in zip(engine_lp, trainer_lp, strict=True) for a, b in zip(e, t, strict=True))
    assert gap < 1e-4
    initial = load_policy(model_dir)  # and the update did move the policy: the comparison is not vacuous
    moved = max((torch.tensor(e) - hf_logprobs(initial, p, r)).abs().max().item()
                for e, (p, r) in zip(engine_lp, PAIRS, strict=True))
    assert moved > 1e-3


def test_sigkilled_worker_is_restarted_and_no_batch_is_short(runtime):
    rt, loop, _ = runtime
    worker = rt.workers[0]
    pid = ray.get(worker.handle.ready.remote())["pid"]
    loop.step(1)
    deadline = time.monotonic() + 60
    while loop.prompts.active == 0 and time.monotonic() < deadline:  # kill it inside an engine call
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    rows = [loop.step(s)[0] for s in range(2, 5)]
    assert all(r["async/batch_samples"] == PROMPTS * N for r in rows)
    assert rows[-1]["async/worker_restarts_total"] >= 1 and rows[-1]["async/requeued_chunks_total"] >= 1
    assert all(r["async/staleness_max"] <= 1 for r in rows)
    assert ray.get(worker.handle.ready.remote())["pid"] != pid


def test_a_dead_trainer_stops_the_run_with_a_clear_message(runtime):
    from longcot.runtime.learner_actor import TrainerDiedError

    rt, loop, _ = runtime
    ray.kill(loop.learner.lead, no_restart=True)
    with pytest.raises(TrainerDiedError, match="trainer actor died.*--resume"):
        loop.step(5)
