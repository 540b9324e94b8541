"""transfer(): apply a learned schedule, unchanged, to new seeds (or inverted real images) and measure the edit.

The paper's observation (Sec. 4.3): lambdas learned for one seed give the same edit on other seeds. A learned
schedule is a JSON file (``MixSchedule.save``) whose metadata says what it was made for (model, prompts, sampler,
steps, guidance); :func:`transfer` reads those, refuses a schedule made for another step count or model unless
told to adapt it (``resample=True``), samples each seed twice (pure c0 and edited, same noise) and returns a
labelled grid and a per-seed metrics table.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from PIL import Image

from .conditioning import Conditioning, encode
from .errors import DisentkitError, ModelNotFoundError, PromptError
from .losses import Clip, CLIPPerceptualLoss, DirectionalCLIPLoss, default_clip, load_clip
from .noise import NoiseTape
from .optimize import model_id
from .sampling import sample
from .schedules import MixSchedule


class ScheduleModelError(DisentkitError, ValueError):
    """A schedule learned on one model is applied to a different model."""


@dataclass
class TransferResult:
    """What :func:`transfer` made.

    Attributes:
        grid: a labelled PIL image; row 0 the pure-c0 images, row 1 the edited ones, one column per seed.
        metrics: one row per seed: ``seed``, ``clip_direction`` (cosine of the image move with the text move,
            1 is best), ``perceptual`` (distance to the pure-c0 image, 0 is identical), plus evaluator columns.
        edited, reference: PIL images per seed; ``edited_pixels``/``reference_pixels``: (B, 3, H, W) in [0, 1].
        schedule: the schedule as applied (resampled if it had to be).
    """

    grid: Image.Image
    metrics: pd.DataFrame
    edited: list[Image.Image]
    reference: list[Image.Image]
    edited_pixels: torch.Tensor
    reference_pixels: torch.Tensor
    schedule: MixSchedule

    def __iter__(self):
        """``grid, metrics = dk.transfer(...)``: the two things most callers want."""
        return iter((self.grid, self.metrics))


def fit_schedule(schedule: MixSchedule, pipe=None, steps: int | None = None, resample: bool = False) -> MixSchedule:
    """Check that ``schedule`` was made for ``pipe``'s model and ``steps`` steps; adapt it only if ``resample``.

    A different step count raises :class:`~disentkit.errors.ScheduleLengthError` (with ``resample=True`` the curve
    is resampled to ``steps``); a different model raises :class:`ScheduleModelError` (with ``resample=True`` it is
    used anyway, with a warning). Schedules or pipelines that do not say their model are not checked for it.
    """
    made_for, running = schedule.meta.get("model") or "", model_id(pipe) if pipe is not None else ""
    if made_for and running and made_for != running:
        message = (
            f"schedule {schedule.label!r} was learned on model {made_for!r} but this pipeline is {running!r}; "
            "lambdas need not transfer between models. Pass resample=True to apply it anyway."
        )
        if not resample:
            raise ScheduleModelError(message)
        warnings.warn(message.replace(" Pass resample=True to apply it anyway.", ""), stacklevel=3)
    if steps is not None and steps != schedule.steps:
        return schedule.resample(steps) if resample else schedule.check_steps(steps)
    return schedule


def load_schedule(path: str | os.PathLike, pipe=None, steps: int | None = None, resample: bool = False) -> MixSchedule:
    """:meth:`MixSchedule.load` plus the checks of :func:`fit_schedule`."""
    return fit_schedule(MixSchedule.load(path), pipe, steps, resample)


def transfer(
    pipe,
    schedule: MixSchedule | str | os.PathLike,
    seeds: int | Sequence[int] | NoiseTape,
    cond: Conditioning | None = None,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    resample: bool = False,
    clip: Clip | str | os.PathLike | bool | None = None,
    evaluator=None,
    target: tuple[str, str] | None = None,
    max_batch: int | None = None,
    progress: bool = True,
) -> TransferResult:
    """Apply ``schedule`` to ``seeds`` and compare each edit with the pure-c0 image of the same noise.

    Args:
        pipe: a pipeline from :func:`disentkit.load_pipeline`.
        schedule: a :class:`MixSchedule` or the path of a saved one (e.g. ``OptimizeResult.schedule``).
        seeds: one seed, a list of seeds, or a :class:`NoiseTape` (e.g. from :func:`disentkit.invert`).
        cond: the prompt pair; default: the prompts in the schedule's metadata.
        steps: sampling steps; default: the schedule's (its metadata's sampler and eta are used for new tapes).
        guidance: default: an inverted tape's own guidance, else the schedule's metadata, else 7.5.
        resample: adapt a schedule made for another step count or model instead of raising.
        clip: the CLIP for the metrics (a :class:`~disentkit.losses.Clip`, folder or hub id); None: the default
            for this model if it can be loaded (else the CLIP columns are left out, with a warning); False: none.
        evaluator: optional toyworld evaluator (``content_kept(edited, reference)``, ``style_reached(images,
            factor, value)``) adding content and style columns.
        target: the (factor, value) the edit should reach for ``style_reached``; default: read from the prompts
            when they are toyworld captions.
    """
    schedule = MixSchedule.load(schedule) if isinstance(schedule, (str, os.PathLike)) else schedule
    meta = schedule.meta
    if isinstance(seeds, NoiseTape):
        tape = seeds
    else:
        seed_list = [seeds] if isinstance(seeds, int) else [int(s) for s in seeds]
        sampler = meta.get("scheduler", "ddim")
        eta = float(meta.get("eta", 0.0))
        tape = NoiseTape.from_seed(pipe, seed_list, steps or meta.get("steps", schedule.steps), sampler, eta)
    schedule = fit_schedule(schedule, pipe, tape.steps, resample)
    if cond is None:
        if "prompts" not in meta:
            raise PromptError("the schedule's metadata has no prompts; pass cond=dk.encode(pipe, c0, c1).")
        cond = encode(pipe, *meta["prompts"])
    if guidance is None:  # an inverted tape replays its image only under the guidance it was inverted with
        guidance = tape.guidance if tape.guidance is not None else float(meta.get("guidance", 7.5))
    guidance = float(guidance)

    pure = MixSchedule.constant(tape.steps, 0.0)
    out = sample(pipe, cond, [pure, schedule], tape, guidance, max_batch=max_batch, progress=progress)
    B = tape.batch
    reference_pixels, edited_pixels = out.pixels[:B], out.pixels[B:]  # runs are (schedule, seed), seed fastest

    metrics = pd.DataFrame({"seed": list(tape.seeds)})
    clip = _metrics_clip(clip, pipe)
    if clip is not None:
        with torch.no_grad():
            direction = DirectionalCLIPLoss(clip, cond.prompts0[0], cond.prompts1[0])
            metrics["clip_direction"] = (1 - direction(edited_pixels, reference_pixels)).cpu().numpy()
            metrics["perceptual"] = CLIPPerceptualLoss(clip)(edited_pixels, reference_pixels).cpu().numpy()
    if evaluator is not None:
        metrics = _evaluate(metrics, evaluator, edited_pixels, reference_pixels, target, cond)

    labels = [f"seed {s}" if s is not None else f"image {k}" for k, s in enumerate(tape.seeds)]
    grid = _grid(reference_pixels, edited_pixels, labels, cond)
    return TransferResult(grid, metrics, out.images[B:], out.images[:B], edited_pixels, reference_pixels, schedule)


def _metrics_clip(clip, pipe) -> Clip | None:
    if clip is False:
        return None
    if isinstance(clip, Clip):
        return clip
    try:
        return load_clip(clip if clip is not None else default_clip(pipe), pipe.unet.device)
    except ModelNotFoundError as err:
        if clip is not None:
            raise
        warnings.warn(f"no CLIP for the metrics, so the CLIP columns are left out ({err})", stacklevel=3)
        return None


def _evaluate(metrics, evaluator, edited, reference, target, cond) -> pd.DataFrame:
    kept = evaluator.content_kept(edited, reference).reset_index(drop=True)
    metrics = pd.concat([metrics, kept.add_prefix("content_")], axis=1)
    target = target or _caption_target(cond.prompts0[0], cond.prompts1[0])
    if target is not None:
        factor, value = target
        metrics["target"] = f"{factor}={value}"
        metrics["style_edited"] = evaluator.style_reached(edited, factor, value).cpu().numpy()
        metrics["style_reference"] = evaluator.style_reached(reference, factor, value).cpu().numpy()
        metrics["style_gain"] = metrics["style_edited"] - metrics["style_reference"]
    return metrics


def _caption_target(c0: str, c1: str) -> tuple[str, str] | None:
    """The one factor that c1 pins and c0 does not, when both are toyworld captions (else None)."""
    from .toyworld.scenes import parse_caption  # only toyworld captions can be read this way

    try:
        before, after = parse_caption(c0), parse_caption(c1)
    except ValueError:
        return None
    changed = [(k, v) for k, v in after.items() if before.get(k) != v]
    return changed[0] if len(changed) == 1 else None


def _grid(reference: torch.Tensor, edited: torch.Tensor, labels: list[str], cond: Conditioning) -> Image.Image:
    from .plotting import figure_to_png, image_grid

    fig = image_grid(
        torch.cat([reference, edited]),
        rows=2,
        cols=len(labels),
        row_labels=["pure c0", "edited"],
        col_labels=labels,
        title=f"{cond.prompts0[0]!r} -> {cond.prompts1[0]!r}",
    )
    return Image.open(io.BytesIO(figure_to_png(fig))).convert("RGB")
