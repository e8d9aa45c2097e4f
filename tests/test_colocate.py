"""The engine sleeps through the trainer's update when it can (vLLM sleep mode, CUDA) and is awake after it."""

from __future__ import annotations

import pytest

from longcot.rollout.colocate import engine_memory_released, sleeping_engine
from longcot.rollout.hf import HFEngine


class SleepRecorder:
    """Stands in for the CUDA-only part of VLLMEngine (release_memory/restore_memory), which cannot run here."""

    def __init__(self):
        self.calls = []

    def release_memory(self) -> bool:
        self.calls.append("release")
        return True

    def restore_memory(self) -> None:
        self.calls.append("restore")


class Wrapper:  # like PartialRollouts (.inner) and AgentEngine (.engine)
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_release_around_the_update_through_wrappers_and_errors():
    core = SleepRecorder()
    engine = Wrapper(inner=Wrapper(engine=core))
    assert sleeping_engine(engine) is core
    with engine_memory_released(engine) as released:
        assert released and core.calls == ["release"]
    with pytest.raises(ValueError), engine_memory_released(engine):
        raise ValueError("update failed")
    assert core.calls == ["release", "restore", "release", "restore"]


def test_engines_without_sleep_mode_are_left_alone():
    assert sleeping_engine(HFEngine.__new__(HFEngine)) is None
    with engine_memory_released(Wrapper(inner=None)) as released:
        assert released is False
