"""Find a model's ``config.json`` for planning, without downloading weights (and offline when it must be).

In order: ``model.config`` (an explicit file: plan a hub model on a laptop), the tiny MoE's config when
``model.path`` is empty, ``model.path/config.json`` for a local directory, the Hugging Face cache for a hub name,
and, unless ``HF_HUB_OFFLINE`` is set, a download of that one small file. Anything else is an error that says
how to give the plan a config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class ModelConfigError(ValueError):
    """No config.json for the recipe's model (offline, not cached, no model.config)."""


def _read(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ModelConfigError(f"{what}: {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"{what}: {path} is not JSON ({e})") from None


def _hub_config(name: str) -> tuple[dict, str] | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return _read(Path(cached), f"model {name}"), f"{name} (Hugging Face cache)"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return None
    from huggingface_hub import hf_hub_download

    try:
        return _read(Path(hf_hub_download(name, "config.json")), f"model {name}"), f"{name} (downloaded config.json)"
    except Exception:  # noqa: BLE001 - no network, private repo, typo: all end in the same advice below
        return None


def find_model_config(model) -> tuple[dict, str]:
    """(config dict, where it came from) for a recipe's ``model`` section."""
    if model.config:
        return _read(Path(model.config), "model.config"), f"{model.config} (model.config)"
    if not model.path:
        from longcot.policies.build import build_tokenizer, tiny_moe_config

        cfg = tiny_moe_config(len(build_tokenizer()), **model.build_overrides).to_dict()
        return cfg, "the tiny MoE (built locally, model.path empty)"
    local = Path(model.path)
    if local.exists():
        return _read(local / "config.json", "model.path"), f"{local / 'config.json'}"
    found = _hub_config(model.path)
    if found is None:
        raise ModelConfigError(
            f"cannot read the config of {model.path}: not a local directory, not in the Hugging Face cache, and "
            f"offline. Fetch that one file (`huggingface-cli download {model.path} config.json`) or point the plan "
            f"at a copy with model.config=PATH/config.json")
    return found


def to_pretrained_config(cfg: dict):
    """A transformers config object from a config dict (its ``model_type`` picks the class)."""
    from transformers import AutoConfig

    data = dict(cfg)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ModelConfigError("config.json has no 'model_type': cannot tell the architecture")
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as e:
        raise ModelConfigError(f"config.json: model_type '{model_type}' is unknown to this transformers "
                               f"({e})") from None
