"""Turn a row into prompt text: a format string over the row, or the tokenizer's chat template."""

from __future__ import annotations


def render_prompt(template: str, row: dict, tokenizer=None) -> str:
    """``template`` is ``"chat"`` (the tokenizer's chat template, one user turn with the problem) or a
    ``str.format`` pattern over the row's columns, e.g. ``"{problem}\\nPut the answer in \\boxed{{}}."``."""
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template([{"role": "user", "content": row["problem"]}],
                                             tokenize=False, add_generation_prompt=True)
    try:
        return template.format(**row)
    except KeyError as e:
        raise KeyError(f"prompt template {template!r} uses column {e} that the row lacks; "
                       f"columns: {sorted(row)}") from e
