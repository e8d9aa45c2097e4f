"""SFT warm-up with TRL's SFTTrainer: teach the output format (steps, then ``\\boxed{}``) before RL.

Prompt/completion pairs, loss on the completion only, EOS appended, so the policy learns to stop.

A long SFT is resumable mid-stage through TRL's own checkpoints (``OUT/trl/checkpoint-N``: weights, optimizer,
schedule, RNG states, the data position), written every ``checkpoint_every`` optimizer steps and when a signal
stops the run; a resumed SFT ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import datasets
from transformers import TrainerCallback
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from longcot.policies.optimizers import build_optimizer, optimizer_metrics
from longcot.run.preemption import Preempted, StopOnSignal

log = logging.getLogger(__name__)


def run_sft(model, tokenizer, pairs: list[tuple[str, str]], out_dir: str | Path, *, lr: float, epochs: float,
            batch_size: int, warmup_ratio: float = 0.05, weight_decay: float = 0.0, seed: int = 0,
            max_length: int = 1024, gradient_checkpointing: bool = False, device: str = "cpu",
            precision: str = "fp32", optimizer: str = "adamw", optimizer_options: dict | None = None,
            checkpoint_every: int = 0, resume_from: str | Path | None = None, stop: StopOnSignal | None = None) -> dict:
    """Fine-tune ``model`` in place on (prompt, completion) pairs and save it to ``out_dir``.

    ``checkpoint_every`` > 0 writes a TRL checkpoint into ``out_dir/trl`` every that many optimizer steps;
    ``resume_from`` (see :func:`last_checkpoint`) continues from one. With ``stop`` (an active
    :class:`StopOnSignal`), a SIGTERM/Ctrl-C finishes the optimizer step in progress, writes a checkpoint and
    raises :class:`Preempted` instead of saving the model as finished.

    ``device`` ("cpu" or "cuda") and ``precision`` ("fp32" or "bf16-mixed") are the RL trainer's
    (``trainer.device``/``trainer.precision`` resolved, longcot.rl.strategy): float32 master weights, bf16
    compute under bf16-mixed (TRL's ``bf16=True``, autocast). Returns TRL's training metrics (final loss,
    runtime). The model object is updated in place, so the caller can continue with RL without reloading; its
    gradient-checkpointing state is restored afterwards (TRL leaves it switched on, and an RL trainer
    continuing on the object would silently recompute every forward in backward).
    """
    if device not in ("cpu", "cuda") or precision not in ("fp32", "bf16-mixed"):
        raise ValueError(f"run_sft: device must be cpu|cuda and precision fp32|bf16-mixed, got {device}, {precision}")
    model.float()  # master weights in float32, as in RL
    was_checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    out_dir = Path(out_dir)
    ds = datasets.Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})
    args = TRLSFTConfig(
        output_dir=str(out_dir / "trl"), learning_rate=lr, num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, warmup_steps=warmup_ratio, weight_decay=weight_decay,
        lr_scheduler_type="cosine", logging_steps=25, report_to=[], seed=seed, save_total_limit=1,
        **({"save_strategy": "steps", "save_steps": checkpoint_every} if checkpoint_every else {"save_strategy": "no"}),
        max_length=max_length, completion_only_loss=True, use_cpu=device == "cpu", dataloader_num_workers=0,
        disable_tqdm=False, bf16=precision == "bf16-mixed", fp16=False, gradient_checkpointing=gradient_checkpointing,
        # transformers 5.19's Qwen3-MoE load-balancing loss breaks on padded batches (shape mismatch between
        # routing weights and the attention mask): the warm-up runs without the auxiliary loss.
        router_aux_loss_coef=0.0,
    )
    # adamw: TRL's own (same AdamW); muon/muonclip: ours (policies/optimizers.py), TRL's schedule on top
    opt = None if optimizer == "adamw" and not optimizer_options else build_optimizer(
        model, optimizer, lr=lr, betas=(args.adam_beta1, args.adam_beta2), weight_decay=weight_decay,
        options=optimizer_options, where="sft.optimizer")
    trainer = _SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                         optimizers=(opt, None), callbacks=[_SaveAndStopOnSignal(stop)] if stop else None)
    if resume_from is not None:
        log.info("SFT: continuing from %s", resume_from)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    if stop is not None and stop.requested and trainer.state.global_step < trainer.state.max_steps:
        raise Preempted(stop.signum, str(last_checkpoint(out_dir)))  # stopped early: not saved as finished
    if model.is_gradient_checkpointing and not was_checkpointing:
        model.gradient_checkpointing_disable()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics = dict(result.metrics)
    metrics["final_loss"] = next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None)
    if opt is not None:
        metrics.update(optimizer_metrics(opt))  # MuonClip: the last step's max attention logit
        qk = getattr(opt, "qk_clip", None)
        if qk is not None:
            qk.remove()  # its hooks must not outlive SFT (RL builds its own optimizer)
    return metrics


class _SFTTrainer(SFTTrainer):
    """TRL's SFTTrainer, with a resume that loads MoE weights. Transformers 5.19's Trainer reads a checkpoint's
    weights with a bare ``load_state_dict``, which skips the checkpoint-format conversion (one tensor per expert on
    disk, fused experts in memory) and leaves every expert at its pre-resume value behind a missing-keys warning
    (huggingface/transformers#48805). ``from_pretrained`` applies the conversion (holding a second copy of the
    weights in CPU memory for a moment); the strict load below fails loudly if any key still differs."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict())


class _SaveAndStopOnSignal(TrainerCallback):
    """After the optimizer step during which a signal arrived: write a checkpoint and end training."""

    def __init__(self, stop: StopOnSignal) -> None:
        self.stop = stop

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.requested:
            control.should_save = control.should_training_stop = True
        return control


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete TRL checkpoint under ``out_dir/trl``, or None. Transformers writes ``trainer_state.json``
    last, so a checkpoint without it was torn by a kill mid-write: it is deleted (the one before it is kept until
    a newer one is complete)."""
    root = Path(out_dir) / "trl"
    found = sorted(root.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)
    for path in found:
        if (path / "trainer_state.json").is_file():
            return path
        log.warning("SFT checkpoint %s is incomplete (killed while it was written): deleting it", path)
        shutil.rmtree(path)
    return None


def remove_checkpoints(out_dir: str | Path) -> None:
    """Delete the SFT's TRL checkpoints once the finished model is saved and recorded (each holds the optimizer
    state: twice the model again)."""
    shutil.rmtree(Path(out_dir) / "trl", ignore_errors=True)
