"""Rollouts with transformers ``generate``: the fallback when vLLM is not installed, and a reference for it.

It returns the same records as :class:`~longcot.rollout.vllm.VLLMEngine`: sampled-token logprobs of the
distribution actually sampled from (``output_scores`` are the processed scores, after temperature/top-k/top-p),
responses cut after EOS or after the first stop string, ``finish`` "stop" or "length".

Weights: by default the engine keeps its own copy of the policy, so the trainer can step while the engine
still holds the policy that produced the rollouts, and ``sync_weights`` copies tensors in (a strict
``load_state_dict``). ``model=trainer_module, share_model=True`` shares the trainer's module instead (no second
copy; ``sync_weights`` only records the version): fine on-policy, where generation and update never overlap.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from longcot.record import Finish, Trajectory
from longcot.rollout.base import Prompt, SamplingConfig
from longcot.rollout.common import check_inputs, check_pairs, make_trajectory, prompt_seed
from longcot.rollout.weight_sync import checkpoint_named_params


class HFEngine:
    """The :class:`~longcot.rollout.base.Engine` backed by ``model.generate`` (batched, left padding)."""

    def __init__(
        self,
        model_path: str | None,
        tokenizer: Any,
        *,
        model: nn.Module | None = None,
        share_model: bool = False,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 64,
        max_model_len: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM

        if model is None and model_path is None:
            raise ValueError("HFEngine needs model_path or model=")
        if tokenizer is None:
            raise ValueError("HFEngine needs a tokenizer (to pad prompts and apply stop strings)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shared = model is not None and share_model
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        elif not share_model:
            model = copy.deepcopy(model)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_model_len = max_model_len
        self.eos_ids = _eos_ids(self.model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.version = 0
        self.last_sync_s = 0.0

    @classmethod
    def from_module(cls, module: nn.Module, tokenizer: Any, *, share: bool = False, **kw: Any) -> HFEngine:
        """An engine for an in-memory model: shared with the caller, or a private deep copy."""
        return cls(None, tokenizer, model=module, share_model=share, **kw)

    # ---- generation -------------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, group_tag: str = "") -> list[Trajectory]:
        """``sampling.n`` samples per prompt, in prompt order; batches of ``batch_size`` sequences.

        With ``sampling.seed`` set, each batch is seeded from its first prompt's id inside a forked RNG,
        so a call is reproducible and the global torch RNG (the trainer's) is left untouched.
        """
        check_inputs(prompts, sampling, self.max_model_len)
        if sampling.routed_experts:
            raise ValueError("the hf engine does not report the experts each token was routed to (MoE routing "
                             "replay): use the vllm engine")
        rows = [(p, i) for p in prompts for i in range(sampling.n)]
        trajs: list[Trajectory] = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            seed = prompt_seed(sampling.seed, f"{batch[0][0].prompt_id}#{batch[0][1]}")
            with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
                if seed is not None:
                    torch.manual_seed(seed)
                trajs.extend(self._generate_batch([p for p, _ in batch], sampling, group_tag))
        return trajs

    @torch.no_grad()
    def _generate_batch(self, prompts: list[Prompt], sampling: SamplingConfig, group_tag: str) -> list[Trajectory]:
        input_ids, attention = self._left_pad([p.prompt_ids for p in prompts])
        greedy = sampling.temperature == 0
        limits = [self._limit(p, sampling) for p in prompts]
        out = self.model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max(limits),
            do_sample=not greedy, temperature=None if greedy else sampling.temperature,
            # top_k=0 disables it explicitly; None would fall back to generation_config's default of 50.
            top_p=None if greedy else sampling.top_p, top_k=None if greedy else max(sampling.top_k, 0),
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id, output_scores=sampling.logprobs,
            return_dict_in_generate=True,
        )
        new = out.sequences[:, input_ids.shape[1]:]
        picked = None
        if sampling.logprobs:  # scores[t]: processed logits at step t, shape (batch, vocab)
            logprobs = torch.stack([s.float().log_softmax(-1) for s in out.scores], dim=1)
            picked = logprobs.gather(-1, new[:, : logprobs.shape[1], None])[..., 0]
        trajs = []
        for row, prompt in enumerate(prompts):
            ids = new[row, : limits[row]].tolist()
            n, finish = self._cut(ids, sampling)
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
            lps = picked[row, :n].tolist() if picked is not None else []
            trajs.append(make_trajectory(prompt, group_tag, ids[:n], lps, text, finish, self.version,
                                         sampling.temperature))
        return trajs

    def _limit(self, prompt: Prompt, sampling: SamplingConfig) -> int:
        """Response tokens allowed: ``max_tokens``, capped like vLLM so prompt + response fit max_model_len."""
        if self.max_model_len is None:
            return sampling.max_tokens
        return min(sampling.max_tokens, self.max_model_len - len(prompt.prompt_ids))

    def _cut(self, ids: list[int], sampling: SamplingConfig) -> tuple[int, Finish]:
        """How many generated tokens the response keeps, and why it ended (EOS and stop string included)."""
        end, finish = len(ids), "length"
        for k, tok in enumerate(ids):
            if tok in self.eos_ids:
                end, finish = k + 1, "stop"
                break
        if sampling.stop:
            # The first prefix whose text contains a stop string (decoding is cheap at these sizes).
            for k in range(1, end + 1):
                text = self.tokenizer.decode(ids[:k], skip_special_tokens=True)
                if any(s in text for s in sampling.stop):
                    return k, "stop"
        return end, finish

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def compute_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """Logprob of each response token given everything before it (temperature 1), batched, right padding."""
        check_pairs(prompt_ids, response_ids)
        result: list[list[float]] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            ps, rs = prompt_ids[start:start + self.batch_size], response_ids[start:start + self.batch_size]
            seqs = [list(p) + list(r) for p, r in zip(ps, rs, strict=True)]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            lp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None].to(self.device))[..., 0]
            for i, (p, r) in enumerate(zip(ps, rs, strict=True)):
                result.append(lp[i, len(p) - 1 : len(p) - 1 + len(r)].tolist())
        return result

    # ---- weights ----------------------------------------------------------------------------------------
    def sync_weights(self, named_params: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Copy the trainer's weights into the engine's model (strict: every parameter must be given)."""
        t0 = time.perf_counter()
        if not self.shared:
            state = dict(checkpoint_named_params(named_params))
            own = dict(self.model.named_parameters())
            missing, unknown = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
            if missing or unknown:
                raise KeyError(f"sync_weights: missing {missing[:5]} unknown {unknown[:5]} (of {len(own)} params)")
            with torch.no_grad():
                for name, tensor in state.items():
                    own[name].copy_(tensor)
        self.version = version
        self.last_sync_s = time.perf_counter() - t0

    def shutdown(self) -> None:
        """Nothing to release beyond the model itself; present so both engines can be used the same way."""


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """EOS ids from the generation config (may be a list), falling back to the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("no eos_token_id in the model's generation_config or the tokenizer")
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]
