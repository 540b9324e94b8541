"""Train the toyworld evaluator (see evaluator.py) on freshly rendered scenes.

    python -m disentkit.toyworld.evaluator_train  # retrain the bundled weights (7 min on a free core, 17 on a busy one)
    python -m disentkit.toyworld.evaluator_train --steps 200 --out /tmp/ev --save-to /tmp/ev/final   # a quick try

A straight script: render a pool of scenes once (deterministic from the seed), then for each step draw a batch,
degrade it a little (blur, downsampling, noise, JPEG, a small colour shift: generated images are blurrier and less
clean than renders), and take an AdamW step on the sum of the factor cross-entropies and the mask loss.
A checkpoint is written every `ckpt_every` steps; running the same command again resumes from it.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm, trange

from disentkit.errors import TrainingConfigError
from disentkit.toyworld import scenes
from disentkit.toyworld.evaluator import (
    DEFAULT_WEIGHTS,
    Evaluator,
    EvaluatorConfig,
    EvaluatorNet,
    labels_to_targets,
    mask_iou,
)

# Seeds of the scene sets. Training and validation never see the report's held-out scenes.
TRAIN_SEED = 0
VAL_SEED = 1
HELDOUT_SEED = 20231  # benchmarks/toyworld_evaluator_report.py


@dataclass
class TrainConfig:
    seed: int = TRAIN_SEED  # scene pool, initialisation, batch order and augmentation all follow from it
    pool_size: int = 20000  # scenes rendered once; each is seen ~3 times, under different degradations
    # share of the pool forced to be faces on top of the natural 1/5: expression is learned from faces only
    extra_face_fraction: float = 0.2
    steps: int = 2000
    batch_size: int = 32  # small batches, many updates: a step costs 0.2 s on a free core
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    mask_weight: float = 1.0
    clean_fraction: float = 0.35  # share of each batch left undegraded (the accuracy bar is on clean renders)
    val_size: int = 512
    eval_every: int = 400
    ckpt_every: int = 200
    out_dir: str = "outputs/evaluator_train"  # checkpoint, history.csv, cached scene pool
    save_to: str | None = None  # final weights folder (None: out_dir/final)
    num_threads: int = 1  # the CPU is shared; one thread is also what the timings assume
    image_size: int = 64


# ----------------------------------------------------------------------------------------------------------------
# data


def render_scenes(
    n: int, seed: int, extra_face_fraction: float = 0.0, size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """n random scenes from `seed`: images (n,size,size,3) uint8, masks (n,size,size) bool, label dicts."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    labels = []
    for i in tqdm(range(n), desc=f"render {n} scenes", disable=not progress, leave=False):
        face = rng.random() < extra_face_fraction
        scene = scenes.sample_scene(rng, kind="face") if face else scenes.sample_scene(rng)
        images[i], masks[i] = scenes.render(scene, size)
        labels.append(scene.labels())
    return images, masks, labels


def _cached_pool(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """The training pool, cached under out_dir; the cache key includes the scene generator's source, so a changed
    renderer is never trained on stale pictures."""
    src = inspect.getsource(scenes).encode()
    key = hashlib.sha1(src + repr((cfg.seed, cfg.pool_size, cfg.extra_face_fraction, cfg.image_size)).encode())
    path = Path(cfg.out_dir) / f"pool-{key.hexdigest()[:12]}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        return z["images"], z["masks"], json.loads(str(z["labels"]))
    images, masks, labels = render_scenes(
        cfg.pool_size, cfg.seed, cfg.extra_face_fraction, cfg.image_size, progress=True
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, masks=masks, labels=json.dumps(labels))
    return images, masks, labels


def _gaussian_kernels(sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """1-D Gaussian kernels (B, 2*radius+1), one per sigma; sigma -> 0 gives the identity kernel."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    return k / k.sum(1, keepdim=True)


def degrade(x: torch.Tensor, g: torch.Generator, clean_fraction: float = 0.35) -> torch.Tensor:
    """Randomly degrade images the way generated images differ from renders. x: (B,3,H,W) in [0,1].

    Per image (except a `clean_fraction` left as is): a small colour gain/offset, Gaussian blur (sigma up to 1.2 px),
    and with some probability a down-and-up resampling (to 50-90% of the side) and Gaussian noise (std up to 0.04).
    All randomness comes from `g`, so a given generator state gives the same batch.
    """
    B, _, H, W = x.shape
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731 - a short local helper keeps the lines short
    keep = u(B) < clean_fraction  # (B,)
    y = x

    # colour: +-6% gain per channel and +-3% offset; small enough that orange stays orange
    gain = 1 + (u(B, 3) - 0.5) * 0.12
    offset = (u(B, 1) - 0.5) * 0.06
    y = y * gain[:, :, None, None] + offset[:, :, None, None]

    # down-and-up resampling on about half of the images: the blur of a low-resolution decoder
    side = int(H * (0.5 + 0.4 * float(u(1))))
    low = F.interpolate(y, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    low = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    y = torch.where((u(B) < 0.5)[:, None, None, None], low, y)

    # separable Gaussian blur with a per-image sigma: one grouped conv over the B*3 channels
    k = _gaussian_kernels(u(B) * 1.2).repeat_interleave(3, 0)  # (B*3, 7)
    r = k.shape[1] // 2
    z = y.reshape(1, B * 3, H, W)
    z = F.conv2d(F.pad(z, (r, r, 0, 0), mode="replicate"), k[:, None, None, :], groups=B * 3)
    z = F.conv2d(F.pad(z, (0, 0, r, r), mode="replicate"), k[:, None, :, None], groups=B * 3)
    y = z.reshape(B, 3, H, W)

    # noise on about half of the images
    std = u(B) * 0.04 * (u(B) < 0.5)
    y = y + torch.randn(y.shape, generator=g) * std[:, None, None, None]

    y = y.clamp(0, 1)
    return torch.where(keep[:, None, None, None], x, y)


def jpeg(images: np.ndarray, rng: np.random.Generator, p: float = 0.25) -> np.ndarray:
    """JPEG-compress a random share p of uint8 images (B,H,W,3) at quality 30-90 (block and ringing artefacts)."""
    out = images.copy()
    for i in np.flatnonzero(rng.random(len(images)) < p):
        buf = io.BytesIO()
        Image.fromarray(images[i]).save(buf, format="JPEG", quality=int(rng.integers(30, 91)))
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# scoring (shared with the report and the tests)


def score(
    evaluator: Evaluator, images: Any, masks: np.ndarray, labels: list[dict[str, Any]]
) -> dict[str, float]:
    """Accuracy per factor (expression over true faces only) and mean mask IoU against the true masks."""
    probs, mask_p = evaluator.predict(images)
    targets = labels_to_targets(labels, evaluator.factors)
    out = {}
    for f in evaluator.factors:
        y = targets[f]
        has = y >= 0
        out[f"acc_{f}"] = float((probs[f].argmax(1)[has] == y[has]).float().mean())
    out["mask_iou"] = float(mask_iou(mask_p > 0.5, torch.as_tensor(masks)).mean())
    return out


# ----------------------------------------------------------------------------------------------------------------
# training


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to 5% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE per pixel plus soft Dice per image (Dice speaks IoU's language on the object's border)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
    return bce + dice.mean()


def train(config: TrainConfig | None = None, **overrides: Any) -> Evaluator:
    """Train an evaluator; returns it and writes the weights to cfg.save_to (default out_dir/final)."""
    cfg = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    factors = dict(scenes.FACTORS)

    images, masks, labels = _cached_pool(cfg)
    targets = labels_to_targets(labels, factors)  # {factor: (N,)}, -1 for no expression
    masks_t = torch.from_numpy(masks)
    val_images, val_masks, val_labels = render_scenes(cfg.val_size, VAL_SEED, size=cfg.image_size)

    torch.manual_seed(cfg.seed)
    net = EvaluatorNet(EvaluatorConfig(image_size=cfg.image_size, factors=factors))
    net = net.to(memory_format=torch.channels_last)  # oneDNN convolutions run ~1.5x faster channels-last on CPU
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)  # batch order and degradations
    np_rng = np.random.default_rng(cfg.seed + 1)  # JPEG choices
    step, history, seconds = 0, [], 0.0

    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        if ckpt["config"] != asdict(cfg) | {"save_to": ckpt["config"]["save_to"]}:
            raise TrainingConfigError(
                f"{ckpt_path} was written with different settings {ckpt['config']}; delete it or pick another "
                "out_dir to start afresh"
            )
        net.load_state_dict(ckpt["net"])
        opt.load_state_dict(ckpt["opt"])
        g.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])  # dropout draws from the global generator
        np_rng.bit_generator.state = ckpt["np_rng"]
        step, history, seconds = ckpt["step"], ckpt["history"], ckpt["seconds"]
        print(f"resuming from {ckpt_path} at step {step}")

    net.train()
    t0 = time.perf_counter() - seconds
    bar = trange(step, cfg.steps, initial=step, total=cfg.steps, desc="evaluator")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        idx = torch.randint(len(images), (cfg.batch_size,), generator=g)  # (B,)
        batch = jpeg(images[idx.numpy()], np_rng)  # (B,H,W,3) uint8
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255  # (B,3,H,W)
        m = masks_t[idx].float()  # (B,H,W)
        # horizontal flips keep every label (a flipped smile is still a smile, a star still a star)
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        m = torch.where(flip[:, None, None], m.flip(-1), m)
        x = degrade(x, g, cfg.clean_fraction).contiguous(memory_format=torch.channels_last)

        logits, mask_logits = net(x)
        losses = {}
        for f in factors:
            y = targets[f][idx]
            if (y >= 0).any():  # a batch without faces has no expression loss (cross-entropy of nothing is NaN)
                losses[f] = F.cross_entropy(logits[f], y, ignore_index=-1)
        losses["mask"] = cfg.mask_weight * _mask_loss(mask_logits, m)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")

        done = step + 1
        row = None
        if done % cfg.eval_every == 0 or done == cfg.steps:
            net.eval()
            row = {"step": done, "seconds": time.perf_counter() - t0, "loss": loss.item()}
            row |= score(Evaluator(net), val_images, val_masks, val_labels)
            net.train()
            history.append(row)
            tqdm.write(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            torch.save(
                {
                    "config": asdict(cfg),
                    "net": net.state_dict(),
                    "opt": opt.state_dict(),
                    "generator": g.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "np_rng": np_rng.bit_generator.state,
                    "step": done,
                    "history": history,
                    "seconds": time.perf_counter() - t0,
                },
                ckpt_path,
            )

    seconds = time.perf_counter() - t0
    pd.DataFrame(history).to_csv(out / "history.csv", index=False)
    evaluator = Evaluator(net.eval())
    train_meta = {k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "save_to")}
    meta = {"train": train_meta | {"train_seconds": round(seconds, 1)}, "val": history[-1] if history else {}}
    evaluator.meta = meta
    evaluator.save(cfg.save_to or out / "final")
    return evaluator


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in fields(TrainConfig):
        if f.name in ("save_to", "out_dir"):
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    p.add_argument("--out", default=TrainConfig.out_dir, help="checkpoints, history and the scene pool")
    p.add_argument("--save-to", default=str(DEFAULT_WEIGHTS), help="final weights folder (default: bundled)")
    args = vars(p.parse_args(argv))
    out_dir, save_to = args.pop("out"), args.pop("save_to")
    ev = train(TrainConfig(**args, out_dir=out_dir, save_to=save_to))
    print(json.dumps(ev.meta, indent=2))


if __name__ == "__main__":
    main()
