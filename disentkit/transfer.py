"""transfer(): apply a learned schedule, unchanged, to new seeds (or inverted real images) and measure the edit.

The paper's observation (Sec. 4.3): lambdas learned for one seed give the same edit on other seeds. A learned
schedule is a JSON file (``MixSchedule.save``) whose metadata says what it was made for (model, prompts, sampler,
steps, guidance, image size); :func:`transfer` reads those, refuses a schedule made for another step count, model
or image size unless told (``resample=True`` adapts the step count; ``allow_other_model``/``allow_other_size`` apply
it anyway), samples each seed twice (pure c0 and edited, same noise, at the size the schedule was learned at) and
returns a labelled grid and a per-seed metrics table.

The CLIP metrics need a CLIP. Without one named (``clip=None``), transfer uses the model's default (the toy CLIP for
toyworld, ``openai/clip-vit-base-patch32`` otherwise) when it is in the local cache or can be downloaded, and
otherwise leaves the CLIP columns out with a warning (at once, without waiting on the network); ``clip=False``
leaves them out silently; a CLIP that is named but cannot be loaded is an error. The command line does the same.
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
from .errors import ImageSizeError, ModelNotFoundError, PromptError, ScheduleModelError
from .losses import Clip, CLIPPerceptualLoss, DirectionalCLIPLoss, default_clip, load_clip
from .noise import NoiseTape
from .pipeline import locate, model_fingerprint, model_id, quiet_loading, same_model
from .sampling import sample
from .schedules import MixSchedule
from .targets import edit_target_or_none


@dataclass
class TransferResult:
    """What :func:`transfer` made.

    Attributes:
        grid: a labelled PIL image; row 0 the pure-c0 images, row 1 the edited ones, one column per seed.
        metrics: one row per seed: ``seed``, ``clip_direction`` (cosine of the image move with the text move,
            1 is best), ``perceptual`` (distance to the pure-c0 image, 0 is identical), plus evaluator columns, and
            ``nsfw_reference``/``nsfw_edited`` when the pipeline has a safety checker (flagged images are black).
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


def fit_schedule(
    schedule: MixSchedule,
    pipe=None,
    steps: int | None = None,
    resample: bool = False,
    *,
    height: int | None = None,
    width: int | None = None,
    allow_other_model: bool = False,
    allow_other_size: bool = False,
) -> MixSchedule:
    """Check that ``schedule`` fits the run: ``pipe``'s model, ``steps`` steps, ``height`` x ``width`` pixels.

    - Steps: a different count raises :class:`~disentkit.errors.ScheduleLengthError`; ``resample=True`` resamples
      the curve to ``steps``.
    - Model: the schedule's ``model_fingerprint`` (recorded by :func:`disentkit.optimize`) is compared with
      ``pipe``'s (:func:`disentkit.pipeline.model_fingerprint`): the same weights pass from any folder, hub id, dtype
      or device; other weights raise :class:`ScheduleModelError`, and ``allow_other_model=True`` applies it anyway
      (with a warning). A schedule without a fingerprint (older files) is compared by its ``model`` name.
    - Size: a schedule that records the ``height``/``width`` it was learned at, applied at another size, raises
      :class:`~disentkit.errors.ImageSizeError`; ``allow_other_size=True`` applies it anyway (with a warning).

    ``resample=True`` used to mean "apply it anyway" for another model too; it still does, with a
    ``FutureWarning`` that names ``allow_other_model``. What a schedule or pipeline does not say is not checked.
    """
    meta = schedule.meta
    if pipe is not None and _other_model(meta, pipe):
        message = (
            f"schedule {schedule.label!r} was learned on {_describe(meta, pipe)} but this pipeline is "
            f"{model_id(pipe) or 'unnamed'!r}; lambdas need not transfer between models. "
            "Pass allow_other_model=True to apply it anyway."
        )
        if not (allow_other_model or resample):
            raise ScheduleModelError(message)
        if resample and not allow_other_model:
            warnings.warn("resample=True no longer means 'apply a schedule to another model'; pass "
                          "allow_other_model=True for that (resample adapts the step count only).",
                          FutureWarning, stacklevel=3)  # fmt: skip
        warnings.warn(message.replace(" Pass allow_other_model=True to apply it anyway.", ""), stacklevel=3)
    made_at = (meta.get("height"), meta.get("width"))
    if None not in made_at and height is not None and width is not None and made_at != (height, width):
        message = (
            f"schedule {schedule.label!r} was learned at {made_at[1]}x{made_at[0]} px but this run makes "
            f"{width}x{height}; "
            "the steps at which content and style are decided move with the image size. Use "
            f"height={made_at[0]}, width={made_at[1]}, or pass allow_other_size=True to apply it anyway."
        )
        if not allow_other_size:
            raise ImageSizeError(message)
        warnings.warn(message.split(" Use height=")[0], stacklevel=3)
    if steps is not None and steps != schedule.steps:
        return schedule.resample(steps) if resample else schedule.check_steps(steps)
    return schedule


def _other_model(meta: dict, pipe) -> bool:
    """Whether the schedule's metadata names a model that ``pipe`` is not (False when it names none)."""
    if _by_fingerprint(meta, pipe):
        return not same_model(meta["model_fingerprint"], model_fingerprint(pipe))
    made_for, running = meta.get("model") or "", model_id(pipe)
    return bool(made_for and running and made_for != running)


def _by_fingerprint(meta: dict, pipe) -> bool:
    # Files written before fingerprints were recorded, and objects that are not pipelines, are compared by name.
    return bool(meta.get("model_fingerprint")) and hasattr(pipe, "components")


def _describe(meta: dict, pipe) -> str:
    name = meta.get("model") or "an unnamed model"
    if _by_fingerprint(meta, pipe):
        return f"other weights (model {name!r})"
    if meta.get("model_fingerprint"):
        return f"model {name!r}"
    return f"model {name!r} (its file predates model fingerprints, so only the names could be compared)"


def load_schedule(path: str | os.PathLike, pipe=None, steps: int | None = None, resample: bool = False,
                  **checks) -> MixSchedule:  # fmt: skip
    """:meth:`MixSchedule.load` plus the checks of :func:`fit_schedule` (``checks``: its keyword arguments)."""
    return fit_schedule(MixSchedule.load(path), pipe, steps, resample, **checks)


def transfer(
    pipe,
    schedule: MixSchedule | str | os.PathLike,
    seeds: int | Sequence[int] | NoiseTape,
    cond: Conditioning | None = None,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    resample: bool = False,
    height: int | None = None,
    width: int | None = None,
    allow_other_model: bool = False,
    allow_other_size: bool = False,
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
        resample: adapt a schedule made for another step count instead of raising.
        height, width: image size in pixels for new seeds; default: the size the schedule was learned at (its
            ``height``/``width`` metadata), else the model's default. A tape brings its own size.
        allow_other_model, allow_other_size: apply a schedule learned on another model / at another size anyway
            (see :func:`fit_schedule`).
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
        if height is None and width is None:  # the size the schedule was learned at, when it says
            height, width = meta.get("height"), meta.get("width")
        tape = NoiseTape.from_seed(
            pipe, seed_list, steps or meta.get("steps", schedule.steps), sampler, eta, height=height, width=width
        )
    made = tape.image_size(pipe)  # (height, width) of every image of this transfer
    if (height is not None and height != made[0]) or (width is not None and width != made[1]):
        raise ImageSizeError(f"the tape makes {made[1]}x{made[0]} px images, but height={height}, width={width} was "
                             "asked for; pass a tape of that size, or no size.")  # fmt: skip
    schedule = fit_schedule(
        schedule, pipe, tape.steps, resample, height=made[0], width=made[1],
        allow_other_model=allow_other_model, allow_other_size=allow_other_size,
    )  # fmt: skip
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
    if out.nsfw is not None:  # the pipeline's safety checker ran; flagged images are black
        metrics["nsfw_reference"], metrics["nsfw_edited"] = out.nsfw[:B], out.nsfw[B:]
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
        return load_metrics_clip(clip, pipe)
    except ModelNotFoundError as err:
        if clip is not None:
            raise
        warnings.warn(f"no CLIP for the metrics, so the CLIP columns are left out ({err})", stacklevel=3)
        return None


def load_metrics_clip(clip: str | os.PathLike | None, pipe, fix: str = "pass clip=FOLDER (or clip=False)") -> Clip:
    """Load ``clip`` (default: :func:`~disentkit.losses.default_clip` of ``pipe``) on ``pipe``'s device, from the
    local cache when it is there, failing at once (:class:`ModelNotFoundError` saying ``fix``) when it is neither
    cached nor downloadable."""
    name = os.fspath(clip) if clip is not None else default_clip(pipe)
    where = locate(name, what="CLIP", fix=fix)
    with quiet_loading():
        return load_clip(where, pipe.unet.device if pipe is not None else "cpu")


def _evaluate(metrics, evaluator, edited, reference, target, cond) -> pd.DataFrame:
    kept = evaluator.content_kept(edited, reference).reset_index(drop=True)
    metrics = pd.concat([metrics, kept.add_prefix("content_")], axis=1)
    target = target or edit_target_or_none(cond.prompts0[0], cond.prompts1[0])
    if target is not None:
        factor, value = target
        metrics["target"] = f"{factor}={value}"
        metrics["style_edited"] = evaluator.style_reached(edited, factor, value).cpu().numpy()
        metrics["style_reference"] = evaluator.style_reached(reference, factor, value).cpu().numpy()
        metrics["style_gain"] = metrics["style_edited"] - metrics["style_reference"]
    return metrics


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
