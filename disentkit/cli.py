"""The ``disentkit`` command line: learn an edit, apply it to a photo, transfer it to new seeds.

    disentkit disentangle --c0 "a photo of a face" --c1 "a photo of a face, smiling" --seed 42 --switch 20 --out out/smile
    disentkit edit --input photo.png --c0 "a photo of a face" --c1 "a photo of a face, smiling" --schedule out/smile/schedule.json --out out/photo
    disentkit transfer out/smile/schedule.json --seeds 0-15 --out out/smile-transfer

Every subcommand writes its images (PNG), the schedule it used (``schedule.json``) and a CSV of metrics into
``--out`` (folders are created; every file is written atomically). ``--model`` takes "toyworld" (the default), a
local diffusers folder or a hub id; ``--clip`` any CLIP folder or hub id for the losses and metrics.
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
    return load_pipeline(args.model, device=args.device, dtype=dtype)


def _clip(args, pipe):
    from .losses import default_clip, load_clip

    return load_clip(args.clip or default_clip(pipe), device=args.device)


def _toy_evaluator(pipe):
    """The toyworld evaluator, when the model is toyworld and its weights are installed; else None."""
    from .optimize import model_id

    if model_id(pipe) != "toyworld":
        return None
    try:
        from .toyworld.evaluator import Evaluator

        return Evaluator.load()
    except (FileNotFoundError, ImportError):
        return None


# ---- subcommands ---------------------------------------------------------------------------------------------------
def cmd_disentangle(args) -> int:
    from .conditioning import encode
    from .noise import NoiseTape
    from .optimize import optimize, reference_init

    out = Path(args.out)
    pipe = _load(args)
    cond = encode(pipe, args.c0, args.c1)
    tape = NoiseTape.from_seed(pipe, args.seed, steps=args.steps, scheduler=args.scheduler, eta=args.eta)
    init = reference_init(args.steps, c0_steps=args.switch, late=args.late)
    result = optimize(
        pipe, cond, init, tape, iters=args.iters, lr=args.lr, beta=args.beta, guidance=args.guidance,
        clip=_clip(args, pipe), checkpoint_dir=out / ".checkpoint", optimizer=args.optimizer,
        learn_steps=args.switch if args.learn_from_switch else None, floors=args.floors, progress=not args.quiet,
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
    from .inversion import encode_image, invert, load_image, model_image_size
    from .losses import CLIPPerceptualLoss, DirectionalCLIPLoss, psnr
    from .sampling import decode, sample, to_pil
    from .schedules import MixSchedule
    from .transfer import fit_schedule

    out = Path(args.out)
    # What can fail without the model fails before it is loaded: the image, the schedule file, the switch step.
    image = load_image(args.input)
    if args.schedule:
        schedule = MixSchedule.load(args.schedule)
        steps = args.steps if args.steps is not None else schedule.steps
        schedule = fit_schedule(schedule, None, steps, args.resample)  # the step count now, the model once loaded
    else:
        steps = args.steps if args.steps is not None else 50
        switch = args.switch if args.switch is not None else round(0.4 * steps)  # disentangle's 20 of 50
        schedule = MixSchedule.switch(steps, switch, 0.0, args.late)
        guidance = args.guidance if args.guidance is not None else (7.5 if args.method == "exact" else 1.0)
    pipe = _load(args)
    image = load_image(image, model_image_size(pipe))  # resized (with one warning) if the model draws another size
    if args.schedule:
        schedule = fit_schedule(schedule, pipe, steps, args.resample)
        guidance = args.guidance if args.guidance is not None else float(schedule.meta.get("guidance", 7.5))
        made_with = schedule.meta.get("scheduler", "ddim")
        if made_with != "ddim":  # inversion runs DDIM; the lambdas were learned for another sampler
            warnings.warn(f"{args.schedule} was made for the {made_with!r} sampler; the edit runs DDIM, the only "
                          "sampler inversion supports, so its weights may act differently.", stacklevel=2)
    schedule = schedule.with_meta(prompts=[args.c0, args.c1], steps=steps, scheduler="ddim", guidance=guidance)

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
    clip = _clip(args, pipe)
    with torch.no_grad():
        metrics["clip_direction"] = float(1 - DirectionalCLIPLoss(clip, args.c0, args.c1)(edited, reconstruction)[0])
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
    from .transfer import transfer

    out = Path(args.out)
    schedule = MixSchedule.load(args.schedule)
    if args.model is None:  # the model the schedule was learned on, if it says
        args.model = schedule.meta.get("model") or DEFAULT_MODEL
    pipe = _load(args)
    result = transfer(
        pipe, schedule, args.seeds, steps=args.steps, guidance=args.guidance, resample=args.resample,
        clip=_clip(args, pipe), evaluator=_toy_evaluator(pipe), progress=not args.quiet,
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


# ---- the parser ----------------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, model_default: str | None = DEFAULT_MODEL) -> None:
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--model", default=model_default, help="'toyworld', a diffusers folder or a hub id")
    p.add_argument("--clip", default=None, help="CLIP folder or hub id for losses/metrics (default: the model's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--half", action="store_true", help="float16 weights (GPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disentkit", description="Learn an edit of a text-to-image model, apply it to a photo, transfer it to new seeds."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("disentangle", help="learn the per-step lambdas of an edit for one seed")
    p.add_argument("--c0", required=True, help="neutral prompt, e.g. 'a photo of a face'")
    p.add_argument("--c1", required=True, help="styled prompt, e.g. 'a photo of a face, smiling'")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--switch", type=int, default=20, help="initial schedule: c0 for this many steps (paper: 10-20 of 50)")
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
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--eta", type=float, default=0.0)
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
    p.add_argument("--resample", action="store_true", help="adapt a schedule made for another step count/model")
    _common(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("transfer", help="apply a learned schedule to new seeds")
    p.add_argument("schedule", help="a schedule file")
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-15"), help="e.g. 0-15 or 1,4,7-9")
    p.add_argument("--steps", type=int, default=None, help="default: the schedule's")
    p.add_argument("--guidance", type=float, default=None, help="default: the schedule's")
    p.add_argument("--resample", action="store_true", help="adapt a schedule made for another step count/model")
    _common(p, model_default=None)
    p.set_defaults(func=cmd_transfer)

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
        message = re.sub(r"[;.]? ?(use schedule\.resample\(\d+\)[^.]*|Pass resample=True[^.]*)\.?$", "", message)
        message += "; add --resample to adapt it." if isinstance(err, ScheduleLengthError) else (
            "; add --resample to apply it anyway.")
    return message


if __name__ == "__main__":
    sys.exit(main())
