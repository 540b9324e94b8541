"""The ``disentkit`` command line: learn an edit, apply it to a photo, transfer it to new seeds.

    disentkit disentangle --c0 "a photo of a face" --c1 "a photo of a face, smiling" --seed 42 --switch 20 --out out/smile
    disentkit edit --input photo.png --c0 "a photo of a face" --c1 "a photo of a face, smiling" --schedule out/smile/schedule.json --out out/photo
    disentkit transfer out/smile/schedule.json --seeds 0-15 --out out/smile-transfer
    disentkit map --pairs sd-paper --model CompVis/stable-diffusion-v1-4 --seeds 0-15 --switch 0-50 --out out/map

Every subcommand writes its images (PNG), the schedule it used (``schedule.json``) and a CSV of metrics into
``--out`` (folders are created; every file is written atomically). ``--model`` takes "toyworld" (the default), a
local diffusers folder or a hub id; ``--clip`` any CLIP folder or hub id for the losses and metrics. Every argument
is checked before the model loads, and a model or CLIP that is neither local nor cached fails at once when the hub
cannot be reached. ``--height``/``--width`` set the image size (default: the model's; for ``edit`` the photo's own,
each side rounded to a multiple of 8; for ``transfer`` the size the schedule was learned at).

CLIP: ``disentangle`` needs one (its losses); ``edit`` and ``transfer`` use one for their metric columns only, and
without ``--clip`` they use the model's default CLIP if it is cached or downloadable, else leave those columns out
with a warning, as :func:`disentkit.transfer` does. A ``--clip`` that cannot be loaded is an error.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from . import demo
from .errors import DisentkitError
from .files import atomic_path, write_text_atomic

DEFAULT_MODEL = "toyworld"
FIT_CHOICES = ("resize", "crop", "pad")  # disentkit.inversion.FITS, without importing torch-heavy modules for --help


# ---- small helpers ---------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """ "0-15" -> [0, ..., 15]; "1,4,7-9" -> [1, 4, 7, 8, 9]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:  # a range (a leading minus would be a negative seed; seeds are >= 0 anyway)
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like '42', '0-15' or '1,4,7-9', got {text!r}") from None
    return seeds


def save_image(image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def save_csv(df: pd.DataFrame, path: Path) -> Path:
    return write_text_atomic(path, df.to_csv(index=False))


def _load(args):
    """The pipeline named by --model on --device (imports kept here so `disentkit --help` is instant)."""
    from .pipeline import load_pipeline

    dtype = torch.float16 if args.half else None
    extra = {"safety_checker": None} if getattr(args, "no_safety_checker", False) else {}
    return load_pipeline(args.model, device=args.device, dtype=dtype, **extra)


CLIP_FIX = "pass --clip FOLDER (a CLIP such as openai/clip-vit-base-patch32, saved with save_pretrained) or a cached id"


def _locate_clip(args, required: bool):
    """Where the CLIP of --clip (default: the model's) loads from, found before the model loads. Fails at once when it
    cannot be had; for metrics only (``required=False``) and no --clip, warns and returns None (no CLIP columns)."""
    from types import SimpleNamespace

    from .errors import ModelNotFoundError
    from .losses import default_clip
    from .pipeline import TOYWORLD, locate, toyworld_dir

    model = args.model or DEFAULT_MODEL
    name = args.clip or default_clip(SimpleNamespace(name_or_path=str(toyworld_dir()) if model == TOYWORLD else model))
    try:
        return locate(name, what="CLIP", fix=CLIP_FIX)
    except ModelNotFoundError as err:
        if required or args.clip:
            raise
        warnings.warn(f"no CLIP for the metrics, so the CLIP columns are left out ({err})", stacklevel=2)
        return None


def _clip(where, args):
    from .losses import load_clip
    from .pipeline import quiet_loading

    with quiet_loading():
        return None if where is None else load_clip(where, device=args.device)


def _check_common(args) -> None:
    """What every subcommand can check before anything loads: the device, the image size, the sampler, the prompts."""
    from .errors import ImageSizeError, PromptError
    from .pipeline import resolve_device
    from .samplers import sampler_spec

    resolve_device(args.device)
    for flag in ("height", "width"):
        value = getattr(args, flag, None)
        if value is not None and (value < 8 or value % 8):
            raise ImageSizeError(f"--{flag} must be a positive multiple of 8 (SD's VAE factor), got {value}.")
    if getattr(args, "sampler", None) is not None:
        sampler_spec(args.sampler)
    for flag in ("c0", "c1"):  # an empty prompt would run a whole optimisation towards nothing
        value = getattr(args, flag, None)
        if value is not None and not value.strip():
            raise PromptError(f"--{flag} is empty; give a prompt, e.g. --c0 'a photo of a face' "
                              "--c1 'a photo of a face, smiling'.")  # fmt: skip
    if getattr(args, "steps", None) is not None and args.steps < 1:
        from .errors import InvalidScheduleError

        raise InvalidScheduleError(f"--steps must be at least 1, got {args.steps}.")


def _allow_other_model(args, schedule, pipe) -> bool:
    """--allow-other-model, or the old --resample where the schedule was made for another model (with a warning)."""
    from .transfer import _other_model

    if args.allow_other_model or not args.resample or not _other_model(schedule.meta, pipe):
        return args.allow_other_model
    warnings.warn("--resample no longer applies a schedule learned on another model; use --allow-other-model for that "
                  "(--resample adapts the step count only).", FutureWarning, stacklevel=2)  # fmt: skip
    return True


def _toy_evaluator(pipe):
    """The toyworld evaluator, when the model is toyworld and its weights are installed; else None."""
    from .map import toy_evaluator

    return toy_evaluator(pipe)


# ---- subcommands ---------------------------------------------------------------------------------------------------
def cmd_disentangle(args) -> int:
    from .conditioning import encode
    from .errors import OptionError
    from .noise import NoiseTape
    from .optimize import optimize, reference_init

    out = Path(args.out)
    # Everything that can fail without the model fails before it loads (minutes for SDXL).
    _check_common(args)
    switch = args.switch if args.switch is not None else round(0.4 * args.steps)  # 20 of 50, as edit's default
    init = reference_init(args.steps, c0_steps=switch, late=args.late)  # checks the switch step against --steps
    for flag, ok in (("iters", args.iters >= 0), ("lr", args.lr > 0), ("beta", args.beta >= 0), ("eta", args.eta >= 0)):
        if not ok:
            bound = "positive" if flag == "lr" else "at least 0"
            raise OptionError(f"--{flag} must be {bound}, got {getattr(args, flag)}.")
    clip_source = _locate_clip(args, required=True)  # the losses need a CLIP: no model load without one
    pipe = _load(args)
    cond = encode(pipe, args.c0, args.c1)
    tape = NoiseTape.from_seed(pipe, args.seed, steps=args.steps, scheduler=args.sampler, eta=args.eta,
                               height=args.height, width=args.width)  # fmt: skip
    result = optimize(
        pipe, cond, init, tape, iters=args.iters, lr=args.lr, beta=args.beta, guidance=args.guidance,
        clip=_clip(clip_source, args), checkpoint_dir=out / ".checkpoint", optimizer=args.optimizer,
        learn_steps=switch if args.learn_from_switch else None, floors=args.floors, progress=not args.quiet,
    )  # fmt: skip
    save_image(result.reference_images[0], out / "original.png")
    save_image(result.images[0], out / "edited.png")
    result.schedule.save(out / "schedule.json")
    save_csv(result.history, out / "metrics.csv")
    kept = result.history.loc[result.history["iteration"] == result.best_iteration].iloc[-1]
    print(f"learned {args.steps} lambdas in {args.iters} iterations (loss {result.history['loss'].iloc[0]:.4f} -> "
          f"{kept['loss']:.4f}, kept iteration {result.best_iteration}); wrote {out}/{{original,edited}}.png, "
          "schedule.json, metrics.csv")  # fmt: skip
    return 0


def cmd_edit(args) -> int:
    from .conditioning import encode
    from .inversion import encode_image, invert, load_image, prepare_image
    from .losses import CLIPPerceptualLoss, DirectionalCLIPLoss, psnr
    from .sampling import decode, sample, to_pil
    from .schedules import MixSchedule
    from .transfer import fit_schedule

    out = Path(args.out)
    # What can fail without the model fails before it is loaded: the image, the schedule file, the switch step.
    _check_common(args)
    image = load_image(args.input)
    if args.schedule:
        schedule = MixSchedule.load(args.schedule)
        steps = args.steps if args.steps is not None else schedule.steps
        schedule = fit_schedule(schedule, None, steps, args.resample)  # the step count now, the model once loaded
        if args.height and args.width:  # an explicit size is checked now too; the photo's own once it is known
            fit_schedule(schedule, None, height=args.height, width=args.width, allow_other_size=args.allow_other_size)
    else:
        steps = args.steps if args.steps is not None else 50
        switch = args.switch if args.switch is not None else round(0.4 * steps)  # disentangle's 20 of 50
        schedule = MixSchedule.switch(steps, switch, 0.0, args.late)
        guidance = args.guidance if args.guidance is not None else (7.5 if args.method == "exact" else 1.0)
    clip_source = _locate_clip(args, required=False)
    pipe = _load(args)
    # The photo keeps its aspect ratio: its own size with each side rounded to a multiple of the VAE's factor, or
    # --height/--width reached as --fit says.
    image = prepare_image(pipe, image, args.height, args.width, args.fit)
    height, width = image.shape[-2:]
    if args.schedule:
        schedule = fit_schedule(schedule, pipe, steps, args.resample, height=height, width=width,
                                allow_other_model=_allow_other_model(args, schedule, pipe),
                                allow_other_size=args.allow_other_size)  # fmt: skip
        guidance = args.guidance if args.guidance is not None else float(schedule.meta.get("guidance", 7.5))
        made_with = schedule.meta.get("scheduler", "ddim")
        if made_with != "ddim":  # inversion runs DDIM; the lambdas were learned for another sampler
            warnings.warn(f"{args.schedule} was made for the {made_with!r} sampler; the edit runs DDIM, the only "
                          "sampler inversion supports, so its weights may act differently.", stacklevel=2)
    schedule = schedule.with_meta(prompts=[args.c0, args.c1], steps=steps, scheduler="ddim", guidance=guidance,
                                  height=int(height), width=int(width))  # fmt: skip

    tape = invert(pipe, image, args.c0, steps=steps, method=args.method, guidance=guidance, progress=not args.quiet)
    cond = encode(pipe, args.c0, args.c1)
    result = sample(pipe, cond, [MixSchedule.constant(steps, 0.0), schedule], tape, guidance, progress=not args.quiet)
    with torch.no_grad():
        as_vae_sees_it = decode(pipe, encode_image(pipe, image)).float().cpu()
    reconstruction, edited = result.pixels[:1], result.pixels[1:]
    metrics = {
        "method": args.method,
        "steps": steps,
        "guidance": guidance,
        "psnr_reconstruction_db": float(psnr(reconstruction, image)),
        "psnr_reconstruction_vs_vae_db": float(psnr(reconstruction, as_vae_sees_it)),
    }
    metrics["height"], metrics["width"] = int(height), int(width)
    if result.nsfw is not None:  # the pipeline's safety checker ran; a flagged image is black
        metrics["nsfw_reconstruction"], metrics["nsfw_edited"] = result.nsfw
    clip = _clip(clip_source, args)
    if clip is not None:
        with torch.no_grad():
            direction = DirectionalCLIPLoss(clip, args.c0, args.c1)
            metrics["clip_direction"] = float(1 - direction(edited, reconstruction)[0])
            metrics["perceptual"] = float(CLIPPerceptualLoss(clip)(edited, reconstruction)[0])

    save_image(to_pil(image)[0], out / "input.png")
    save_image(result.images[0], out / "reconstruction.png")
    save_image(result.images[1], out / "edited.png")
    schedule.save(out / "schedule.json")
    tape.save(out / "tape.safetensors")
    save_csv(pd.DataFrame([metrics]), out / "metrics.csv")
    print(f"inverted ({args.method}, reconstruction {metrics['psnr_reconstruction_db']:.1f} dB) and edited; wrote {out}")
    return 0


def cmd_transfer(args) -> int:
    from .schedules import MixSchedule
    from .transfer import fit_schedule, transfer

    out = Path(args.out)
    _check_common(args)
    schedule = MixSchedule.load(args.schedule)
    if args.model is None:  # the model the schedule was learned on, if it says
        args.model = schedule.meta.get("model") or DEFAULT_MODEL
    # The step count and an explicit size are checked before the model loads; the model once it has.
    fit_schedule(schedule, None, args.steps, args.resample)
    if args.height or args.width:
        made = (schedule.meta.get("height"), schedule.meta.get("width"))
        fit_schedule(schedule, None, height=args.height or made[0], width=args.width or made[1],
                     allow_other_size=args.allow_other_size)  # fmt: skip
    clip_source = _locate_clip(args, required=False)
    pipe = _load(args)
    result = transfer(
        pipe, schedule, args.seeds, steps=args.steps, guidance=args.guidance, resample=args.resample,
        height=args.height, width=args.width, allow_other_model=_allow_other_model(args, schedule, pipe),
        allow_other_size=args.allow_other_size, clip=_clip(clip_source, args) if clip_source else False,
        evaluator=_toy_evaluator(pipe), progress=not args.quiet,
    )  # fmt: skip
    save_image(result.grid, out / "grid.png")
    for seed, original, edited in zip(args.seeds, result.reference, result.edited):
        save_image(original, out / f"original_seed{seed}.png")
        save_image(edited, out / f"edited_seed{seed}.png")
    result.schedule.save(out / "schedule.json")
    save_csv(result.metrics, out / "metrics.csv")
    summary = result.metrics.drop(columns=["seed"]).mean(numeric_only=True)
    print(f"applied {args.schedule} to {len(args.seeds)} seeds; mean " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    return 0


def parse_switches(text: str) -> list[int]:
    """ "0-50" -> [0, ..., 50]; "0-50:5" -> [0, 5, ..., 50]; "10,12,15-17" as for seeds."""
    steps: list[int] = []
    try:
        for part in text.split(","):
            part, _, stride = part.strip().partition(":")
            lo, _, hi = part.partition("-")
            lo, hi, stride = int(lo), int(hi or lo), int(stride or 1)
            if hi < lo or stride < 1 or lo < 0:
                raise ValueError
            steps.extend(range(lo, hi + 1, stride))
    except ValueError:
        raise argparse.ArgumentTypeError(f"switch steps look like '20', '0-50', '0-50:5' or '10,15-20', got {text!r}") from None
    return sorted(set(steps))


def cmd_map(args) -> int:
    """The disentanglement map. Everything that can fail without the model fails before it loads: the pairs file,
    the metric names, the switch steps, the optional lpips package, and the CLIP/backbone (loaded first)."""
    import os

    from .errors import UnknownMetricError
    from .losses import OPENAI_CLIP
    from .map import RECOMMENDED, as_pairs, check_switches, disentanglement_map, write_map_report
    from .metrics import DEFAULT_METRICS, METRICS, Scorer, check_metrics

    pairs = as_pairs(args.pairs)
    metrics = check_metrics(args.metrics or DEFAULT_METRICS)
    content, style = args.content or RECOMMENDED[0], args.style or RECOMMENDED[1]
    for flag, name in (("--content", content), ("--style", style)):
        if name not in metrics and not name.startswith("evaluator_"):
            raise UnknownMetricError(f"{flag} {name} is not among the metrics computed ({','.join(metrics)}); add "
                                     f"it to --metrics or choose one of them.")  # fmt: skip
    check_switches(args.switch, args.steps)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and args.device in (None, "cuda") and torch.cuda.is_available():
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per process under accelerate launch
    args.device = args.device or "cpu"
    clip = args.clip
    if clip is None and args.model != DEFAULT_MODEL:
        clip = OPENAI_CLIP  # what default_clip(pipe) gives every model but toyworld: checked now, not after loading
    needs = {METRICS[m].needs for m in metrics}
    scorer = Scorer(metrics, clip if "clip" in needs else None, args.backbone, args.device,
                    flags={"clip": "--clip", "backbone": "--backbone"})  # fmt: skip
    pipe = _load(args)
    df = disentanglement_map(
        pipe, pairs, args.seeds, args.switch, metrics=metrics, steps=args.steps, guidance=args.guidance,
        out=args.out, progress=not args.quiet, scorer=scorer, late=args.late, max_batch=args.max_batch,
        evaluator=False if args.no_evaluator else None, height=args.height, width=args.width,
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:  # one process writes the report
        windows = write_map_report(df, args.out, content, style, figures=not args.no_figures)
        print(f"mapped {len(pairs)} pairs x {len(args.seeds)} seeds x {len(args.switch)} switch steps ({len(df)} "
              f"images); a window on {int(windows['found'].sum())}/{len(windows)} pairs ({content} kept, {style} "
              f"reached); wrote {args.out}/map.csv, windows.csv, summary.md" + ("" if args.no_figures else ", figures/"))
    return 0


# ---- the parser ----------------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, model_default: str | None = DEFAULT_MODEL) -> None:
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--model", default=model_default, help="'toyworld', a diffusers folder or a hub id")
    p.add_argument("--clip", default=None, help="CLIP folder or hub id for losses/metrics (default: the model's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--half", action="store_true", help="float16 weights (GPUs)")
    p.add_argument("--no-safety-checker", action="store_true",
                   help="load without the model's safety checker (SD 1.x): images are not filtered, nothing is flagged")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _size(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--height", type=int, default=None, help=f"image height in px, a multiple of 8 (default: {default})")
    p.add_argument("--width", type=int, default=None, help=f"image width in px, a multiple of 8 (default: {default})")


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resample", action="store_true", help="adapt a schedule made for another step count")
    p.add_argument("--allow-other-model", action="store_true",
                   help="apply a schedule learned on other weights than --model's anyway")
    p.add_argument("--allow-other-size", action="store_true",
                   help="apply a schedule learned at another image size anyway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disentkit", description="Learn an edit of a text-to-image model, apply it to a photo, transfer it to new seeds."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("disentangle", help="learn the per-step lambdas of an edit for one seed")
    p.add_argument("--c0", required=True, help="neutral prompt, e.g. 'a photo of a face'")
    p.add_argument("--c1", required=True, help="styled prompt, e.g. 'a photo of a face, smiling'")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--switch", type=int, default=None,
                   help="initial schedule: c0 for this many steps (default: 40%% of --steps, 20 of 50; paper: 10-20)")
    p.add_argument("--late", type=float, default=1.0, help="initial lambda after the switch (paper: 1.0-1.2)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=0.05, help="weight of the perceptual loss")
    p.add_argument("--optimizer", choices=["adam", "tensorwise-adam"], default="adam",
                   help="adam (the paper's) or tensorwise-adam (lambdas move in proportion to their gradients)")
    p.add_argument("--learn-from-switch", action="store_true",
                   help="learn only the steps from --switch on; the first --switch steps stay pure c0")
    p.add_argument("--floors", type=float, default=0.0, metavar="WEIGHT",
                   help="per-term floors of this weight at the initial switch's values (e.g. 10): ending worse than "
                        "the switch on style or content is penalised; 0 (default): off")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--sampler", "--scheduler", dest="sampler", default="ddim",
                   help="the sampler's name: ddim, plms, dpm, euler, ... (--scheduler: its former name)")
    p.add_argument("--eta", type=float, default=0.0)
    _size(p, "the model's")
    _common(p)
    p.set_defaults(func=cmd_disentangle)

    p = sub.add_parser("edit", help="invert a real image and edit it with a schedule")
    p.add_argument("--input", required=True, help="the image (PNG, JPEG...)")
    p.add_argument("--c0", required=True, help="prompt describing the image")
    p.add_argument("--c1", required=True, help="styled prompt")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--schedule", help="a schedule file (e.g. from `disentkit disentangle`)")
    how.add_argument("--switch", type=int, default=None,
                     help="or a switch schedule: c0 for this many steps, then c1 (the default: 40%% of the steps, "
                          "20 of 50, as disentangle starts)")
    p.add_argument("--late", type=float, default=1.0, help="lambda after --switch")
    p.add_argument("--steps", type=int, default=None, help="default: the schedule's, or 50")
    p.add_argument("--method", choices=["exact", "ddim"], default="exact", help="inversion method")
    p.add_argument("--guidance", type=float, default=None, help="default: the schedule's; 7.5 (exact) / 1.0 (ddim)")
    _size(p, "the photo's own, each side rounded to a multiple of 8")
    p.add_argument("--fit", choices=FIT_CHOICES, default="resize",
                   help="how the photo reaches --height/--width: resize (may change its proportions), crop or pad")
    _overrides(p)
    _common(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("transfer", help="apply a learned schedule to new seeds")
    p.add_argument("schedule", help="a schedule file")
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-15"), help="e.g. 0-15 or 1,4,7-9")
    p.add_argument("--steps", type=int, default=None, help="default: the schedule's")
    p.add_argument("--guidance", type=float, default=None, help="default: the schedule's")
    _size(p, "the size the schedule was learned at")
    _overrides(p)
    _common(p, model_default=None)
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("map", help="the disentanglement map: content and style over pairs x seeds x switch steps",
                       description="Score every (pair, seed, switch step) image and find each pair's window. Resumes "
                       "an interrupted run in the same --out. On several GPUs: accelerate launch --num_processes 8 -m "
                       "disentkit map ...; on a CPU: accelerate launch --multi_gpu --num_processes 2 -m disentkit map ...")
    p.add_argument("--pairs", required=True,
                   help="CSV with columns c0,c1 (optional name, target, alternatives), or 'sd-paper' for the paper's pairs")
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-15"), help="e.g. 0-15 or 1,4,7-9")
    p.add_argument("--switch", type=parse_switches, default=parse_switches("0-50"), help="e.g. 0-50 or 0-50:5")
    p.add_argument("--metrics", default=None, help="comma-separated (default: clip_prob,clip_dir,clip_text,"
                   "struct_clip,pixel,latent; also struct_dino with --backbone, lpips with the lpips package)")
    p.add_argument("--backbone", default=None, help="DINO/DINOv2/ViT folder or hub id for struct_dino")
    p.add_argument("--content", default=None, help="content metric of the windows (default: docs/metrics.md's pick)")
    p.add_argument("--style", default=None, help="style metric of the windows (default: docs/metrics.md's pick)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--late", type=float, default=1.0, help="lambda after the switch (paper: 1.0-1.2)")
    p.add_argument("--max-batch", type=int, default=None, help="at most this many images per UNet call (memory)")
    p.add_argument("--no-figures", action="store_true", help="only the CSVs and the summary")
    p.add_argument("--no-evaluator", action="store_true", help="on toyworld: leave out the evaluator's columns")
    _size(p, "the model's")
    _common(p)
    p.set_defaults(func=cmd_map, device=None)

    p = sub.add_parser("demo", help="the main job: a switch-step grid, then every notebook, into --out")
    demo.add_arguments(p)
    p.set_defaults(func=demo.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on a usage or disentkit error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DisentkitError as err:
        print(f"disentkit {args.command}: {type(err).__name__}: {_for_the_command_line(err)}", file=sys.stderr)
        return 2


def _for_the_command_line(err: DisentkitError) -> str:
    """The error's message with its Python fix spelled as the flag that does the same."""
    from .errors import ScheduleLengthError
    from .transfer import ScheduleModelError

    message = str(err)
    if isinstance(err, (ScheduleLengthError, ScheduleModelError)):
        message = re.sub(r"[;.]? ?(use schedule\.resample\(\d+\)[^.]*|Pass (resample|allow_other_model)=True[^.]*)\.?$",
                         "", message)  # fmt: skip
        message += "; add --resample to adapt it." if isinstance(err, ScheduleLengthError) else (
            "; add --allow-other-model to apply it anyway.")
    message = re.sub(r"Use height=(\d+), width=(\d+), or pass allow_other_size=True",
                     r"Use --height \1 --width \2, or add --allow-other-size", message)  # fmt: skip
    return message


if __name__ == "__main__":
    sys.exit(main())
