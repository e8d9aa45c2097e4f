"""Run ``longcot train`` with an injected fault: send a signal to this process at the N-th call of a function.

    python tests/run/faults.py MODULE:QUALNAME N SIGNAL before|after -- <longcot train arguments>
    python tests/run/faults.py MODULE:QUALNAME N SIGNAL before|after -- long2short|eval <its arguments>

e.g. ``longcot.rollout.vllm:VLLMEngine.generate 3 KILL before`` dies as the third generate call starts. The
resume tests use it to stop a real run at a chosen point (mid-generation, mid-optimizer step, mid-state write)
without any test hook in the code under test.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def install(target: str, nth: int, signame: str, when: str) -> None:
    module_name, _, qualname = target.partition(":")
    *path, name = qualname.split(".")
    owner = importlib.import_module(module_name)
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    sig = getattr(signal, f"SIG{signame}")
    if sig == signal.SIGINT:  # a shell without job control starts background jobs with SIGINT ignored, and Python
        signal.signal(signal.SIGINT, signal.default_int_handler)  # keeps that: make Ctrl-C what it is in a terminal
    calls = 0

    def faulty(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == nth and when == "before":
            os.kill(os.getpid(), sig)
        out = original(*args, **kwargs)
        if calls == nth and when == "after":
            os.kill(os.getpid(), sig)
        return out

    setattr(owner, name, faulty)


if __name__ == "__main__":
    target, nth, signame, when, sep, *train_args = sys.argv[1:]
    assert sep == "--" and when in ("before", "after"), sys.argv
    install(target, int(nth), signame, when)
    from longcot.cli import main

    command = train_args if train_args[:1] in (["long2short"], ["eval"]) else ["train", *train_args]
    sys.exit(main(command))
