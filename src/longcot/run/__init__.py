"""A run's life on disk: the run directory, the training state it resumes from, and preemption handling."""

from longcot.run.rundir import RunDir

__all__ = ["RunDir"]
