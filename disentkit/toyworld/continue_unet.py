"""Continue training the bundled UNet, in pieces, on any machine, from a checkpoint kept in the repository.

    python -m disentkit.toyworld.continue_unet --minutes 170          # one piece; run it again to go on
    python -m disentkit.toyworld.continue_unet --export runs/toyworld-continued   # the current EMA as a pipeline
    python -m disentkit.toyworld.continue_unet --smoke --state /tmp/s --data /tmp/d  # a few steps, tiny data

Why: a better bundle needs several CPU hours of UNet training, more than one sitting of a machine gives, and the
next piece may start on a fresh machine without any run folder. So everything a piece needs is either in the
repository or re-created deterministically:

  start      the bundled pipeline (disentkit/toyworld/weights/pipeline): its UNet is where training starts, its
             VAE and text encoder stay frozen (the UNet learns on their latents and hidden states);
  data       the bundle's own training scenes (seed 0, 30,000 renders, ~370 MB), rendered into --data when missing
             (same seed, same images on every machine), and their VAE latents, cached beside them;
  checkpoint --state (default checkpoints/toyworld-unet, outside the wheel): weights, EMA weights and AdamW moments
             in 16 bits (~20 MB) plus state.json (step, random streams, loss history, recipe). Written atomically
             (the folder is replaced in one rename) every --checkpoint-minutes (9), when a piece's --minutes are
             used up, on SIGTERM/SIGINT, and at the end; commit it after each piece.

The learning rate follows the steps, not the clock (warmup, then cosine to 10% at total_steps), so pieces of any
length and machines of any speed give the same schedule. Each resume rounds the weights to 16 bits once; with
--full-precision the checkpoint is float32 and a resumed run continues bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from disentkit.errors import ModelNotFoundError, TrainingConfigError
from disentkit.files import atomic_dir

from .config import StageConfig, TrainConfig
from .data import CaptionEncoder, prepare_data
from .models import make_scheduler
from .stages import atomic_torch_save, learning_rate, log
from .unet_training import ema_update, unet_batch_loss, vae_latents

BUNDLED_PIPELINE = Path(__file__).parent / "weights" / "pipeline"
DEFAULT_STATE = "checkpoints/toyworld-unet"
DEFAULT_DATA = "runs/toyworld-data"
STATE_VERSION = 1


@dataclass
class ContinueConfig:
    """The recipe of a continuation. Saved in state.json when it starts; a resumed run keeps the saved one."""

    total_steps: int = 40_000  # ~5 h on one free core at ~2.2 steps/s (batch 32)
    batch_size: int = 32
    # The bundle's own run ended at 10% of a 5e-4 peak; a new round peaks at half the old peak, as --more does.
    lr: float = 2.5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    seed: int = 0  # the scenes: 0 is the bundle's own training data
    n_scenes: int = 30_000
    stream_seed: int = 30  # batch draws, captions, timesteps and noise (a stream the bundle's run never used)
    half: bool = True  # 16-bit checkpoint: weights fp16, AdamW moments bf16 (their range needs bf16's exponent)
    # The objective's knobs, as in the bundle's training (TrainConfig's defaults).
    caption_dropout: float = 0.12
    face_fraction: float = 0.35
    object_weight: float = 2.0
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.998
    offset_noise: float = 0.0  # see TrainConfig.offset_noise; an experiment for the background's window

    @classmethod
    def smoke(cls) -> "ContinueConfig":
        return cls(total_steps=6, batch_size=2, warmup_steps=2, n_scenes=32)

    def objective(self, device: str = "cpu") -> TrainConfig:
        """The TrainConfig fields unet_batch_loss reads."""
        return TrainConfig(out="", device=device, seed=self.seed, caption_dropout=self.caption_dropout,
                           face_fraction=self.face_fraction, object_weight=self.object_weight,
                           min_snr_gamma=self.min_snr_gamma, ema_decay=self.ema_decay,
                           offset_noise=self.offset_noise)  # fmt: skip

    def lr_at(self, step: int) -> float:
        stage = StageConfig(max_steps=self.total_steps, minutes=0, batch_size=self.batch_size, lr=self.lr,
                            warmup_steps=self.warmup_steps)  # fmt: skip
        return learning_rate(stage, step, step / self.total_steps)


@dataclass
class Piece:
    """What one invocation does: where things are, and when it stops (the first of: total_steps reached, `minutes`
    of wall time, `max_steps` steps, a SIGTERM/SIGINT)."""

    state: str = DEFAULT_STATE
    data: str = DEFAULT_DATA
    start: str = str(BUNDLED_PIPELINE)
    minutes: float = 170.0
    max_steps: int | None = None
    checkpoint_minutes: float = 9.0  # a checkpoint at least every 10 minutes, even after a slow step
    log_every: int = 50
    threads: int = 1
    device: str = "cpu"  # "cuda" where there is one (each step is many times faster); never required


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (which VAE and text encoder a checkpoint trained against)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"{folder} holds no .safetensors weights; pass --start a diffusers pipeline folder")
    return files[0]


# --------------------------------------------------------------------------------------------------------------
# The checkpoint: tensors in state.safetensors, everything else in state.json, one folder replaced atomically


def save_state(folder: Path, unet, ema, optimizer, rng: np.random.Generator, meta: dict, half: bool) -> None:
    """Write folder/state.safetensors and folder/state.json together (the folder is replaced in one rename)."""
    weights_dtype, moments_dtype = (torch.float16, torch.bfloat16) if half else (torch.float32, torch.float32)
    tensors = {f"model.{k}": v.detach().to(weights_dtype) for k, v in unet.state_dict().items()}
    tensors |= {f"ema.{k}": v.detach().to(weights_dtype) for k, v in ema.state_dict().items()}
    opt = optimizer.state_dict()
    adam_steps = {}
    for i, s in opt["state"].items():
        tensors[f"adam.{i}.exp_avg"] = s["exp_avg"].to(moments_dtype)
        tensors[f"adam.{i}.exp_avg_sq"] = s["exp_avg_sq"].to(moments_dtype)
        adam_steps[str(i)] = float(s["step"])
    tensors["torch_rng"] = torch.get_rng_state()
    tensors = {k: v.cpu().contiguous() for k, v in tensors.items()}
    meta = dict(meta, version=STATE_VERSION, rng=rng.bit_generator.state, adam_steps=adam_steps,
                param_groups=opt["param_groups"])  # fmt: skip
    with atomic_dir(folder) as tmp:
        save_file(tensors, tmp / "state.safetensors")
        (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_state(folder: Path, unet, ema, optimizer, rng: np.random.Generator) -> dict:
    """Restore what save_state wrote into the given (already built) objects; returns state.json's content."""
    meta = json.loads((folder / "state.json").read_text())
    if meta.get("version") != STATE_VERSION:
        raise TrainingConfigError(f"{folder} is a version {meta.get('version')} checkpoint; this code reads version "
                                  f"{STATE_VERSION}. Start afresh in another --state folder")  # fmt: skip
    tensors = load_file(folder / "state.safetensors")
    unet.load_state_dict({k[6:]: v.float() for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v.float() for k, v in tensors.items() if k.startswith("ema.")})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {int(i): {"step": torch.tensor(step), "exp_avg": tensors[f"adam.{i}.exp_avg"].float(),
                      "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"].float()}
             for i, step in meta["adam_steps"].items()}  # fmt: skip
    if state and max(state) >= len(params):
        raise TrainingConfigError(f"{folder} holds optimizer state for another UNet; start afresh elsewhere")
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    rng.bit_generator.state = meta["rng"]
    torch.set_rng_state(tensors["torch_rng"])
    return meta


# --------------------------------------------------------------------------------------------------------------
# Training


def cached_latents(data_dir: Path, data, vae_path: Path, vae_sha: str) -> torch.Tensor:
    """The scenes' VAE latents (N, 4, 16, 16), cached in data_dir and recomputed when the VAE changes."""
    from diffusers import AutoencoderKL

    path = data_dir / "latents.pt"
    if path.exists():
        cached = torch.load(path)
        if cached.get("vae_sha256") == vae_sha and len(cached["latents"]) == len(data.scenes):
            return cached["latents"]
    vae = AutoencoderKL.from_pretrained(vae_path, torch_dtype=torch.float32).eval()
    latents = vae_latents(vae, data, "cpu")
    atomic_torch_save({"vae_sha256": vae_sha, "latents": latents}, path)
    return latents


def _recipe_conflicts(saved: dict, asked: dict) -> list[str]:
    return [f"{k}: saved {saved[k]!r}, asked {v!r}" for k, v in asked.items() if saved[k] != v]


def continue_training(piece: Piece, config: ContinueConfig | None = None, asked: dict | None = None) -> dict:
    """Run one piece; returns state.json's content after it. `config` is the recipe to start with (default
    ContinueConfig()); when --state already holds a checkpoint its saved recipe is used, and `asked` (recipe fields
    given explicitly) must agree with it."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.set_num_threads(piece.threads)
    state_dir, data_dir, start = Path(piece.state), Path(piece.data), Path(piece.start)
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (start / part).is_dir():
            raise ModelNotFoundError(f"{start} has no {part}/ folder; pass --start a diffusers pipeline folder")
    resuming = (state_dir / "state.json").exists()
    if resuming:
        saved = json.loads((state_dir / "state.json").read_text())
        # A field added to the recipe after a checkpoint was started takes its default (the old behaviour).
        config = ContinueConfig(**{f.name: saved["config"][f.name] for f in fields(ContinueConfig)
                                   if f.name in saved["config"]})  # fmt: skip
        conflicts = _recipe_conflicts(asdict(config), asked or {})
        if conflicts:
            raise TrainingConfigError(
                f"{state_dir} was started with another recipe ({'; '.join(conflicts)}); drop those options to resume "
                "it, or pass another --state to start afresh"
            )
    else:
        config = config or ContinueConfig()
    vae_sha = file_sha256(_weights_file(start / "vae"))
    text_sha = file_sha256(_weights_file(start / "text_encoder"))
    if resuming and (saved["vae_sha256"], saved["text_encoder_sha256"]) != (vae_sha, text_sha):
        raise TrainingConfigError(f"{start}'s VAE or text encoder differ from those {state_dir} trained against; "
                                  "pass --start the pipeline it started from")  # fmt: skip

    # Everything below is work: the checks above come first.
    data = prepare_data(data_dir, config.n_scenes, config.seed)
    latents = cached_latents(data_dir, data, start / "vae", vae_sha)
    tokenizer = CLIPTokenizer.from_pretrained(start / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(start / "text_encoder", torch_dtype=torch.float32)
    text_encoder = text_encoder.eval().requires_grad_(False).to(piece.device)
    unet = UNet2DConditionModel.from_pretrained(start / "unet", torch_dtype=torch.float32).train().to(piece.device)
    ema = UNet2DConditionModel.from_pretrained(start / "unet", torch_dtype=torch.float32).requires_grad_(False)
    ema = ema.to(piece.device)
    latents = latents.to(piece.device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.stream_seed)
    torch.manual_seed(config.stream_seed)
    if resuming:
        meta = load_state(state_dir, unet, ema, optimizer, rng)
        log(f"resuming {state_dir} at step {meta['step']} of {config.total_steps}")
    else:
        meta = dict(step=0, seconds=0.0, history=[], pieces=[], config=asdict(config), vae_sha256=vae_sha,
                    text_encoder_sha256=text_sha, start_unet_sha256=file_sha256(_weights_file(start / "unet")),
                    start=str(start))  # fmt: skip
        log(f"starting {state_dir} from {start / 'unet'}: {config.total_steps} steps")
    scheduler = make_scheduler()
    encode = CaptionEncoder(tokenizer)
    objective = config.objective(piece.device)

    stop = {"signal": None}

    def on_signal(signum, frame):  # finish the current step, write the checkpoint, exit
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    began, last_save, first_step = time.monotonic(), time.monotonic(), meta["step"]
    piece_record = dict(started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), from_step=first_step)
    meta["pieces"].append(piece_record)
    running: list[dict] = []

    def save() -> None:
        piece_record.update(to_step=meta["step"], minutes=round((time.monotonic() - began) / 60, 2))
        save_state(state_dir, unet, ema, optimizer, rng, meta, config.half)

    bar = tqdm(total=config.total_steps, initial=first_step, desc="unet", mininterval=30, dynamic_ncols=True)
    try:
        while meta["step"] < config.total_steps:
            if stop["signal"] is not None or time.monotonic() - began > 60 * piece.minutes:
                break
            if piece.max_steps is not None and meta["step"] - first_step >= piece.max_steps:
                break
            t0 = time.perf_counter()
            step = meta["step"]
            loss, metrics = unet_batch_loss(unet, text_encoder, encode, scheduler, latents, data, rng, objective,
                                            config.batch_size)  # fmt: skip
            lr = config.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            # The EMA continues the bundle's EMA: its warmup counts the bundle's steps as done.
            ema_update(ema, unet, 10_000 + step, config.ema_decay)
            meta["step"] = step + 1
            meta["seconds"] += time.perf_counter() - t0
            running.append(dict(loss=loss.item(), lr=lr, **metrics))
            bar.update(1)
            if meta["step"] % piece.log_every == 0:
                mean = {k: float(np.mean([r[k] for r in running])) for k in running[0]}
                meta["history"].append(dict(step=meta["step"], hours=round(meta["seconds"] / 3600, 4), **mean))
                running = []
            if time.monotonic() - last_save > 60 * piece.checkpoint_minutes:
                save()
                last_save = time.monotonic()
        save()
    finally:
        bar.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    done = "finished" if meta["step"] >= config.total_steps else "stopped"
    log(f"{done} at step {meta['step']} of {config.total_steps} ({meta['seconds'] / 3600:.2f} CPU-hours of steps); "
        f"checkpoint in {state_dir}")  # fmt: skip
    return meta


def export_state(state: str | Path, out: str | Path, start: str | Path = BUNDLED_PIPELINE) -> Path:
    """out/pipeline: the start pipeline with the checkpoint's EMA UNet (fp16 safetensors, loads as float32), and
    out/clip: the CLIP folder beside the start pipeline, so `benchmarks/toyworld_report.py --model out/pipeline`
    measures it. The folder is written elsewhere first and renamed into place."""
    import shutil

    from diffusers import UNet2DConditionModel

    state, out, start = Path(state), Path(out), Path(start)
    if not (state / "state.json").exists():
        raise ModelNotFoundError(f"{state} holds no checkpoint; train first "
                                 "(python -m disentkit.toyworld.continue_unet)")  # fmt: skip
    meta = json.loads((state / "state.json").read_text())
    tensors = load_file(state / "state.safetensors")
    unet = UNet2DConditionModel.from_pretrained(start / "unet", torch_dtype=torch.float32)
    unet.load_state_dict({k[4:]: v.float() for k, v in tensors.items() if k.startswith("ema.")})
    with atomic_dir(out) as tmp:
        shutil.copytree(start, tmp / "pipeline")
        shutil.rmtree(tmp / "pipeline" / "unet")
        unet.to(torch.float16).save_pretrained(tmp / "pipeline" / "unet", safe_serialization=True)
        if (start.parent / "clip").is_dir():
            shutil.copytree(start.parent / "clip", tmp / "clip")
        (tmp / "training.json").write_text(json.dumps({k: meta[k] for k in ("step", "seconds", "pieces", "config",
                                                                            "history")}, indent=1) + "\n")  # fmt: skip
    log(f"exported step {meta['step']} of {state} -> {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", default=DEFAULT_STATE, help="checkpoint folder (commit it after each piece)")
    p.add_argument("--data", default=DEFAULT_DATA, help="rendered scenes and latents (re-created when missing)")
    p.add_argument("--start", default=str(BUNDLED_PIPELINE), help="pipeline whose UNet training starts from")
    p.add_argument("--minutes", type=float, default=170.0, help="wall-clock length of this piece")
    p.add_argument("--max-steps", type=int, default=None, help="at most this many steps in this piece")
    p.add_argument("--checkpoint-minutes", type=float, default=9.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train (a GPU is optional)")
    p.add_argument("--smoke", action="store_true", help="a tiny recipe (6 steps, 32 scenes) to try the commands")
    p.add_argument("--full-precision", action="store_true", help="float32 checkpoint (bit-for-bit resume, 2x size)")
    p.add_argument("--total-steps", type=int, default=None, help=f"default {ContinueConfig.total_steps}")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate, default {ContinueConfig.lr}")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {ContinueConfig.batch_size}")
    p.add_argument("--offset-noise", type=float, default=None, help="offset noise strength (default 0: off)")
    p.add_argument("--export", default=None, metavar="OUT",
                   help="write OUT/pipeline and OUT/clip from the checkpoint's EMA UNet and stop")
    args = p.parse_args(argv)
    if args.export:
        export_state(args.state, args.export, args.start)
        return
    asked = {k: v for k, v in (("total_steps", args.total_steps), ("lr", args.lr), ("batch_size", args.batch_size),
                                           ("offset_noise", args.offset_noise))
             if v is not None}  # fmt: skip
    if args.full_precision:
        asked["half"] = False
    base = ContinueConfig.smoke() if args.smoke else ContinueConfig()
    config = ContinueConfig(**(asdict(base) | asked))
    if args.smoke:
        asked |= {"total_steps": config.total_steps, "n_scenes": config.n_scenes}
    piece = Piece(state=args.state, data=args.data, start=args.start, minutes=args.minutes, max_steps=args.max_steps,
                  checkpoint_minutes=args.checkpoint_minutes, threads=args.threads, device=args.device)  # fmt: skip
    continue_training(piece, config, asked)


if __name__ == "__main__":
    main()
