"""Stage bookkeeping shared by every training stage: the learning-rate schedule, logging, checkpoints written
atomically, resuming, and the time budget."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from disentkit.files import torch_save_atomic, write_text_atomic

from .config import StageConfig, TrainConfig


# The old name of disentkit.files.torch_save_atomic, which training code here has always called.
atomic_torch_save = torch_save_atomic


def learning_rate(stage: StageConfig, step: int, progress: float) -> float:
    """Linear warmup over warmup_steps, then cosine decay to 10% over the stage's progress (0..1)."""
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def log(message: str) -> None:
    """A timestamped line that does not break the progress bars."""
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}")


class Stage:
    """One training stage's state on disk: run_dir/<name>/checkpoint.pt (+ done.json when finished)."""

    def __init__(self, run_dir: Path, name: str, config: StageConfig, more_minutes: float | None = None,
                 more_lr_scale: float = 0.5):  # fmt: skip
        self.dir = run_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.config = name, config
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self.done_path = self.dir / "done.json"
        self.step, self.elapsed, self.history = 0, 0.0, []
        # A round is one pass of the learning-rate schedule over a time budget. Round 0 is the stage's own; a
        # finished stage given more minutes (--more) starts another from where it stopped.
        self.round = dict(index=0, start_step=0, start_elapsed=0.0, minutes=config.minutes, lr=config.lr)
        self.reopen = more_minutes if (more_minutes and self.done_path.exists()) else None
        self.more_lr_scale = more_lr_scale

    @property
    def done(self) -> bool:
        return self.done_path.exists() and self.reopen is None

    def load(self) -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)  # our own file
        self.step, self.elapsed, self.history = state["step"], state["elapsed"], state["history"]
        self.round = state.get("round", self.round)
        if self.reopen is not None:
            index = self.round["index"] + 1
            self.round = dict(index=index, start_step=self.step, start_elapsed=self.elapsed, minutes=self.reopen,
                              lr=self.config.lr * self.more_lr_scale)
            # The finished round's summary is kept beside the checkpoint; done.json comes back when this round ends.
            os.replace(self.done_path, self.dir / f"done.round{index - 1}.json")
            self.reopen = None
            log(f"{self.name}: round {index}, {self.round['minutes']:g} more minutes from step {self.step}")
        else:
            log(f"{self.name}: resuming at step {self.step} ({self.elapsed / 60:.1f} min done)")
        return state

    def save(self, **state) -> None:
        atomic_torch_save(dict(step=self.step, elapsed=self.elapsed, history=self.history, round=self.round, **state),
                          self.checkpoint_path)

    def finish(self, summary: dict) -> None:
        summary = dict(stage=self.name, steps=self.step, minutes=self.elapsed / 60, **summary)
        write_text_atomic(self.done_path, json.dumps(summary, indent=2))
        log(f"{self.name}: done, {json.dumps(summary)}")

    def progress(self) -> float:
        """How far through the current round (0..1), by steps or by time, whichever is further."""
        r = self.round
        return max((self.step - r["start_step"]) / self.config.max_steps,
                   (self.elapsed - r["start_elapsed"]) / (60 * r["minutes"]))

    def loop(self, desc: str):
        """Yields step numbers until the step count or time budget is used up; keeps `elapsed` current."""
        bar = tqdm(total=self.round["start_step"] + self.config.max_steps, initial=self.step, desc=desc, mininterval=10, dynamic_ncols=True)
        while self.progress() < 1.0:
            start = time.perf_counter()
            yield self.step
            self.step += 1
            self.elapsed += time.perf_counter() - start
            bar.update(1)
        bar.close()


def open_stage(cfg: "TrainConfig", run_dir: Path, name: str) -> Stage:
    """The stage `name` of the run in run_dir, with its budget and any --more round from cfg."""
    return Stage(run_dir, name, getattr(cfg, name), cfg.more.get(name), cfg.more_lr_scale)


def set_lr(optimizer, stage: Stage) -> float:
    """Set (and return) the learning rate for the stage's next step: warmup, then cosine over the current round."""
    config = replace(stage.config, lr=stage.round["lr"])
    lr = learning_rate(config, stage.step - stage.round["start_step"], stage.progress())
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def run_checkpointed(stage: Stage, step_fn, save_fn, desc: str) -> None:
    """The shared loop: one optimisation step per iteration, a log line every log_every steps, a checkpoint
    every checkpoint_minutes and at the end."""
    last_save = time.monotonic()
    running = []
    for step in stage.loop(desc):
        metrics = step_fn(step)
        running.append(metrics)
        if (step + 1) % stage.config.log_every == 0:
            mean = {k: float(np.mean([m[k] for m in running])) for k in running[0]}
            stage.history.append(dict(step=step + 1, minutes=round(stage.elapsed / 60, 3), **mean))
            log(f"{stage.name} step {step + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in mean.items()))
            running = []
        if time.monotonic() - last_save > 60 * stage.config.checkpoint_minutes:
            save_fn()
            last_save = time.monotonic()
    save_fn()


def _restore(state: dict, rng: np.random.Generator, **parts) -> None:
    """Resume a stage from its checkpoint: each named part (model, optimizer, EMA...) and the random streams, so a
    resumed run continues exactly where the interrupted one stopped."""
    for key, part in parts.items():
        part.load_state_dict(state[key])
    rng.bit_generator.state = state["rng"]
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])

