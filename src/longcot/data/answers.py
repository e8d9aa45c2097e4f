"""Rows must carry a gold answer: a row without one is an error, or (by option) a skip that is counted.

Why: the ``datasets`` JSON loader fills a key that some rows lack with ``None``, and ``str(None)`` is
``"None"``: such a row used to be graded against the text "None", wrong every time, with zero errors
reported. Used by training data (``data.skip_missing_answers``) and eval problems
(``dataset.skip_missing_answers``).
"""

from __future__ import annotations

import logging

from longcot.errors import InputError

log = logging.getLogger(__name__)


def has_answer(row: dict) -> bool:
    value = row.get("answer")
    return value is not None and str(value).strip() != ""


def require_answers(rows: list[dict], source: str, skip: bool, option: str) -> tuple[list[dict], list[dict]]:
    """``(rows with a gold answer, the rows skipped for lacking one)``; without ``skip``, the first row that has none
    raises :class:`~longcot.errors.InputError` naming the source, the row and the option that would skip it."""
    missing = [i for i, r in enumerate(rows) if not has_answer(r)]
    if missing and not skip:
        i = missing[0]
        section = option.rpartition(".")[0]  # data or dataset
        raise InputError(f"{source}: row {i} (id {rows[i].get('id', i)!r}) has no gold answer (answer = "
                         f"{rows[i].get('answer')!r}); {len(missing)} of {len(rows)} rows lack one. Fix the data, "
                         f"map {section}.columns.answer to the right column, or set {option}=true to skip and "
                         "count them")
    if missing:
        log.warning("%s: skipped %d of %d rows without a gold answer (%s)", source, len(missing), len(rows), option)
    keep = set(missing)
    return [r for i, r in enumerate(rows) if i not in keep], [rows[i] for i in missing]
