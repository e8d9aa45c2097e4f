"""Rollouts with an in-process, colocated ``vllm.LLM``, and in-place weight sync from the trainer.

One engine lives in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weight sync is a
function call on the worker that reads the trainer's tensors directly: no NCCL group, no files, no copies
beyond the one into vLLM's own parameters. This is the simplest correct design for one node and it runs on
a 2-core CPU. vLLM is imported lazily so ``import longcot`` stays fast and works without vLLM installed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from longcot.record import Trajectory
from longcot.rollout.base import Prompt, SamplingConfig
from longcot.rollout.common import check_inputs, check_pairs, make_trajectory, prompt_seed
from longcot.rollout.routing import (
    bind_capture_on_load,
    capturing,
    hf_moe_layers,
    request_rows,
    rows_from_output,
    worker_layers,
)
from longcot.rollout.weight_sync import checkpoint_named_params, repack_fused_moe

log = logging.getLogger(__name__)

# Settings that make vLLM run in-process on a CPU (DESIGN.md section 5), and keep its INFO lines (printed
# to stdout) out of the trainer's output. The user's environment wins; they apply if vLLM is not yet imported.
_VLLM_ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
}


class _MessageFilter(logging.Filter):
    """Drops vLLM log lines that report nothing wrong and that the user cannot act on (see ``_VLLM_NOISE``)."""

    def __init__(self, *texts: str) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


# vLLM logger -> messages it prints where nothing is wrong. vLLM logs at WARNING in every longcot process (the CLI
# sets it before TRL's import would set ERROR: trl/_compat.py), so its real warnings (a layer that fails to load,
# LD_PRELOAD advice on CPU) reach the user, and these do not. Each filter is one object, so adding it again is a no-op.
_VLLM_NOISE = {
    # Printed five times while a CPU engine is built: vLLM's own model loading and renderer warm-up call
    # torch.set_num_threads, which its CPU worker has just replaced with this warning. VLLMEngine puts the real
    # function back once the engine is built.
    "vllm.v1.worker.cpu_worker": _MessageFilter("after the thread binding"),
    # Printed at every weight sync: the reload counts the rotary embedding's cos/sin table as a loadable tensor,
    # finds none in the checkpoint (it is a buffer computed from the config, not a weight) and puts the computed
    # one back, which is what it should do. The synced engine's log-probs match the trainer's
    # (tests/test_weight_sync.py). Other layers that fail to load still warn.
    "vllm.model_executor.model_loader.reload.layerwise": _MessageFilter("RotaryEmbedding: Failed to load weights"),
    # Start-up lines about settings longcot makes on purpose: a seeded in-process engine (it reseeds the process's
    # global RNGs, the same way in a resumed run: tests/run/test_resume.py), whole-prompt prefill on CPU (the
    # seeded-generator bug below), enforce_eager (no CUDA graphs or compilation), and what a CPU vLLM lacks (Triton).
    "vllm.engine.arg_utils": _MessageFilter("The global random seed is set to",
                                            "does not officially support disabling chunked prefill"),
    "vllm.config.vllm": _MessageFilter("Enforce eager set", "Inductor compilation was disabled by user settings",
                                       "Model Runner V2 requires Triton"),
    "vllm.platforms.cpu": _MessageFilter("triton-cpu is expected", "Reset SSM cache type"),
    "vllm.triton_utils.importing": _MessageFilter("doesn't include CPU backend", "0 active driver(s) found",
                                                  "Triton not installed or not compatible"),
}


def _quiet_vllm_noise(worker: Any = None) -> None:
    """Adds the ``_VLLM_NOISE`` filters in this process; run in the engine's process and, through
    ``collective_rpc``, in each of its worker processes (tensor parallelism)."""
    for name, noise in _VLLM_NOISE.items():
        logging.getLogger(name).addFilter(noise)
    # vLLM's Triton shim reads every torch.distributed attribute, one of them a deprecated alias
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.reduce_op", category=FutureWarning)


class VLLMEngine:
    """The :class:`~longcot.rollout.base.Engine` backed by vLLM.

    ``logprobs_mode="processed_logprobs"`` (default) returns the logprobs of the distribution tokens were
    actually sampled from (after temperature/top-k/top-p), which is what importance-sampling corrections
    need; the trainer must then divide its logits by the same temperature. ``"raw_logprobs"`` gives the
    model's unscaled logprobs. ``compute_logprobs`` always returns raw (temperature 1) logprobs.
    """

    def __init__(
        self,
        model_path: str,
        tokenizer: Any = None,
        *,
        max_model_len: int = 2048,
        seed: int = 0,
        dtype: str | None = None,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = True,
        logprobs_mode: str = "processed_logprobs",
        repack_moe_after_sync: bool = True,
        routing_capture: bool = False,
        **llm_kwargs: Any,
    ) -> None:
        for key, value in _VLLM_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
            raise RuntimeError(
                "VLLMEngine syncs weights in-process and needs VLLM_ENABLE_V1_MULTIPROCESSING=0 "
                f"(it is {os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']!r})"
            )
        _quiet_vllm_noise()  # before the import: vLLM's Triton probe logs while it is imported
        import vllm
        from vllm.platforms import current_platform

        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.repack_moe_after_sync = repack_moe_after_sync
        self.version = 0
        self.last_sync_s = 0.0
        self.start_s = 0.0
        if dtype is None:
            dtype = "float32" if current_platform.is_cpu() else "auto"
        tok_path = llm_kwargs.pop("tokenizer_path", None) or _tokenizer_path(tokenizer)
        set_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op; restored below
        t0 = time.perf_counter()
        if not torch.cuda.is_available():
            # vLLM 0.32 CPU bug: a chunked prefill of a seeded request rewinds its generator with set_offset,
            # which CPU generators reject ("CPU Generator does not use offset"). Every training request is
            # seeded, so whole-prompt prefill is the CPU default (an explicit engine option still wins).
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        self.captures_routing, self._cpu_capture = routing_capture, False
        with self._routing_setup(llm_kwargs, current_platform.is_cpu()):
            self.llm = vllm.LLM(
                model=str(model_path), tokenizer=tok_path, max_model_len=max_model_len, seed=seed, dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                logprobs_mode=logprobs_mode, **llm_kwargs,
            )
        if self.llm.llm_engine.vllm_config.parallel_config.world_size > 1:
            self.llm.collective_rpc(_quiet_vllm_noise)
        self.routing_layers, self.num_experts = self._routing_layers() if routing_capture else ([], 0)
        self.start_s = time.perf_counter() - t0
        # Sleep mode (longcot.rollout.colocate): CUDA only, and only if the engine was built for it.
        self.can_sleep = bool(llm_kwargs.get("enable_sleep_mode")) and not current_platform.is_cpu()
        self.asleep = False
        # The trainer shares this process and must keep control of its own thread count.
        torch.set_num_threads = set_threads
        log.info("vLLM engine up in %.2fs (%s, dtype=%s)", self.start_s, model_path, dtype)

    # ---- MoE routing capture (R3; rollout/routing.py) ----------------------------------------------------
    def _routing_setup(self, llm_kwargs: dict, cpu: bool) -> contextlib.AbstractContextManager:
        """Engine arguments for routing capture, and the context the engine is built in. GPU: vLLM's own
        ``enable_return_routed_experts``. CPU: the router capture hook, bound while the model is built, with
        prefix caching off (a cached prompt token runs no forward and so has no router rows)."""
        if not self.captures_routing:
            return contextlib.nullcontext()
        if not cpu:
            llm_kwargs["enable_return_routed_experts"] = True
            return contextlib.nullcontext()
        if llm_kwargs.get("enable_prefix_caching"):
            raise ValueError("routing capture on CPU needs enable_prefix_caching=False: a prompt token served from "
                             "the prefix cache runs no forward, so R3 would have no expert ids for it")
        llm_kwargs["enable_prefix_caching"] = False
        self._cpu_capture = True
        return bind_capture_on_load()

    def _routing_layers(self) -> tuple[list[int], int]:
        """The MoE layers' decoder indices and the number of experts (what a routing row covers)."""
        if self._cpu_capture:
            return worker_layers(self.llm)
        cfg = self.llm.llm_engine.model_config
        return hf_moe_layers(cfg.hf_text_config), cfg.get_num_experts()

    def routing_rows(self, captured: dict, out: Any, comp: Any, tokens: list[int]) -> Any:
        """One sample's routing rows [len(tokens) - 1, moe_layers, k] (``tokens`` = prompt + response)."""
        where = f"request {out.request_id} sample {comp.index}"
        if captured is None:  # GPU path: vLLM returned them with the output
            return rows_from_output(comp, self.routing_layers, self.num_experts, len(tokens), where)
        return request_rows(captured.get((out.request_id, comp.index)), tokens, where)

    def routed_generate(self, inputs: list[dict], params: list[Any], routing: bool) -> tuple[list[Any], dict | None]:
        """``llm.generate`` that also returns the captured router rows when ``routing`` (None on the GPU path,
        where they come with each output)."""
        if routing and not self.captures_routing:
            raise ValueError("this step asks for the experts each token was routed to (MoE routing replay), but the "
                             "vLLM engine was built without routing_capture=True")
        if not routing or not self._cpu_capture:
            return self.llm.generate(inputs, params, use_tqdm=False), None
        with capturing(self.llm) as captured:
            outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return outputs, captured

    # ---- generation -------------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, group_tag: str = "") -> list[Trajectory]:
        """``sampling.n`` samples per prompt, all prompts in one ``llm.generate`` call (vLLM batches them).

        Seeding: with ``sampling.seed`` set, a prompt's seed is derived from ``(seed, prompt_id)`` and vLLM
        gives its ``i``-th sample that seed ``+ i``. Every sample has its own generator, so a group's samples
        differ from each other but do not depend on batch order or composition. Change the seed between
        iterations (the trainer passes its step).
        """
        check_inputs(prompts, sampling, self.max_model_len)
        if not prompts:
            return []
        params = [self._sampling_params(sampling, prompt_seed(sampling.seed, p.prompt_id)) for p in prompts]
        inputs = [{"prompt_token_ids": list(p.prompt_ids)} for p in prompts]
        outputs, captured = self.routed_generate(inputs, params, sampling.routed_experts)
        trajs: list[Trajectory] = []
        for prompt, out in zip(prompts, outputs, strict=True):
            trajs += self._output_trajectories(prompt, out, sampling, group_tag, captured)
        return trajs

    def generate_stream(self, prompts: list[Prompt], sampling: SamplingConfig,
                        on_prompt: Callable[[Prompt, list[Trajectory]], None]) -> None:
        """:meth:`generate` (same seeds, same samples) that hands each prompt's samples to ``on_prompt`` as soon as
        vLLM has finished them, so a long evaluation can save its work as it goes (``longcot.eval.resumable``).
        All requests are queued at once, so continuous batching is as in :meth:`generate`. If ``on_prompt`` raises
        (or Ctrl-C), the requests still running are aborted before the exception goes on."""
        check_inputs(prompts, sampling, self.max_model_len)
        if sampling.routed_experts:
            raise ValueError("generate_stream does not capture routing (MoE routing replay): use generate")
        if not prompts:
            return
        params = [self._sampling_params(sampling, prompt_seed(sampling.seed, p.prompt_id)) for p in prompts]
        ids = self.llm.enqueue([{"prompt_token_ids": list(p.prompt_ids)} for p in prompts], params, use_tqdm=False)
        # enqueue returns vLLM's internal ids ("7-1a2b3c4d"); outputs carry the request id it was made from ("7")
        waiting = {_request_key(rid): (rid, prompt) for rid, prompt in zip(ids, prompts, strict=True)}
        engine = self.llm.llm_engine
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished and _request_key(out.request_id) in waiting:
                        _, prompt = waiting.pop(_request_key(out.request_id))
                        on_prompt(prompt, self._output_trajectories(prompt, out, sampling, "", None))
        except BaseException:
            engine.abort_request([rid for rid, _ in waiting.values()], internal=True)
            raise
        if waiting:
            raise RuntimeError(f"vLLM stopped without finishing {len(waiting)} requests (e.g. prompt "
                               f"{next(iter(waiting.values()))[1].prompt_id!r})")

    def _output_trajectories(self, prompt: Prompt, out: Any, sampling: SamplingConfig, group_tag: str,
                             captured: dict | None) -> list[Trajectory]:
        """The trajectories of one prompt's finished vLLM request (its ``sampling.n`` samples)."""
        # vLLM refuses n > 1 when greedy; greedy samples are identical, so one is repeated n times.
        repeat = sampling.n if sampling.temperature == 0 else 1
        detokenized = bool(sampling.stop)  # see _sampling_params
        trajs = []
        for comp in [c for c in sorted(out.outputs, key=lambda c: c.index) for _ in range(repeat)]:
            ids = list(comp.token_ids)
            lps = _sampled_logprobs(comp.logprobs, ids, prompt.prompt_id) if sampling.logprobs else []
            if comp.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM finished prompt {prompt.prompt_id!r} with {comp.finish_reason!r}")
            text = comp.text if detokenized else self._decode(ids)
            rows = self.routing_rows(captured, out, comp, list(prompt.prompt_ids) + ids) \
                if sampling.routed_experts else None
            trajs.append(make_trajectory(prompt, group_tag, ids, lps, text, comp.finish_reason, self.version,
                                         sampling.temperature, rows))
        return trajs

    def _decode(self, ids: list[int]) -> str:
        """The response text, decoded once at the end (what vLLM's incremental detokenizer would produce)."""
        tok = self.tokenizer if self.tokenizer is not None and not isinstance(self.tokenizer, (str, os.PathLike)) \
            else self.llm.get_tokenizer()
        return tok.decode(ids, skip_special_tokens=True)

    def _sampling_params(self, sampling: SamplingConfig, seed: int | None):
        from vllm import SamplingParams

        return SamplingParams(
            n=1 if sampling.temperature == 0 else sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=0 if sampling.top_k in (-1, 0) else sampling.top_k, max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None, seed=seed, logprobs=0 if sampling.logprobs else None,
            # Keep the stop string in the text: response_text then always decodes from response_ids.
            include_stop_str_in_output=True,
            # Per-token Python work that a rollout does not need: vLLM detokenizes every new token (and the
            # logprob token) and builds a {token: Logprob} dict per position. Flat logprobs are plain lists,
            # and without stop strings the text is decoded once per response instead (generate()). On the
            # tiny MoE this was about a quarter of a compiled decode step.
            flat_logprobs=True, detokenize=bool(sampling.stop),
        )

    def compute_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """Logprob of each response token given the prompt and the previous tokens (temperature 1).

        Uses vLLM's ``prompt_logprobs`` on the concatenated sequence, so it is the engine's own forward pass:
        compare it with the trainer's to measure the rollout/trainer mismatch or to check a weight sync.
        """
        from vllm import SamplingParams

        check_pairs(prompt_ids, response_ids)
        if not prompt_ids:
            return []
        seqs = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
        for i, s in enumerate(seqs):
            if len(s) >= self.max_model_len:
                raise ValueError(f"compute_logprobs: sequence {i} has {len(s)} tokens >= max_model_len")
        # seeded: the one sampled token is discarded, and an unseeded request would draw from the global RNG
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, seed=0)
        outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], params, use_tqdm=False)
        result = []
        for p, s, out in zip(prompt_ids, seqs, outs, strict=True):
            # prompt_logprobs[k] scores token s[k] given s[:k]; entry 0 is None.
            result.append([out.prompt_logprobs[k][s[k]].logprob for k in range(len(p), len(s))])
        return result

    # ---- weights ----------------------------------------------------------------------------------------
    def sync_weights(self, named_params: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load the trainer's weights into vLLM in place, then drop KV blocks computed with the old ones.

        ``named_params`` are HF checkpoint names (``model.named_parameters()``; ``module.``/``_orig_mod.``
        prefixes are stripped). vLLM's ``load_weights`` fuses q/k/v, gate/up and expert weights itself.
        """
        t0 = time.perf_counter()
        weights = checkpoint_named_params(named_params)
        if self.llm.llm_engine.vllm_config.parallel_config.world_size > 1:
            # tensor/pipeline-parallel workers are processes of their own: the arguments are pickled to each, and
            # a lazy iterator cannot be (one full list instead; GPUs should use cluster.weight_transport=nccl)
            weights = list(weights)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if self.repack_moe_after_sync:
            self.llm.collective_rpc(_repack_on_worker)
        self.llm.reset_prefix_cache()
        self.version = version
        self.last_sync_s = time.perf_counter() - t0
        log.debug("synced weights v%d in %.3fs", version, self.last_sync_s)

    def release_memory(self) -> bool:
        """Offload the weights to CPU and drop the KV cache (vLLM sleep mode, level 1) while a colocated trainer
        updates; False (nothing done) without CUDA or ``enable_sleep_mode``."""
        if not self.can_sleep or self.asleep:
            return False
        self.llm.sleep(level=1)
        self.asleep = True
        return True

    def restore_memory(self) -> None:
        """Bring weights and KV cache back (before the weight sync and the next generation)."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def shutdown(self) -> None:
        """Free the engine so another ``VLLMEngine`` can start in this process."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        gc.collect()
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()


def _sampled_logprobs(logprobs: Any, ids: list[int], prompt_id: str) -> list[float]:
    """The sampled tokens' logprobs from vLLM's per-position logprobs (``logprobs=0``: the sampled token only)."""
    from vllm.logprobs import FlatLogprobs

    if not isinstance(logprobs, FlatLogprobs):
        return [step[tok].logprob for step, tok in zip(logprobs, ids, strict=True)]
    starts = logprobs.start_indices
    if len(starts) != len(ids) or any(logprobs.token_ids[s] != t for s, t in zip(starts, ids, strict=True)):
        raise RuntimeError(f"vLLM logprobs do not line up with the sampled tokens (prompt {prompt_id!r})")
    return [logprobs.logprobs[s] for s in starts]


def _repack_on_worker(worker: Any) -> int:
    """Runs inside the vLLM worker (``collective_rpc`` passes it as ``self``)."""
    return repack_fused_moe(worker.model_runner.model)


def _request_key(request_id: str) -> str:
    """The request id an output reports, from either form (``LLM.enqueue`` returns ``"<id>-<random suffix>"``)."""
    return request_id.rsplit("-", 1)[0]


def _tokenizer_path(tokenizer: Any) -> str | None:
    """A local tokenizer directory for vLLM, if the caller's tokenizer object came from one."""
    if isinstance(tokenizer, (str, os.PathLike)):
        return str(tokenizer)
    path = getattr(tokenizer, "name_or_path", None)
    return path if path and os.path.isdir(path) else None
