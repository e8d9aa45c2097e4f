"""Errors about the user's input, which every command prints as one line (file, row or key, and what was
expected) instead of a traceback. A traceback is kept for what is not the user's doing: a bug."""


class InputError(ValueError):
    """Bad input the user can fix: a config key, a file, a row of data."""


class MissingKeyError(InputError, KeyError):
    """An :class:`InputError` about a missing key or id (also a ``KeyError``, for callers that catch that)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""
