"""A Qwen3-style chat template for the tiny tokenizer, so chat prompts and thinking mode run locally.

It follows the format of Qwen3's published template for what longcot uses (tools left out): ChatML turns
(``<|im_start|>role\\n...<|im_end|>\\n``), an optional system turn, and the thinking switch: with
``enable_thinking=False`` the generation prompt ends with an empty ``<think>\\n\\n</think>\\n\\n`` block, so the
model answers directly; by default it is left to open ``<think>`` itself. An earlier assistant turn keeps only
its answer (the text after ``</think>``), as Qwen3 drops past reasoning from the context. The tiny tokenizer is
character level, so the markers are plain characters it already has.
"""

from __future__ import annotations

QWEN_STYLE_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and not loop.last and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
