"""The worker pool's hard limit: a job stuck where no signal reaches it is killed; the pool keeps going.
No wall-clock thresholds: what shows a kill is the job's status and the pool's counter, not a duration."""

from longcot.rewards.pool import WorkerPool


def test_hung_job_is_killed_and_worker_replaced():
    pool = WorkerPool(1)
    try:
        assert pool.map("operator:add", [(1, 2)], timeout=30) == [("ok", 3)]  # includes worker start-up
        out = pool.map("time:sleep", [(60,), (0,)], timeout=0.5)  # waited out, it would come back ("ok", None)
        assert out[0] == ("timeout", 0.5) and out[1] == ("ok", None)
        assert pool.killed == 1
        assert pool.map("operator:truediv", [(1, 0)], timeout=30)[0][0] == "error"
        assert pool.map("os:_exit", [(3,)], timeout=30)[0] == ("error", "worker died (exit code 3)")
        assert pool.map("operator:mul", [(6, 7)], timeout=30) == [("ok", 42)]
    finally:
        pool.close()


def test_start_spawns_workers_without_waiting_and_map_reuses_them():
    pool = WorkerPool(2, preload=("math_verify",))
    try:
        assert pool.start() is pool
        # spawned, not waited for: nobody has read the workers' "ready" yet (importing math_verify takes ~1 s)
        assert not any(w.ready for w in pool._workers)
        started = [w.proc.pid for w in pool._workers]
        assert len(started) == 2 and all(w.proc.is_alive() for w in pool._workers)
        assert pool.map("operator:add", [(1, 2), (3, 4)], timeout=60) == [("ok", 3), ("ok", 7)]
        assert [w.proc.pid for w in pool._workers] == started  # the pre-started workers ran the jobs
    finally:
        pool.close()


def test_prepare_rewards_starts_the_math_pool():
    from longcot.rewards.pool import _POOLS
    from longcot.rewards.registry import RewardSpec, prepare_rewards

    prepare_rewards([RewardSpec("math"), RewardSpec("k15_length")])  # k15_length has nothing to prepare
    assert "math" in _POOLS and _POOLS["math"]._workers
