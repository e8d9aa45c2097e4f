"""The worker pool's hard limit: a job stuck where no signal reaches it is killed; the pool keeps going."""

import time

from longcot.rewards.pool import WorkerPool


def test_hung_job_is_killed_and_worker_replaced():
    pool = WorkerPool(1)
    try:
        assert pool.map("operator:add", [(1, 2)], timeout=30) == [("ok", 3)]  # includes worker start-up
        t0 = time.monotonic()
        out = pool.map("time:sleep", [(60,), (0,)], timeout=0.5)
        assert time.monotonic() - t0 < 20
        assert out[0] == ("timeout", 0.5) and out[1] == ("ok", None)
        assert pool.killed == 1
        assert pool.map("operator:truediv", [(1, 0)], timeout=30)[0][0] == "error"
        assert pool.map("os:_exit", [(3,)], timeout=30)[0] == ("error", "worker died (exit code 3)")
        assert pool.map("operator:mul", [(6, 7)], timeout=30) == [("ok", 42)]
    finally:
        pool.close()
