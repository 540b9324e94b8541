"""MixSchedule: the per-step weight lambda_i of the styled prompt.

Step i (0 = noisiest) of the sampler is conditioned on ``c_i = (1 - lambda_i) * c0 + lambda_i * c1`` (the
paper's convention: lambda is the weight of the *styled* prompt c1). A schedule is plain data: N weights, or
N x T weights for per-token mixing, plus a label and free-form metadata. Weights may leave [0, 1].
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .errors import InvalidScheduleError, ScheduleLengthError, TapeFileError
from .files import write_json_atomic

SCHEDULE_FORMAT = "disentkit.mixschedule/1"


@dataclass(frozen=True)
class MixSchedule:
    """Weights of the styled prompt per sampling step.

    Attributes:
        weights: float32 tensor of shape (N,) or, for per-token mixing, (N, T) with T the text length.
        label: a short human name ("switch@20"), used in plots and tables.
        meta: free-form metadata (the model, prompts, sampler, guidance... a learned schedule was made for).
    """

    weights: torch.Tensor
    label: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        w = torch.as_tensor(self.weights, dtype=torch.float32).detach().cpu()
        if w.ndim not in (1, 2) or w.shape[0] < 1:
            raise InvalidScheduleError(
                f"schedule weights must have shape (steps,) or (steps, tokens), got {tuple(w.shape)}."
            )
        if not torch.isfinite(w).all():
            bad = (~torch.isfinite(w)).nonzero()[:, 0].unique().tolist()
            raise InvalidScheduleError(f"schedule weights must be finite; steps {bad} hold NaN or inf.")
        object.__setattr__(self, "weights", w)

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def constant(cls, steps: int, value: float = 1.0) -> "MixSchedule":
        """The same weight at every step (0: pure c0, 1: pure c1)."""
        return cls(torch.full((_check_steps(steps),), float(value)), f"constant {value:g}")

    @classmethod
    def switch(cls, steps: int, at: int, before: float = 0.0, after: float = 1.0) -> "MixSchedule":
        """``before`` (c0) for steps 0..at-1, then ``after`` (c1, or e.g. 1.2 as the paper's init) from step ``at`` on."""
        _check_steps(steps)
        if not 0 <= at <= steps:
            raise InvalidScheduleError(f"switch step must be in 0..{steps} for {steps} steps, got {at}.")
        w = torch.full((steps,), float(before))
        w[at:] = float(after)
        return cls(w, f"switch@{at}", {"switch": at})

    @classmethod
    def ramp(cls, steps: int, start: int, end: int, lo: float = 0.0, hi: float = 1.0) -> "MixSchedule":
        """``lo`` until step ``start``, a linear ramp, ``hi`` from step ``end`` on."""
        _check_steps(steps)
        if not 0 <= start <= end <= steps:
            raise InvalidScheduleError(f"need 0 <= start <= end <= steps, got start={start}, end={end}, steps={steps}.")
        i = torch.arange(steps, dtype=torch.float32)
        frac = ((i - start) / max(end - start, 1)).clamp(0, 1) if end > start else (i >= start).float()
        return cls(lo + (hi - lo) * frac, f"ramp {start}-{end}")

    @classmethod
    def sigmoid(cls, steps: int, center: float, width: float = 2.0, lo: float = 0.0, hi: float = 1.0) -> "MixSchedule":
        """A smooth switch around step ``center``; ``width`` steps is the 1/e scale of the transition."""
        _check_steps(steps)
        if width <= 0:
            raise InvalidScheduleError(f"width must be positive, got {width}.")
        i = torch.arange(steps, dtype=torch.float32)
        return cls(lo + (hi - lo) * torch.sigmoid((i - center) / width), f"sigmoid@{center:g}")

    @classmethod
    def from_array(cls, weights, label: str = "", meta: dict | None = None) -> "MixSchedule":
        """From any array-like of N (or N x T) weights: a list, a NumPy array or a tensor (copied, detached)."""
        if isinstance(weights, torch.Tensor):  # np.array() on a tensor warns under NumPy 2; NumPy has no bfloat16
            weights = weights.detach().to("cpu", torch.float32).numpy()
        return cls(torch.tensor(np.array(weights, dtype=np.float32)), label, dict(meta or {}))

    @classmethod
    def from_dataframe(cls, df: pd.DataFrame, column: str = "lambda", label: str = "") -> "MixSchedule":
        """From a DataFrame with a ``step`` column (0..N-1, any order) and a weight column."""
        if "step" not in df or column not in df:
            raise InvalidScheduleError(f"DataFrame needs columns 'step' and {column!r}; it has {list(df.columns)}.")
        ordered = df.sort_values("step")
        if ordered["step"].tolist() != list(range(len(ordered))):
            raise InvalidScheduleError("the 'step' column must hold each of 0..N-1 exactly once.")
        return cls.from_array(ordered[column].to_numpy(), label or column)

    # ---- views --------------------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.weights.shape[0]

    @property
    def per_token(self) -> bool:
        return self.weights.ndim == 2

    def __len__(self) -> int:
        return self.steps

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.weights.shape))
        return f"MixSchedule({self.label or 'unnamed'!r}, {shape}, min={self.weights.min():.3g}, max={self.weights.max():.3g})"

    def to_dataframe(self) -> pd.DataFrame:
        """One row per step: ``step``, ``lambda`` (per-token schedules: ``lambda`` is the token mean, plus one
        ``lambda_t{k}`` column per token)."""
        w = self.weights.numpy()
        df = pd.DataFrame({"step": np.arange(self.steps), "lambda": w.mean(axis=1) if self.per_token else w})
        if self.per_token:
            for k in range(w.shape[1]):
                df[f"lambda_t{k}"] = w[:, k]
        df["label"] = self.label
        return df

    def check_steps(self, steps: int) -> "MixSchedule":
        """Raise :class:`ScheduleLengthError` unless the schedule has ``steps`` weights."""
        if self.steps != steps:
            raise ScheduleLengthError(
                f"schedule {self.label!r} has {self.steps} weights but the sampler runs {steps} steps; "
                f"use schedule.resample({steps}) (or resample=True where a function offers it)."
            )
        return self

    # ---- transformations ----------------------------------------------------------------------------------
    def resample(self, steps: int) -> "MixSchedule":
        """The same curve over ``steps`` steps (linear interpolation in normalised sampling time)."""
        _check_steps(steps)
        if steps == self.steps:
            return self
        old = np.linspace(0.0, 1.0, self.steps) if self.steps > 1 else np.zeros(1)
        new = np.linspace(0.0, 1.0, steps)
        w = self.weights.numpy().reshape(self.steps, -1)
        out = np.stack([np.interp(new, old, w[:, k]) for k in range(w.shape[1])], axis=1)
        out = out if self.per_token else out[:, 0]
        meta = {**self.meta, "resampled_from": self.steps}
        return MixSchedule(torch.as_tensor(out, dtype=torch.float32), self.label, meta)

    def on_tokens(self, token_mask: Sequence[float] | torch.Tensor, rest: float = 0.0) -> "MixSchedule":
        """Per-token version: tokens where ``token_mask`` is 1 follow this schedule, the others stay at ``rest``.

        ``token_mask`` has one entry per text token (T, e.g. 77 for SD); fractional entries blend.
        """
        mask = torch.as_tensor(token_mask, dtype=torch.float32).flatten()
        base = self.weights if not self.per_token else self.weights.mean(dim=1)
        w = base[:, None] * mask[None, :] + rest * (1 - mask[None, :])  # (N, T)
        return MixSchedule(w, f"{self.label} (tokens)", dict(self.meta))

    def with_meta(self, **meta) -> "MixSchedule":
        return MixSchedule(self.weights, self.label, {**self.meta, **meta})

    # ---- files --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": SCHEDULE_FORMAT,
            "label": self.label,
            "steps": self.steps,
            "weights": self.weights.tolist(),
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON (human-readable, diff-able), atomically."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MixSchedule":
        path = Path(path)
        if not path.is_file():
            raise TapeFileError(f"no schedule file at {path}.")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != SCHEDULE_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {SCHEDULE_FORMAT!r}")
            sched = cls.from_array(data["weights"], data.get("label", ""), data.get("meta", {}))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise TapeFileError(f"{path} is not a readable disentkit schedule ({err}).") from err
        if sched.steps != data["steps"]:
            raise TapeFileError(f"{path}: header says {data['steps']} steps, data has {sched.steps}.")
        return sched


def _check_steps(steps: int) -> int:
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InvalidScheduleError(f"steps must be a positive int, got {steps!r}.")
    return int(steps)


def stack_weights(schedules: Sequence[MixSchedule], steps: int, tokens: int) -> torch.Tensor:
    """The (S, N, T) weight tensor of ``schedules``, checked against ``steps`` and broadcast over ``tokens``."""
    rows = []
    for s in schedules:
        s.check_steps(steps)
        w = s.weights
        if s.per_token and w.shape[1] != tokens:
            raise InvalidScheduleError(
                f"per-token schedule {s.label!r} has {w.shape[1]} token weights but the prompts have {tokens} tokens."
            )
        rows.append(w if s.per_token else w[:, None].expand(steps, tokens))
    return torch.stack(rows)

