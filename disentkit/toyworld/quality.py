"""Quality measurements of a toy model that the report (disentkit/reports/toyworld.py (run by benchmarks/toyworld_report.py)) and the tests share.

  switch_windows   per attribute pair of a switch sweep: the runs of consecutive switch steps that keep the content
                   (mean mask IoU with the pure-c0 image) and reach the style (on the seeds whose c0 image lacks it);
  clip_agreement   the toy CLIP's zero-shot answer against the evaluator's on generated images, per factor.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from . import scenes as S

# The window bars: a switch step keeps the content when the mean mask IoU with the pure-c0 image is >= IOU_BAR, and
# reaches the style when >= REACH_BAR of the seeds whose c0 image lacks the target show it; a pair has a window
# when WINDOW_STEPS consecutive switch steps do both, measured on >= WINDOW_SEEDS seeds.
IOU_BAR, REACH_BAR, WINDOW_STEPS, WINDOW_SEEDS = 0.8, 0.8, 3, 16


def switch_windows(runs: pd.DataFrame, steps: int, iou_bar: float = IOU_BAR, reach_bar: float = REACH_BAR,
                   min_steps: int = WINDOW_STEPS, min_seeds: int = WINDOW_SEEDS) -> pd.DataFrame:  # fmt: skip
    """One row per pair of a switch sweep's per-image rows (columns pair, k, seed, mask_iou, style_hit; k = steps
    is the pure-c0 image): seeds, lacking (seeds whose c0 image lacks the target), the longest run of consecutive
    listed switch steps k < steps that keep the content and reach the style (start, end, length: None/0 if none),
    and window (length >= min_steps on >= min_seeds seeds). Reach is measured on the lacking seeds only, so a seed
    that shows the target anyway cannot make a switch look effective."""
    rows = []
    for pair, part in runs.groupby("pair", sort=False):
        c0 = part[part["k"] == steps].set_index("seed")["style_hit"].astype(bool)
        lacking = c0.index[~c0.to_numpy()]
        switches = part[part["k"] < steps]
        iou = switches.groupby("k")["mask_iou"].mean()
        on_lacking = switches[switches["seed"].isin(lacking)]
        reach = on_lacking.groupby("k")["style_hit"].mean().reindex(iou.index) if len(lacking) else iou * np.nan
        ok = (iou >= iou_bar) & (reach >= reach_bar)
        length, start, end, run, run_start = 0, None, None, 0, None
        for k, flag in ok.items():  # k in sweep order: consecutive listed switch steps
            run, run_start = (run + 1, run_start if run else k) if flag else (0, None)
            if run > length:
                length, start, end = run, int(run_start), int(k)
        rows.append({
            "pair": pair, "seeds": int(c0.size), "lacking": int(len(lacking)),
            "start": start, "end": end, "length": length,
            "window": bool(length >= min_steps and c0.size >= min_seeds),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _scene_of(labels: pd.Series) -> S.Scene:
    """A scene with the labels an evaluator saw (position and size do not enter captions)."""
    kind = labels["kind"]
    expression = (labels.get("expression") or "neutral") if kind == "face" else None
    return S.Scene(kind=kind, color=labels["color"], texture=labels["texture"], expression=expression,
                   background=labels["background"], rendering=labels["rendering"], x=0.5, y=0.5, size=0.5)  # fmt: skip


@torch.no_grad()
def clip_agreement(clip, images: np.ndarray, seen: pd.DataFrame) -> pd.DataFrame:
    """How often the toy CLIP's zero-shot answer equals the evaluator's label, per factor, on (generated) images.

    images: (N, 64, 64, 3) uint8; seen: the evaluator's table of them (Evaluator.__call__). For each image and
    factor CLIP picks among the captions that differ from the evaluator's reading in that factor only
    (scenes.factor_captions); expression is asked on images the evaluator sees as faces only. clip: a
    disentkit.losses.Clip. Returns rows factor, n, agreement."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255  # (N, 3, 64, 64)
    img = torch.cat([clip.encode_images(p) for p in pixels.split(256)])  # (N, E)
    text_cache: dict[str, torch.Tensor] = {}
    rows = []
    for factor, values in S.FACTORS.items():
        keep = [i for i in range(len(seen)) if factor != "expression" or seen["kind"].iloc[i] == "face"]
        captions = [S.factor_captions(_scene_of(seen.iloc[i]), factor) for i in keep]
        missing = sorted({c for cs in captions for c in cs} - set(text_cache))
        if missing:
            text_cache.update(zip(missing, clip.encode_texts(missing)))
        agree = [
            values[int((torch.stack([text_cache[c] for c in cs]) @ img[i]).argmax())] == seen[factor].iloc[i]
            for i, cs in zip(keep, captions)
        ]
        rows.append({"factor": factor, "n": len(keep), "agreement": float(np.mean(agree)) if agree else float("nan")})
    return pd.DataFrame(rows)
