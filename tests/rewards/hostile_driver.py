"""Run every hostile program as whoever starts this script (the test starts it as uid 65534, in a PID namespace
of its own so that nobody else's processes on a shared machine count as ours) and print one JSON line: per
program the score, its honest score, and what it left behind (processes, files, connections).

    python3.11 hostile_driver.py REPO_DIR      # PYTHONPATH=<copy of src>:<dir of hostile.py>
"""

import json
import sys

import hostile

from longcot.rewards.code import check
from longcot.rewards.pool import close_pools, get_pool


def main() -> None:
    ctx = hostile.Context(repo=sys.argv[1])
    results: dict = {"features": check()["features"]}
    try:
        get_pool("code", preload=("longcot.rewards.executor",)).start()
        (warm,) = hostile.code_batch([hostile.sample(hostile.GOOD, hostile.ASSERT_TESTS)])
        results["warm"] = warm
        baseline, files0 = set(hostile.processes()), hostile.tmp_entries()
        for name, kind in hostile.cases():
            pids, workers = hostile.attackable_pids(), hostile.code_workers()
            score = hostile.grade(name, kind, ctx, pids)
            results[f"{kind}:{name}"] = {
                "score": score, "honest": hostile.honest(name, kind),
                "processes": hostile.leftovers(baseline, workers, None),
                "files": hostile.stray_files(files0, None) + ctx.files(), "connections": ctx.connections(),
                "workers_alive": all(p in hostile.processes() for p in pids[1:])}
    finally:
        close_pools()
        ctx.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
