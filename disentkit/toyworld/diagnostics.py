"""Why are the bundled model's switch windows narrow? Cheap measurements of the candidate causes.

    python -m disentkit.toyworld.diagnostics --map docs/results/bundle_2026-11-26/report.json

Four candidates, each measured rather than assumed:
  schedule    the noise schedule is Stable Diffusion's (tuned for 64x64 latents) on a 16x16 latent. For each
              sampling step: its timestep and log-SNR; from a report's disentanglement map, the switch step from
              which content is kept and the last one that still reaches the style, as log-SNRs; and how many of the
              50 steps would fall between those two log-SNRs if the schedule's log-SNR were shifted by s (simple
              diffusion, Hoogeboom et al. 2023: s = 2 log(64/16) makes a 16x16 latent keep the share of coarse
              signal a 64x64 one keeps at the same timestep).
  mouths      how many image and latent pixels tell one expression from another (a face rendered twice, only the
              expression changed).
  latent      does the VAE's 16x16x4 latent keep each factor at all? The evaluator's accuracy on VAE round trips
              of held-out renders against the renders themselves.
  captions    how often the UNet's training captions say each attribute value (the data the UNet learns from).
  visibility  at which noise level each pair's change shows in the noisy latent, how much of it lies in the
              latent's per-channel means, and how far offset noise would delay it (arithmetic on the training latents).
  judge       whether the evaluator's object masks stay put when only the pair's factor changes on renders (if
              not, a closed window could be the judge's blind spot rather than the model's).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import scenes as S
from .models import LATENT_SIZE, images_to_tensor, make_scheduler

# Hoogeboom et al. (2023): a d x d input at log-SNR l keeps as much coarse (64x64-pooled) signal as a 64x64 input
# at l - 2 log(64 / d). SD's schedule was tuned for 64x64 latents; ours are LATENT_SIZE x LATENT_SIZE.
RESOLUTION_SHIFT = 2 * math.log(64 / LATENT_SIZE)


def step_log_snr(steps: int = 50, shift: float = 0.0) -> pd.DataFrame:
    """One row per DDIM sampling step i (0 = noisiest): timestep t, alpha_bar, log-SNR = log(a / (1 - a)), and the
    log-SNR after adding `shift` (a positive shift means less noise at every timestep)."""
    scheduler = make_scheduler()
    scheduler.set_timesteps(steps)
    a = scheduler.alphas_cumprod[scheduler.timesteps].double()
    log_snr = torch.log(a / (1 - a)).numpy()
    return pd.DataFrame({"step": np.arange(steps), "t": scheduler.timesteps.numpy(), "alpha_bar": a.numpy(),
                         "log_snr": log_snr, "log_snr_shifted": log_snr + shift})  # fmt: skip


def switch_window_steps(table: pd.DataFrame, steps: int = 50, iou_bar: float = 0.8, reach_bar: float = 0.8,
                        reach_column: str = "style_hit") -> pd.DataFrame:  # fmt: skip
    """Per pair of a disentanglement-map table (one row per pair and switch step k, means over seeds): content_k,
    the first k from which every later switch keeps mean mask IoU >= iou_bar; style_k, the last k < steps whose
    reach_column is >= reach_bar; the window (k with both, consecutive run length) and the log-SNRs of the steps
    where content settles and where the style stops being reachable."""
    snr = step_log_snr(steps).set_index("step")["log_snr"]
    rows = []
    for pair, part in table.groupby("pair", sort=False):
        part = part.set_index("k").sort_index()
        part = part[part.index < steps]
        below = part.index[part["mask_iou"] < iou_bar]
        content_k = int(below.max()) + 1 if len(below) else 0
        reached = part.index[part[reach_column] >= reach_bar]
        style_k = int(reached.max()) if len(reached) else None
        ok = (part["mask_iou"] >= iou_bar) & (part[reach_column] >= reach_bar)
        best, run = 0, 0
        for flag in ok:
            run = run + 1 if flag else 0
            best = max(best, run)
        rows.append({
            "pair": pair, "content_k": content_k, "style_k": style_k, "window_steps": int(ok.sum()),
            "longest_run": best,
            "log_snr_content": float(snr.get(content_k, np.nan)),
            "log_snr_style": float(snr.get(style_k, np.nan)) if style_k is not None else np.nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


def steps_between(log_snr_noisy: float, log_snr_clean: float, steps: int = 50, shift: float = 0.0) -> int:
    """How many of `steps` sampling steps have a (shifted) log-SNR in [log_snr_noisy, log_snr_clean]: the width of a
    switch window whose ends are decided at those noise levels, if the decisions stay tied to the noise level."""
    snr = step_log_snr(steps, shift)["log_snr_shifted"].to_numpy()
    return int(((snr >= log_snr_noisy) & (snr <= log_snr_clean)).sum())


def expression_pixels(n: int = 200, seed: int = 5) -> dict:
    """Pixels that differ between a face rendered smiling and the same face neutral (and frowning vs neutral), at
    64x64 and as 16x16 latent pixels (a latent pixel counts when any of its 4x4 image pixels changes)."""
    rng = np.random.default_rng(seed)
    image_px, latent_px, sizes = [], [], []
    for _ in range(n):
        base = S.sample_scene(rng, kind="face", rendering="photo")
        neutral = S.render(replace(base, expression="neutral"))[0].astype(int)
        for other in ("smiling", "frowning"):
            diff = np.abs(S.render(replace(base, expression=other))[0].astype(int) - neutral).sum(-1) > 30  # (64, 64)
            image_px.append(int(diff.sum()))
            latent_px.append(int(diff.reshape(LATENT_SIZE, 4, LATENT_SIZE, 4).any((1, 3)).sum()))
        sizes.append(base.size)
    return {
        "faces": n, "image_pixels_mean": float(np.mean(image_px)),
        "image_pixels_p10": float(np.percentile(image_px, 10)),
        "latent_pixels_mean": float(np.mean(latent_px)), "latent_pixels_p10": float(np.percentile(latent_px, 10)),
        "image_share": float(np.mean(image_px)) / 64**2, "face_size_mean": float(np.mean(sizes)),
    }  # fmt: skip


@torch.no_grad()
def vae_round_trip(vae, evaluator, n: int = 400, seed: int = 6) -> pd.DataFrame:
    """Evaluator accuracy per factor on n held-out renders and on their VAE round trips (posterior mean)."""
    rng = np.random.default_rng(seed)
    scenes = [S.sample_scene(rng, kind="face") if i % 2 else S.sample_scene(rng) for i in range(n)]  # half faces
    images, _ = S.render_batch(scenes)
    x = images_to_tensor(images)
    recon = torch.cat([vae.decode(vae.encode(x[i : i + 100]).latent_dist.mean).sample for i in range(0, n, 100)])
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rows = []
    for name, batch in (("render", images), ("vae", recon)):
        df = evaluator(batch)
        for factor in S.FACTORS:
            truth = [getattr(s, factor) for s in scenes]
            keep = [t is not None for t in truth]
            got = df[factor].to_numpy()
            acc = float(np.mean([g == t for g, t, k in zip(got, truth, keep) if k]))
            rows.append({"images": name, "factor": factor, "accuracy": acc})
    return rows and pd.DataFrame(rows).pivot(index="factor", columns="images", values="accuracy").reset_index()


@torch.no_grad()
def evaluator_mask_stability(evaluator, n: int = 64, seed: int = 11) -> pd.DataFrame:
    """Is a closed window the model's or the judge's? For each map pair's change (night, sketch, red, striped,
    smiling), n photo scenes rendered twice, only that factor changed (same object, same place: the true masks are
    equal): the evaluator's mask IoU between the two renders, and against the true mask of the changed one."""
    from .evaluator import mask_iou

    rng = np.random.default_rng(seed)
    rows = []
    for kind, factor, value in (("triangle", "background", "night"), ("star", "rendering", "sketch"),
                                ("circle", "color", "red"), ("square", "texture", "striped"),
                                ("face", "expression", "smiling")):  # fmt: skip
        base = [S.sample_scene(rng, kind=kind, rendering="photo") for _ in range(n)]
        a, _ = S.render_batch(base)
        b, true_b = S.render_batch([replace(s, **{factor: value}) for s in base])
        pa, pb = evaluator.mask(a), evaluator.mask(b)
        rows.append({"change": f"{kind}: {factor} -> {value}", "evaluator_iou": float(mask_iou(pa, pb).mean()),
                     "evaluator_vs_truth_iou": float(mask_iou(pb, torch.from_numpy(true_b)).mean())})  # fmt: skip
    return pd.DataFrame(rows)


def difference_visibility(latents: torch.Tensor, scenes: list[dict], offsets=(0.0, 0.1, 0.2)) -> pd.DataFrame:
    """When does each map pair's change become visible in the noisy latent, and how much would offset noise delay it?

    For a pair (day -> night, photo -> sketch, a circle's other colour -> red), the mean training latent of each side
    differs by a pattern d (4x16x16, in the scaled latents the UNet sees). In x_t = sqrt(a) z0 + sqrt(1 - a) eps the
    pattern reaches d' = 1 against the noise at log-SNR -ln(|d|^2): the noisier that level, the earlier in sampling
    the change is settled. Offset noise o adds a per-channel constant of std o to eps, i.e. multiplies the noise of
    the per-channel means by (1 + 256 o^2) and leaves the rest: the level becomes -ln(|d_mean|^2 / (1 + 256 o^2) +
    |d_rest|^2). share_in_means = |d_mean|^2 / |d|^2. latents: (N, 4, 16, 16); scenes: Scene.to_dict() rows."""
    lat = latents.double()
    pixels = lat.shape[-1] * lat.shape[-2]
    field = lambda name: np.array([s[name] for s in scenes])  # noqa: E731
    bg, rendering, color, kind = field("background"), field("rendering"), field("color"), field("kind")
    pairs = {
        "background: day -> night": (bg == "day", bg == "night"),
        "rendering: photo -> sketch": (rendering == "photo", rendering == "sketch"),
        "circle colour: other -> red": ((kind == "circle") & (color != "red"), (kind == "circle") & (color == "red")),
    }
    rows = []
    for name, (a, b) in pairs.items():
        d = lat[torch.from_numpy(b)].mean(0) - lat[torch.from_numpy(a)].mean(0)  # (4, 16, 16)
        d_mean = d.mean((1, 2), keepdim=True).expand_as(d)
        mean_energy, rest_energy = float((d_mean**2).sum()), float(((d - d_mean) ** 2).sum())
        row = {"change": name, "share_in_means": mean_energy / (mean_energy + rest_energy)}
        for o in offsets:
            row[f"log_snr_visible_offset_{o:g}"] = -np.log(mean_energy / (1 + pixels * o**2) + rest_energy)
        rows.append(row)
    return pd.DataFrame(rows)


def caption_balance(n: int = 40_000, face_fraction: float = 0.35, caption_dropout: float = 0.12,
                    seed: int = 7) -> pd.DataFrame:  # fmt: skip
    """How often the UNet's training captions say each attribute value: per (factor, value), the share of all
    training captions that say it, and the share of the images showing it whose caption says it. Scenes are drawn
    as training draws them (face_fraction of them faces, caption dropout)."""
    rng = np.random.default_rng(seed)
    said, shown = {}, {}
    for _ in range(n):
        scene = S.sample_scene(rng, kind="face") if rng.random() < face_fraction else S.sample_scene(rng)
        text = "" if rng.random() < caption_dropout else S.random_caption(scene, rng)
        pinned = S.parse_caption(text) if text else {}
        for factor in S.FACTORS:
            value = getattr(scene, factor)
            if value is None:
                continue
            shown[factor, value] = shown.get((factor, value), 0) + 1
            if pinned.get(factor) == value:
                said[factor, value] = said.get((factor, value), 0) + 1
    rows = [{"factor": f, "value": v, "said_share_of_captions": said.get((f, v), 0) / n,
             "said_when_shown": said.get((f, v), 0) / shown[f, v]} for (f, v) in shown]  # fmt: skip
    return pd.DataFrame(rows).sort_values(["factor", "value"]).reset_index(drop=True)


def schedule_section(map_report: Path, steps: int = 50) -> dict:
    """The schedule measurement on a kept report.json: windows per pair, their log-SNRs, and the window width in
    steps under shifts of 0, +-RESOLUTION_SHIFT / 2 and +-RESOLUTION_SHIFT."""
    table = pd.DataFrame(json.loads(Path(map_report).read_text())["map"]["table"])
    windows = switch_window_steps(table, steps)
    shifts = [0.0, RESOLUTION_SHIFT / 2, RESOLUTION_SHIFT, -RESOLUTION_SHIFT / 2, -RESOLUTION_SHIFT]
    for s in shifts:
        windows[f"steps_shift_{s:+.2f}"] = [
            steps_between(r.log_snr_content, r.log_snr_style, steps, s) if np.isfinite(r.log_snr_style) else 0
            for r in windows.itertuples()
        ]
    snr = step_log_snr(steps)
    return {"windows": windows, "log_snr": snr, "shifts": shifts}


def main(argv: list[str] | None = None) -> None:
    """Print every measurement (the command line of the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--map", type=Path, nargs="+", default=[], help="report.json files of benchmarks/toyworld_report.py")
    p.add_argument("--model", default=None, help="pipeline folder for the VAE round trip (default: bundled)")
    p.add_argument("--skip-vae", action="store_true")
    p.add_argument("--data", type=Path, default=None,
                   help="a continue_unet data folder (scenes and latents) for the visibility of each change")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    snr = step_log_snr()
    print("log-SNR of sampling steps 0, 5, .., 45, 49:",
          ", ".join(f"{i}:{v:.2f}" for i, v in zip(snr.step, snr.log_snr) if i % 5 == 0 or i == 49))
    print(f"resolution shift 2 log(64/{LATENT_SIZE}) = {RESOLUTION_SHIFT:.3f}")
    for path in args.map:
        section = schedule_section(path)
        print(f"\n{path}:\n{section['windows'].round(2).to_string(index=False)}")
    print("\nexpression pixels:", json.dumps(expression_pixels()))
    print("\ncaption balance:\n" + caption_balance().round(3).to_string(index=False))
    if args.data:
        latents = torch.load(args.data / "latents.pt")["latents"]
        scenes = json.loads((args.data / "data" / "scenes.json").read_text())
        print("\nwhen each change becomes visible in x_t (log-SNR), and with offset noise:\n"
              + difference_visibility(latents, scenes).round(2).to_string(index=False))
    if not args.skip_vae:
        from diffusers import AutoencoderKL

        from .evaluator import Evaluator

        folder = Path(args.model) if args.model else Path(__file__).parent / "weights" / "pipeline"
        vae = AutoencoderKL.from_pretrained(folder / "vae").float().eval()
        evaluator = Evaluator.load()
        print("\nevaluator accuracy, renders vs VAE round trips:\n"
              + vae_round_trip(vae, evaluator).round(3).to_string(index=False))
        print("\nevaluator masks across one factor's change (true masks equal):\n"
              + evaluator_mask_stability(evaluator).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
