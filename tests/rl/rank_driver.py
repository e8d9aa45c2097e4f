"""A driver process for tests/rl/test_rank_lifecycle.py: starts 2 ddp trainer ranks, prints their pids, then
waits (to be killed or interrupted) or makes rank 0 fail and reports what the driver saw."""

from __future__ import annotations

import json
import signal
import sys
import time

from longcot.config import load_recipe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.rl.remote import make_learner

if __name__ == "__main__":
    # Ctrl-C as in a terminal: a runner started in the background (nohup ... &) passes SIGINT down ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    path, mode = sys.argv[1], sys.argv[2]
    recipe = load_recipe(None, ["trainer.strategy=ddp", "trainer.ranks=2", "threads=1"])
    learner = make_learner(load_policy(path), load_tokenizer(path), recipe)
    print(json.dumps({"ranks": learner.launcher.pids}), flush=True)
    if mode == "wait":
        time.sleep(600)
    elif mode == "fail":
        try:
            learner.update(["not a trajectory"])
        except RuntimeError as e:
            print(json.dumps({"error": str(e)}), flush=True)
        learner.close()
        print(json.dumps({"closed": True}), flush=True)
