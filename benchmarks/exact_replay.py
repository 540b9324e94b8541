"""How exactly an exact-inverted tape gives its photo back when replayed beside a second schedule (as ``disentkit edit``
and notebook 08 replay it), with each row run on its own (what ``sample`` does for an exact tape) and with the rows in
one UNet batch (what it did before). PSNR against the VAE round trip of the photo, the best any inversion can do.

    python benchmarks/exact_replay.py [--steps 20] [--guidance 7.5] [--out docs]

Runs on the hub-layout random-weight folders of ``disentkit.testing.save_hub_layout`` (SD 1.x, SD 2.x, SDXL), at a
non-default 64x96 px, on the CPU in float32. The solved per-step noise reaches tens of standard deviations, so the
float rounding that a UNet batch of another composition brings is amplified; run alone, the replay repeats the
inversion's arithmetic. Writes exact_replay.md to --out when given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import disentkit as dk  # noqa: E402
from disentkit.files import write_text_atomic  # noqa: E402
from disentkit.losses import psnr  # noqa: E402
from disentkit.testing import save_hub_layout  # noqa: E402


def portrait() -> np.ndarray:
    """A smooth 64 px wide, 96 px tall test picture (uint8 RGB)."""
    yy, xx = np.mgrid[0:96, 0:64]
    disc = (((xx - 32) / 20.0) ** 2 + ((yy - 40) / 24.0) ** 2 < 1).astype(float)
    rgb = np.stack([0.2 + 0.6 * disc, 0.3 + 0.4 * yy / 95, 0.8 - 0.5 * disc], axis=2)
    return (rgb * 255).round().astype(np.uint8)


def measure(kind: str, folder: Path, steps: int, guidance: float) -> dict:
    pipe = dk.load_pipeline(folder)
    photo = portrait()
    tape = dk.invert(pipe, photo, "a photo", steps=steps, method="exact", guidance=guidance, progress=False)
    cond = dk.encode(pipe, "a photo", "a photo, red")
    with torch.no_grad():
        vae = dk.decode(pipe, dk.encode_image(pipe, photo)).float().cpu()
    pair = [dk.MixSchedule.constant(steps, 0.0), dk.MixSchedule.switch(steps, steps // 2)]
    db = lambda t: float(psnr(dk.sample(pipe, cond, pair, t, guidance, progress=False).pixels[:1], vae))  # noqa: E731
    return {"kind": kind, "batched": db(replace(tape, exact=False)), "alone": db(tape),
            "max_noise": float(tape.step_noise.abs().max())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        kinds = ("sd1", "sd2", "sdxl")
        rows = [measure(k, save_hub_layout(k, Path(tmp) / k), args.steps, args.guidance) for k in kinds]
    lines = [
        f"Exact inversion replayed beside a second schedule: PSNR (dB) against the VAE round trip, {args.steps} steps, "
        f"guidance {args.guidance:g}, 64x96 px, random-weight hub-layout folders, CPU float32.",
        "",
        "| model | rows in one UNet batch (before) | each row alone (now) | max abs solved noise |",
        "|---|---|---|---|",
        *[f"| {r['kind']} | {r['batched']:.1f} | {r['alone']:.1f} | {r['max_noise']:.1f} |" for r in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        write_text_atomic(args.out / "exact_replay.md", text)


if __name__ == "__main__":
    main()
