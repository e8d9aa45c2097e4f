"""Bounded staleness without Ray: admission, the run-ahead budget and the shared prompt queue."""

import threading
from collections import deque

import pytest

from longcot.config import ConfigError, load_recipe
from longcot.record import Segment, Trajectory
from longcot.rollout.base import Prompt
from longcot.runtime.admission import Unit, admit, run_ahead_room, split_units, staleness_metrics
from longcot.runtime.rollouts import PromptQueue


def traj(group: str, versions: list[int], reward: float = 0.0) -> Trajectory:
    segs = [Segment(i, i + 1, v) for i, v in enumerate(versions)]
    return Trajectory(prompt_id=group, group_id=group, prompt_ids=[1], response_ids=list(range(len(versions))),
                      rollout_logprobs=[], segments=segs, reward=reward)


def unit(key: str, version: int, rewards=(0.0, 1.0)) -> Unit:
    return Unit(key, [traj(key, [version], r) for r in rewards], version, version)


def test_split_units_keeps_subagent_records_with_their_orchestrator_and_reads_segment_versions():
    orch = [traj("p1@c0", [3, 4]), traj("p1@c0", [4])]
    sub = traj("p1@c0", [4])
    sub.group_id = "p1@c0/sub"
    other = traj("p2@c0", [])
    other.segments = []
    units = split_units([*orch, sub, other], default_version=7, worker=2)
    assert [u.key for u in units] == ["p1@c0", "p2@c0"]
    assert (units[0].version, units[0].oldest, len(units[0].trajs), len(units[0].main)) == (4, 3, 3, 2)
    assert (units[1].version, units[1].worker) == (7, 2)  # no segment: the version the call was pinned to


def test_admit_drops_units_older_than_k_and_counts_their_samples():
    buffer = deque([unit("a", 3), unit("b", 5), unit("c", 4), unit("d", 5)])
    adm = admit(buffer, need=2, trainer_version=5, k=1)
    assert [u.key for u in adm.units] == ["b", "c"] and [u.key for u in adm.stale] == ["a"]
    assert adm.dropped_samples == 2 and [u.key for u in buffer] == ["d"]
    more = admit(buffer, need=3, trainer_version=5, k=1, into=adm)  # the buffer ran dry: call again later
    assert more is adm and [u.key for u in adm.units] == ["b", "c", "d"]


def test_admit_with_dynamic_sampling_filters_uninformative_units():
    buffer = deque([unit("a", 0, (1.0, 1.0)), unit("b", 0, (0.0, 1.0)), unit("c", 0, (0.0, 0.0))])
    adm = admit(buffer, 2, 0, 0, informative=lambda u: len({t.reward for t in u.main}) > 1)
    assert [u.key for u in adm.units] == ["b"] and [u.key for u in adm.uninformative] == ["a", "c"]


def test_staleness_metrics_per_trained_sample():
    m = staleness_metrics([unit("a", 4), Unit("b", [traj("b", [2, 3])], 3, 2)], trainer_version=5)
    assert m["async/staleness_mean"] == pytest.approx((1 + 1 + 2) / 3)
    assert m["async/staleness_max"] == 2 and m["async/staleness_oldest_max"] == 3


@pytest.mark.parametrize("k,in_flight,ahead,remaining,room", [
    (0, False, 0, 100, 8),  # synchronous: one batch, only when no update runs
    (0, True, 0, 100, 0),
    (1, True, 0, 100, 8),  # one step off: the next batch may be generated while the trainer works
    (1, False, 8, 100, 8),
    (2, False, 30, 100, 0),
    (1, False, 0, 5, 5),  # never more than the run still needs
])
def test_run_ahead_room(k, in_flight, ahead, remaining, room):
    assert run_ahead_room(8, k, in_flight, ahead, remaining) == room


def make_queue(k=1, chunk=4, remaining=100, P=4):
    drawn = []

    def next_prompts(seq, n):
        drawn.append((seq, n))
        return [Prompt(f"p{seq}-{i}", [1, 2]) for i in range(n)]

    return PromptQueue(next_prompts, P, k, chunk, remaining, threading.Lock()), drawn


def test_prompt_queue_stays_within_the_budget_and_requeues_first():
    q, drawn = make_queue(k=1)
    a, b = q.acquire(), q.acquire()
    assert (a.seq, b.seq, q.ahead) == (0, 1, 8)
    q.update(update_in_flight=True)  # budget (k + 1 - 1) * 4 = 4 < 8 ahead: nothing more
    assert q._next_chunk(False) is None
    q.requeue(a)
    assert q.acquire() is a  # a dead worker's chunk goes first, and it was counted already
    q.update(update_in_flight=False)
    q.consumed(4)
    assert q.acquire().seq == 2 and drawn == [(0, 4), (1, 4), (2, 4)]


def test_prompt_queue_a_complete_batch_closes_the_budget_before_waking_producers():
    q, _ = make_queue(k=1)
    q.acquire(), q.acquire()  # two batches ahead: the budget 2 * 4 is used up
    q.consumed(4, update_next=True)  # a batch is taken and its update starts: one batch ahead = the budget 1 * 4
    assert q.update_in_flight and q._next_chunk(False) is None  # no chunk at the old version (it would be dropped)
    q.update(update_in_flight=False)  # the update is published
    assert q.acquire().seq == 2


def test_prompt_queue_partial_backlog_and_end_of_run():
    q, _ = make_queue(k=0, remaining=6)
    assert len(q.acquire().prompts) == 4
    assert q._next_chunk(can_continue=True).prompts == []  # budget used up: continue the buffered samples
    q.consumed(4)
    q.update(remaining=2)
    assert len(q.acquire().prompts) == 2  # the last, smaller chunk
    q.stop()
    assert q.acquire() is None


def test_prompt_queue_pause_waits_for_calls_in_flight():
    q, _ = make_queue()
    q.acquire()
    released = []
    t = threading.Timer(0.2, lambda: (released.append(1), q.release()))
    t.start()
    q.pause()
    assert released == [1] and q._next_chunk(False) is not None  # pause only blocks acquire()
    q.resume()


def test_off_policy_without_a_correction_is_refused():
    with pytest.raises(ConfigError, match="rl.rollout_correction"):
        load_recipe(None, ["rl.max_off_policy_steps=1"])
    with pytest.raises(ConfigError, match=">= 0"):
        load_recipe(None, ["rl.max_off_policy_steps=-1"])
    assert load_recipe(None, ["rl.max_off_policy_steps=2", "rl.old_logprobs=engine"]).rl.max_off_policy_steps == 2
    with pytest.raises(ConfigError, match="cluster.backend"):
        load_recipe(None, ["cluster.backend=slurm"])
    with pytest.raises(ConfigError, match="rollout_workers"):
        load_recipe(None, ["cluster.rollout_workers=0"])


def test_engine_metrics_of_several_deliveries_sum_counts_and_weight_means():
    from longcot.runtime.async_loop import merge_engine_metrics

    merged = merge_engine_metrics([({"partial/returned": 8.0, "partial/segments_per_traj": 2.0}, 8),
                                   ({"partial/returned": 0.0, "partial/segments_per_traj": 0.0}, 0),
                                   ({"partial/returned": 4.0, "partial/segments_per_traj": 3.5}, 4)])
    assert merged == {"partial/returned": 12.0, "partial/segments_per_traj": 2.5}


def test_partial_buffers_are_dealt_to_a_new_number_of_workers():
    """Resume with more or fewer rollout workers: every buffered group lands on exactly one worker, the oldest
    (first) groups of each saved buffer first; the same count keeps the buffers as saved."""
    from longcot.runtime.async_loop import deal_partial_buffers

    saved = [{"a": [1], "b": [2], "c": [3]}, {"d": [4]}]
    assert deal_partial_buffers(saved, 2) is saved
    assert deal_partial_buffers([None, None], 3) == [None, None, None]
    three = deal_partial_buffers(saved, 3)
    assert three == [{"a": [1], "c": [3]}, {"d": [4]}, {"b": [2]}]
    assert deal_partial_buffers(saved, 1) == [{"a": [1], "d": [4], "b": [2], "c": [3]}]
