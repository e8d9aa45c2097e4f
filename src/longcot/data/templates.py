"""Turn a row into prompt text: a format string over the row, or the tokenizer's chat template.

With ``template: chat`` the conversation is the row's ``prompt`` message list when it has one (DAPO-Math-17k),
else one user turn, ``user_template`` filled from the row (``"{problem}"`` by default); ``system_prompt`` adds a
system turn, and ``chat_kwargs`` reach the template itself (Qwen3's ``enable_thinking``). Any other ``template``
is a ``str.format`` pattern over the row's columns, e.g. ``"{problem}\\nPut the answer in \\boxed{{}}."``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromptFormat:
    template: str = "{problem}\n"  # "chat", or a str.format pattern over the row
    system_prompt: str = ""  # chat only: a system turn before the conversation
    user_template: str = "{problem}"  # chat only: the user turn of a row without a message-list prompt
    chat_kwargs: dict[str, Any] = field(default_factory=dict)  # extra apply_chat_template keywords

    @property
    def is_chat(self) -> bool:
        return self.template == "chat"

    @classmethod
    def from_data(cls, cfg) -> PromptFormat:
        """From a recipe's ``data`` section; a system prompt or template kwargs without the chat template fail."""
        if cfg.template != "chat" and (cfg.system_prompt or cfg.chat_template_kwargs):
            raise ValueError("data.system_prompt and data.chat_template_kwargs need data.template=chat (a format "
                             "template writes its whole text itself)")
        return cls(cfg.template, cfg.system_prompt, cfg.user_template, dict(cfg.chat_template_kwargs))


def _format(pattern: str, row: dict, what: str) -> str:
    try:
        return pattern.format(**row)
    except KeyError as e:
        raise KeyError(f"{what} {pattern!r} uses column {e} that the row lacks; columns: {sorted(row)}") from e


def conversation(fmt: PromptFormat, row: dict) -> list[dict]:
    """The chat messages of a row before the model's turn (system turn first when the recipe sets one)."""
    if isinstance(row.get("prompt"), list):
        messages = list(row["prompt"])
    else:
        messages = [{"role": "user", "content": _format(fmt.user_template, row, "data.user_template")}]
    if fmt.system_prompt:
        if messages and messages[0]["role"] == "system":
            raise ValueError(f"row {row.get('id')}: the prompt already has a system turn and data.system_prompt "
                             "sets another; drop one of them")
        messages = [{"role": "system", "content": fmt.system_prompt}, *messages]
    return messages


def render_chat(tokenizer, messages: list[dict], fmt: PromptFormat, add_generation_prompt: bool = True) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat' needs a tokenizer with a chat template (this tokenizer has none: use a "
                         "format template such as data.template='Q: {problem}\\n')")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **fmt.chat_kwargs)


def render_prompt(template: str | PromptFormat, row: dict, tokenizer=None) -> str:
    """The prompt text of ``row`` (see module docstring); ``template`` is a :class:`PromptFormat` or its
    ``template`` string alone."""
    fmt = template if isinstance(template, PromptFormat) else PromptFormat(template)
    if fmt.is_chat:
        return render_chat(tokenizer, conversation(fmt, row), fmt)
    return _format(fmt.template, row, "prompt template")
