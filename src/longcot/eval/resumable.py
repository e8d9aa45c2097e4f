"""``longcot eval`` that keeps its work through a crash, with a progress bar.

An AIME-protocol evaluation (30 problems x 64 samples x up to 32k tokens) runs for tens of minutes on a GPU; a
crash, an out-of-memory kill or Ctrl-C near the end used to lose all of it. Here every problem's samples are
appended to ``OUT/samples.partial.jsonl`` (and flushed to disk) the moment the engine has finished them, and a rerun
into the same ``OUT`` with the same generation protocol generates only the problems that are not there yet. The
samples do not depend on which problems run together (each problem's seed is a hash of the seed and its id,
``longcot.rollout.common.prompt_seed``), so with vLLM a resumed evaluation grades the same samples as an
uninterrupted one. The HF engine samples from torch's global generator: there the problems generated after the
resume get other samples than an uninterrupted run would have drawn (as valid, not the same).

vLLM: all requests are still queued at once (continuous batching as before) and each problem is saved as soon as
its last sample finishes (``VLLMEngine.generate_stream``). Engines without streaming (``--engine hf``) generate
``HF_CHUNK`` problems per call and save after each call. The file is removed once ``samples.jsonl`` is written.
``longcot long2short`` draws its samples of the long model the same way (``longcot.long2short.samples``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from longcot.errors import InputError
from longcot.eval.evaluate import sample_rows
from longcot.rollout.base import Prompt, SamplingConfig

log = logging.getLogger(__name__)
PARTIAL = "samples.partial.jsonl"
# protocol keys that change what is generated (k and the grader only change the grading of the same samples)
GENERATION_KEYS = ("model", "engine", "dataset", "split", "template", "prompt", "n", "temperature", "top_p",
                   "top_k", "max_tokens", "seed")
HF_CHUNK = 8


class ResumableGeneration:
    """``evaluate``'s ``generate``: returns the sample rows of ``prompts`` (in prompt order) and the ids of the
    problems that were read back from an earlier, interrupted run instead of generated."""

    def __init__(self, engine: Any, tokenizer: Any, out_dir: str | Path, protocol: dict[str, Any],
                 progress: bool = True, *, keys: Sequence[str] = GENERATION_KEYS,
                 rows: Callable[[Prompt, list], list[dict]] | None = None, chunk: int = HF_CHUNK,
                 desc: str = "eval", elsewhere: str = "evaluate into another --out") -> None:
        """``keys``: the protocol entries that must match to resume; ``rows``: one problem's finished
        trajectories -> the records saved for it (default: ``sample_rows``; long2short grades them here);
        ``chunk``: problems per call on engines that do not stream; ``desc``: the progress bar's and log's label;
        ``elsewhere``: how to keep an interrupted run of another protocol (said when one is refused)."""
        self.engine, self.tokenizer = engine, tokenizer
        self.path = Path(out_dir) / PARTIAL
        self.protocol = {k: protocol.get(k) for k in keys}
        self.progress = progress and os.environ.get("LONGCOT_NO_PROGRESS") != "1"
        self.rows = rows or (lambda prompt, trajs: sample_rows(trajs, self.tokenizer))
        self.chunk, self.desc, self.elsewhere = chunk, desc, elsewhere

    def __call__(self, prompts: list[Prompt], sampling: SamplingConfig) -> tuple[list[dict], set[str]]:
        done = self._read()
        wanted = {p.prompt_id for p in prompts}
        resumed = set(done) & wanted
        todo = [p for p in prompts if p.prompt_id not in done]
        if resumed:
            log.info("%s: %d of %d problems read back from %s (an interrupted run); generating the other %d",
                     self.desc, len(resumed), len(prompts), self.path, len(todo))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f, self._bar(len(prompts), len(resumed)) as bar:
            if f.tell() == 0:
                self._append(f, {"protocol": self.protocol})
            start, tokens = time.perf_counter(), 0

            def save(prompt: Prompt, trajs: list) -> None:
                nonlocal tokens
                rows = self.rows(prompt, trajs)
                self._append(f, {"id": prompt.prompt_id, "samples": rows})
                done[prompt.prompt_id] = rows
                tokens += sum(len(t.response_ids) for t in trajs)
                bar.update(1)
                bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):.0f} tok/s", refresh=False)

            self._generate(todo, sampling, save)
        return [row for p in prompts for row in done[p.prompt_id]], resumed

    def finish(self) -> None:
        """Called once ``samples.jsonl`` holds everything: the partial file is no longer needed."""
        self.path.unlink(missing_ok=True)

    def _generate(self, prompts: list[Prompt], sampling: SamplingConfig, save) -> None:
        stream = getattr(self.engine, "generate_stream", None)
        if stream is not None:
            stream(prompts, sampling, save)
            return
        for i in range(0, len(prompts), self.chunk):
            chunk = prompts[i:i + self.chunk]
            trajs = self.engine.generate(chunk, sampling, group_tag="")
            for prompt in chunk:
                save(prompt, [t for t in trajs if t.prompt_id == prompt.prompt_id])

    def _read(self) -> dict[str, list[dict]]:
        """The problems an earlier run into this directory finished, if it ran the same protocol."""
        if not self.path.is_file():
            return {}
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines()
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1:  # only the last line can be cut short by a crash mid-write
                    raise InputError(f"{self.path}: line {i + 1} is not JSON; delete it to start afresh") from None
        saved = records[0].get("protocol", {}) if records else {}
        diff = {k: (saved.get(k), v) for k, v in self.protocol.items() if saved.get(k) != v}
        if diff:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise InputError(f"{self.path} holds the samples of an interrupted {self.desc} with another protocol "
                             f"({shown}); {self.elsewhere}, or delete that file to start afresh")
        if text and not text.endswith("\n"):  # a write cut short: keep the whole records, then append after them
            self.path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                 encoding="utf-8")
        return {r["id"]: r["samples"] for r in records[1:]}

    @staticmethod
    def _append(f, record: dict) -> None:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())

    def _bar(self, total: int, initial: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=self.desc, unit="problem", dynamic_ncols=True,
                    disable=not self.progress)
