"""Train the toy Stable Diffusion from scratch, then export it as a diffusers pipeline.

    python -m disentkit.toyworld.train --out runs/toyworld            # from scratch (about 2 hours on 2 CPU cores)
    python -m disentkit.toyworld.train --out runs/toyworld --smoke    # every stage for a few steps, < 1 min
    python -m disentkit.toyworld.train --out runs/toyworld --export-only --weights disentkit/toyworld/weights

Stages (each resumes from its last checkpoint when the same command runs again), two at a time in two processes
(one core each) unless --sequential:
  1. clip         contrastive CLIP on (render, caption) pairs, both towers   } side by side
  2. vae          AutoencoderKL reconstruction of the renders                 }
  3. clip_text    the text tower learns to say every attribute: heads on its embedding classify each factor a
                  caption pins (captions are synthetic, so their meaning is known). Short contrastive training
                  alone lets the text tower merge words whose pictures the young vision tower cannot yet tell
                  apart ("circle"/"face", "smiling"/"frowning"); the UNet, which reads the text tower's hidden
                  states, would then be unable to follow them.
  4. unet         eps-prediction on VAE latents, conditioned on the frozen     } side by side
                  CLIP text tower, with caption dropout                        }
  5. clip_vision  CLIP's vision tower trains on against the frozen text tower }
Stages 3-5 let the UNet start early on a text tower that then never changes (the pipeline's text_encoder stays
exactly CLIP's text tower) while CLIP's image side keeps improving for zero-shot use and losses.
Then a report (report.json, loss_curves.png, samples.png) and an export (see `export`).

Each stage stops at its step count or its time budget, whichever comes first; the learning rate follows the
progress through that budget (warmup, then cosine), so a time-limited run still anneals. Training data is rendered
once into the run folder (images.npy, scenes.json) and sampled from with fixed seeds.

The stages live in their own modules (config, data, stages, clip_training, vae_training, unet_training, export);
this module runs them in order and is the command line. Continuing the bundled UNet from a committed checkpoint,
in pieces on any machine: `python -m disentkit.toyworld.continue_unet` (see docs/toyworld.md).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from disentkit.errors import TrainingConfigError, TrainingFailedError
from disentkit.files import write_text_atomic

from .clip_training import clip_zero_shot, multi_positive_clip_loss, train_clip, train_clip_text
from .config import MODEL_OF_STAGE, STAGES, StageConfig, TrainConfig
from .data import (
    CaptionEncoder,
    SceneData,
    caption_pins,
    clip_caption,
    eval_scenes,
    factor_indices,
    prepare_data,
    sample_indices,
)
from .export import EXPORTED_ENTRIES, SAMPLE_CAPTIONS, assemble, export, sample_grid, write_report
from .stages import Stage, atomic_torch_save, learning_rate, log, open_stage, run_checkpointed, set_lr
from .tokenizer import MODEL_MAX_LENGTH, build_tokenizer
from .unet_training import encode_latents, load_text_encoder, train_unet, unet_batch_loss
from .vae_training import train_vae

__all__ = [  # the names this module has always offered, wherever they live now
    "CaptionEncoder", "EXPORTED_ENTRIES", "MODEL_OF_STAGE", "SAMPLE_CAPTIONS", "STAGES", "SceneData", "Stage",
    "StageConfig", "TrainConfig", "assemble", "atomic_torch_save", "caption_pins", "clip_caption", "clip_zero_shot",
    "encode_latents", "eval_scenes", "export", "factor_indices", "learning_rate", "load_text_encoder", "log", "main",
    "multi_positive_clip_loss", "open_stage", "prepare_data", "run_checkpointed", "run_stage", "sample_grid",
    "sample_indices", "set_lr", "train", "train_clip", "train_clip_text", "train_unet", "train_vae",
    "unet_batch_loss", "write_report",
]  # fmt: skip

# --------------------------------------------------------------------------------------------------------------
# Entry point


def run_stage(name: str, cfg: TrainConfig, run_dir: Path, data: SceneData, tokenizer) -> None:
    """Train (or resume, or skip if finished) one stage of the run."""
    if name in ("clip", "clip_vision"):
        train_clip(cfg, run_dir, data, tokenizer, name)
    elif name == "clip_text":
        train_clip_text(cfg, run_dir, tokenizer)
    elif name == "vae":
        train_vae(cfg, run_dir, data)
    else:
        train_unet(cfg, run_dir, data, tokenizer)


def _stage_process(name: str, cfg: TrainConfig) -> None:
    """Runs one stage in a child process, beside the parent's stage."""
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(run_dir / "tokenizer")
    run_stage(name, cfg, run_dir, prepare_data(run_dir, cfg.n_scenes, cfg.seed), tokenizer)


def train(cfg: TrainConfig, weights_dir: Path | None = None, only: list[str] | None = None) -> Path | None:
    """Run every unfinished stage, write the report and export. Returns the export folder.

    only: run just these stages, one after the other in training order, and do not export (so that two commands
    can train different stages of one run side by side; export afterwards with --export-only)."""
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(only or ()) - set(STAGES)) + sorted(set(cfg.more) - set(STAGES))
    if unknown:
        raise TrainingConfigError(f"unknown stage(s) {unknown}; the stages are {', '.join(STAGES)}")
    write_text_atomic(run_dir / ("config.json" if only is None else f"config.{'+'.join(only)}.json"),
                      json.dumps(config_dict_nested(cfg), indent=1))
    tokenizer = build_tokenizer(run_dir / "tokenizer")
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH
    data = prepare_data(run_dir, cfg.n_scenes, cfg.seed)
    if only is not None:
        for name in (n for n in STAGES if n in only):
            run_stage(name, cfg, run_dir, data, tokenizer)
        log(f"trained {', '.join(only)}; export with --export-only when every stage is where you want it")
        return None
    # Phase 1: clip || vae. Phase 2: unet || clip_vision. The second stage of a phase runs in a child process.
    for main_stage, side_stage in (("clip", "vae"), ("clip_text", None), ("unet", "clip_vision")):
        child = None
        if side_stage and not cfg.sequential:
            import multiprocessing

            child = multiprocessing.get_context("spawn").Process(
                target=_stage_process, args=(side_stage, cfg), daemon=True)
            child.start()
        run_stage(main_stage, cfg, run_dir, data, tokenizer)
        if child is None:
            if side_stage:
                run_stage(side_stage, cfg, run_dir, data, tokenizer)
        else:
            child.join()
            if child.exitcode != 0:
                raise TrainingFailedError(f"stage {side_stage} failed (exit code {child.exitcode}); see the log above, "
                                          "fix it and run the same command again to resume")
    return export(run_dir, weights_dir or run_dir / "export", sample_steps=cfg.sample_steps)


def config_dict_nested(cfg: TrainConfig) -> dict:
    """The whole TrainConfig as JSON-friendly data (written as the run's config.json)."""
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(cfg), default=list))


def main(argv=None) -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="run folder (checkpoints, data, report); reused to resume")
    parser.add_argument("--weights", default=None, help="export folder (default: <out>/export)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of every stage, tiny data")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--sequential", action="store_true", help="train clip and vae one after the other")
    parser.add_argument("--minutes-per-stage", nargs="+", default=[], metavar="STAGE=MIN",
                        help="time budgets, e.g. clip=18 vae=18 unet=52")
    parser.add_argument("--steps-per-stage", nargs="+", default=[], metavar="STAGE=N", help="step limits")
    parser.add_argument("--more", nargs="+", default=[], metavar="STAGE=MIN",
                        help="train finished stages for MIN more minutes (a new learning-rate round), e.g. unet=60")
    parser.add_argument("--only", nargs="+", default=None, metavar="STAGE", choices=STAGES,
                        help="run only these stages and skip the export (to train stages side by side)")
    parser.add_argument("--export-only", action="store_true", help="export the run's latest weights and stop")
    parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the exported sample grid (0: none)")
    parser.add_argument("--notes", type=Path, default=None, help="a markdown file appended to the exported model card")
    args = parser.parse_args(argv)

    if args.export_only:
        notes = args.notes.read_text() if args.notes else ""
        export(args.out, args.weights or Path(args.out) / "export", notes=notes, sample_steps=args.sample_steps)
        return
    make = TrainConfig.smoke if args.smoke else TrainConfig
    cfg = make(out=args.out, device=args.device, threads=args.threads)
    cfg.sequential = cfg.sequential or args.sequential
    for item in args.minutes_per_stage:
        name, value = item.split("=")
        setattr(cfg, name, replace(getattr(cfg, name), minutes=float(value)))
    for item in args.steps_per_stage:
        name, value = item.split("=")
        setattr(cfg, name, replace(getattr(cfg, name), max_steps=int(value)))
    for item in args.more:
        name, value = item.split("=")
        cfg.more[name] = float(value)
    train(cfg, Path(args.weights) if args.weights else None, only=args.only)


if __name__ == "__main__":
    main()
