"""Errors about the user's input, which every command prints as one line (file, row or key, and what was
expected) instead of a traceback. A traceback is kept for what is not the user's doing: a bug."""


class InputError(ValueError):
    """Bad input the user can fix: a config key, a file, a row of data."""


class MissingKeyError(InputError, KeyError):
    """An :class:`InputError` about a missing key or id (also a ``KeyError``, for callers that catch that)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class RunStoppedError(RuntimeError):
    """Training cannot go on, for a reason the message gives and the user can act on (updates that keep
    diverging, a trainer process that died); the run directory keeps its last training state. Printed as one
    line, not a traceback: nothing in the code failed."""


def message(e: BaseException) -> str:
    """What to print for ``e``: its own message, also when it was raised in a Ray actor and reaches the driver
    wrapped in a ``RayTaskError`` (which is an instance of the original class, but whose text is the whole remote
    traceback)."""
    cause = getattr(e, "cause", None)
    return str(cause if isinstance(cause, BaseException) else e)
