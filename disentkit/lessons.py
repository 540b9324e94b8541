"""What the course's notebooks compute, so that their cells stay a few lines long.

Each function takes a :class:`~disentkit.notebooks.Lesson` (what ``notebooks.setup`` returns) and plain results, and
returns plain data (DataFrames, tensors) or a figure. Measurements use the toyworld evaluator when the lesson has
one (``ctx.evaluator``): *style reached* is its probability that an image shows the attribute ``c1`` adds; *content
kept* is the overlap (IoU) of the object masks it finds in an image and in the pure-``c0`` image of the same
noise. Without it (real models) the claims that need ground truth are recorded as not judged, and the maps of 03, 09
and 10 show the proxies of :mod:`disentkit.metrics` instead (CLIP's probability of ``c1``'s attribute, the pixel
distance to the ``c0`` image), which docs/metrics.md checks against the evaluator on toyworld.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .plotting import image_grid
from .errors import OptionError

STYLE_MIN = 0.8  # P(target) at which the style counts as reached (the toyworld report's bar)
IOU_MIN = 0.8  # mask IoU with the pure-c0 image at which the content counts as kept


def _style(ev, pixels: torch.Tensor, c0: str, c1: str) -> np.ndarray | None:
    from .notebooks import style_target

    try:
        factor, value = style_target(c0, c1)
    except (ValueError, KeyError):
        return None
    return ev.style_reached(pixels, factor, value).numpy().astype(float)


# ---- maps: switch sweeps, scored (03, 09, 10) -----------------------------------------------------------------
def map_metrics(clip) -> list[str]:
    """The proxies a course map computes: with a CLIP, the recommended pair (content ``pixel``, style ``clip_prob``:
    docs/metrics.md) and CLIP's structure distance ``struct_clip`` (kept in the CSV beside ``pixel``: a content
    proxy that a uniform change of colour or brightness does not move); without one, ``pixel`` only."""
    return ["clip_prob", "struct_clip", "pixel"] if clip is not None else ["pixel"]


def run_map(ctx, pairs: pd.DataFrame, switch_steps: Sequence[int], seeds: Sequence[int] | None = None,
            name: str = "map") -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """:func:`disentkit.disentanglement_map` of ``pairs`` (columns c0, c1, optional name) over ``switch_steps`` (and
    the pure-c0 end) on the lesson's model, seeds, steps, guidance and size, written to ``ctx.out / name`` with a
    thumbnail strip per seed. A rerun with the same settings reads it back; with other settings it starts afresh.

    Returns (table, images). table: the map's rows (one per pair, seed and switch step: ``name``, c0, c1, seed,
    switch, the proxies of :func:`map_metrics`) with the course's columns: ``pair`` = the pair's row number, and
    from the evaluator ``style`` (P(target)), ``iou`` (mask IoU with the pure-c0 image) and ``c0_style`` (the
    pure-c0 image's P(target): an attribute c0 already shows is no edit), NaN without it. images: {(pair, seed,
    switch): PIL image}."""
    import shutil

    from .errors import MapMismatchError
    from .map import Pair, disentanglement_map, load_strip

    seeds = [int(s) for s in (ctx.seeds if seeds is None else seeds)]
    ks = sorted({int(k) for k in switch_steps} | {ctx.steps})
    names = pairs["name"] if "name" in pairs else [""] * len(pairs)
    todo = [Pair(c0, c1, n) for c0, c1, n in zip(pairs["c0"], pairs["c1"], names)]
    clip = _optional_clip(ctx)
    out = ctx.out / name

    evaluator = False if ctx.evaluator is None else ctx.evaluator  # False: none, not the model's default one

    def run():
        return disentanglement_map(
            ctx.pipe, todo, seeds, ks, metrics=map_metrics(clip), evaluator=evaluator, steps=ctx.steps,
            guidance=ctx.guidance, out=out, progress=False, clip=clip, strip_seeds=len(seeds), height=ctx.height,
            width=ctx.width,
        )  # fmt: skip

    try:
        df = run()
    except MapMismatchError:  # made by an earlier run with other parameters: the folder is this notebook's own
        shutil.rmtree(out)
        df = run()
    table = df.rename(columns={"pair": "name", "pair_index": "pair", "evaluator_target_prob": "style",
                               "evaluator_mask_iou": "iou"}).drop(columns=["evaluator_kind_agree", "evaluator_score"],
                                                                  errors="ignore")  # fmt: skip
    for col in ("style", "iou"):
        if col not in table:  # no ground truth: the columns exist, empty, so claims built on them evaluate
            table[col] = np.nan  # (and are recorded as not judged)
    c0_style = table[table["switch"] == ctx.steps].set_index(["pair", "seed"])["style"]
    table["c0_style"] = [c0_style.get((p, s), np.nan) for p, s in zip(table["pair"], table["seed"])]
    images = {}
    for p in range(len(todo)):
        for seed in seeds:
            tiles, _ = load_strip(out, p, seed)
            images.update({(p, seed, k): tile for k, tile in zip(ks, tiles)})
    return table, images


def proxy_windows(table: pd.DataFrame, content: str | None = None, style: str | None = None) -> pd.DataFrame:
    """:func:`disentkit.find_windows` on a :func:`run_map` table: by default on the proxies (the recommended pair,
    content ``pixel``, style ``clip_prob``), the windows a model without an evaluator gets; ``content="iou",
    style="style"`` applies the same rule to the evaluator's columns. An empty frame without those columns."""
    from .map import RECOMMENDED, find_windows

    content, style = content or RECOMMENDED[0], style or RECOMMENDED[1]
    if style not in table or content not in table:
        return pd.DataFrame(columns=["name", "pair", "c0", "c1", "start", "end", "width", "found", "best"])
    as_map = table.rename(columns={"pair": "pair_index", "name": "pair"})  # the map's own column names
    return find_windows(as_map, content=content, style=style).rename(columns={"pair": "name", "pair_index": "pair"})


def has_truth(table: pd.DataFrame) -> bool:
    """Whether the table holds the evaluator's measurements (not the NaN columns of a model without one)."""
    return "style" in table and table["style"].notna().any()


def _captions(rows: pd.DataFrame) -> list[str]:
    """"P 1.00 IoU 0.87" under each image (the evaluator's style and content scores of that image)."""
    return [f"P {p:.2f} IoU {i:.2f}" for p, i in zip(rows["style"], rows["iou"])]


def works(table: pd.DataFrame, style_min: float = STYLE_MIN, iou_min: float = IOU_MIN) -> pd.Series:
    """Per row: the edit reached the style *and* kept the content (needs the evaluator's columns)."""
    return (table["style"] >= style_min) & (table["iou"] >= iou_min)


def windows(table: pd.DataFrame, style_min: float = STYLE_MIN, iou_min: float = IOU_MIN) -> pd.DataFrame:
    """Per pair: the switch steps where the edit works on every seed (``first``/``last``: the window, or None),
    the ``best`` switch (most seeds working; the latest such, which keeps the most content), how many seeds work
    there (``seeds_ok`` of ``seeds``), the seeds on which no sampled switch works (``no_window``), the latest switch
    at which the mean style is still reached (``style_until``) and the first from which the mean IoU stays kept
    (``content_from``)."""
    t = table.assign(ok=works(table, style_min, iou_min))
    rows = []
    for (pair, c1), part in t.groupby(["pair", "c1"], sort=True):
        per_k = part.groupby("switch").agg(ok=("ok", "sum"), style=("style", "mean"), iou=("iou", "mean"))
        n = part["seed"].nunique()
        full = per_k.index[per_k["ok"] == n].tolist()
        best_count = int(per_k["ok"].max())
        best = int(per_k.index[per_k["ok"] == best_count].max()) if best_count > 0 else None
        seed_ok = part.groupby("seed")["ok"].any()
        reached = per_k.index[per_k["style"] >= style_min].tolist()
        kept = [k for k in per_k.index if (per_k.loc[k:, "iou"] >= iou_min).all()]
        rows.append({"pair": pair, "c0": part["c0"].iloc[0], "c1": c1, "first": min(full) if full else None,
                     "last": max(full) if full else None, "best": best, "seeds_ok": best_count, "seeds": n,
                     "no_window": [int(s) for s in seed_ok.index[~seed_ok]],
                     "style_until": max(reached) if reached else None, "content_from": min(kept) if kept else None,
                     "c0_style": float(part["c0_style"].mean())})  # fmt: skip
    return pd.DataFrame(rows)


def _proxy_captions(rows: pd.DataFrame) -> list[str]:
    """"CLIP 0.93 px 0.12" under each image (the proxies: CLIP's P(c1's attribute), RMS pixel change from c0)."""
    if "clip_prob" in rows:
        return [f"CLIP {p:.2f} px {d:.2f}" for p, d in zip(rows["clip_prob"], rows["pixel"])]
    return [f"px {d:.2f}" for d in rows["pixel"]]


def switch_grid(table: pd.DataFrame, images: dict, pair: int = 0, window: Sequence[int] = (), title: str | None = None):
    """Rows: seeds; columns: switch steps, pure c1 (k = 0) first and pure c0 (k = N) last, from :func:`run_map`'s
    table and images. Column labels say the switch (a column inside ``window`` is marked with *); the caption under
    each image gives that seed's P(target) and IoU, or without the evaluator its proxies."""
    part = table[table["pair"] == pair].set_index(["seed", "switch"])
    N = int(table["switch"].max())
    ks = sorted(part.index.get_level_values("switch").unique())
    seeds = list(dict.fromkeys(part.index.get_level_values("seed")))
    cells = [(s, k) for s in seeds for k in ks]
    rows = part.loc[cells]
    captions = _captions(rows) if has_truth(rows) else _proxy_captions(rows)

    def label(k):
        return "c1 (k=0)" if k == 0 else "c0 (k=N)" if k == N else f"k={k}" + ("*" if k in window else "")

    return image_grid([images[(pair, s, k)] for s, k in cells], len(seeds), len(ks), [f"seed {s}" for s in seeds],
                      [label(k) for k in ks], title, captions=captions)  # fmt: skip


def window_curves(table: pd.DataFrame, pair: int = 0, window: Sequence[int] = (), title: str | None = None,
                  window_label: str = "window"):
    """Mean style reached and content kept (min-max band over seeds) against the switch step, with the window
    shaded; without the evaluator, the proxies' curves and window (:func:`proxy_curves`)."""
    from .plotting import _new_figure

    part = table[table["pair"] == pair]
    if not has_truth(part):
        return proxy_curves(table, pair, title)
    fig = _new_figure(6.0, 3.2)
    ax = fig.subplots()
    for col, name in (("style", "style reached: P(target)"), ("iou", "content kept: mask IoU with c0")):
        stats = part.groupby("switch")[col].agg(["mean", "min", "max"])
        line = ax.plot(stats.index, stats["mean"], marker=".", label=name)[0]
        ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
    ax.axhline(STYLE_MIN, color="0.5", lw=0.8, ls=":")
    ax.set_ylim(-0.02, 1.02)
    if len(window):
        ax.axvspan(min(window) - 0.5, max(window) + 0.5, color="tab:green", alpha=0.15, label=window_label)
    ax.set_xlabel("switch step k (c0 for steps 0..k-1)")
    ax.legend(fontsize=7, loc="center right")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def proxy_curves(table: pd.DataFrame, pair: int = 0, title: str | None = None):
    """The curves any model gets from the map's proxies (style ``clip_prob``, content ``pixel``, two y axes), with
    the window :func:`proxy_windows` finds shaded; only the pixel distance without a CLIP."""
    from .plotting import _new_figure
    from .plotting import window_curves as map_window_curves

    part = table[table["pair"] == pair]
    if "clip_prob" not in part:
        fig = _new_figure(6.0, 3.2)
        ax = fig.subplots()
        stats = part.groupby("switch")["pixel"].agg(["mean", "min", "max"])
        ax.plot(stats.index, stats["mean"], marker=".", label="RMS pixel difference with the c0 image")
        ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.15)
        ax.set_xlabel("switch step k (c0 for steps 0..k-1)")
        ax.legend(fontsize=7)
        ax.set_title(title or "no CLIP: the pixel distance alone (content and style mixed)", fontsize=9)
        return fig
    w = proxy_windows(part).iloc[0]
    as_map = part.rename(columns={"pair": "pair_index", "name": "pair"})
    return map_window_curves(as_map, as_map["pair"].iloc[0], "pixel", "clip_prob", (w["start"], w["end"]),
                             title or "the proxies: CLIP P(c1's attribute) and pixel change, mean over seeds")


DEFAULT_SWITCHES = (0, 5, 10, 12, 13, 14, 15, 16, 20, 30, 50)  # of 50: crowded where the colour's window lies


def default_switches(steps: int, given: Sequence[int] | None = None, scale: float = 1.0,
                     base: Sequence[int] = DEFAULT_SWITCHES) -> list[int]:
    """The switch steps a sweep samples: ``given``, or ``base`` (steps of 50) scaled to ``steps``; with ``scale``
    < 1 every other inner one is dropped. Always includes 0 (pure c1) and ``steps`` (pure c0)."""
    if given is not None:
        ks = {int(k) for k in given}
    else:
        inner = [k for k in base if 0 < k < 50]
        keep = max(1, round(len(inner) * min(1.0, scale)))
        inner = [inner[round(i * (len(inner) - 1) / max(1, keep - 1))] for i in range(keep)] if keep < len(inner) else inner
        ks = {round(k * steps / 50) for k in inner}
    ks |= {0, steps}
    return sorted(k for k in ks if 0 <= k <= steps)


def failure_detail(table: pd.DataFrame, seeds: Sequence[int], pair: int = 0) -> str:
    """For each seed without a working switch: its latest switch with the style and the IoU there, and its first
    switch that keeps the content and the style there ("seed 2: red until k=16 but IoU 0.00 there; ...")."""
    parts = []
    t = table[table["pair"] == pair]
    for seed in seeds:
        s = t[t["seed"] == seed].set_index("switch").sort_index()
        styled = s.index[s["style"] >= STYLE_MIN]
        kept = s.index[s["iou"] >= IOU_MIN]
        text = f"seed {seed}: "
        text += (f"style until k={styled.max()} with IoU {s.loc[styled.max(), 'iou']:.2f} there" if len(styled)
                 else "style at no k")  # fmt: skip
        inner = [k for k in kept if k < s.index.max()]
        text += (f"; content kept from k={min(inner)} with P(target) {s.loc[min(inner), 'style']:.2f} there"
                 if inner else "; content kept at no k before pure c0")  # fmt: skip
        parts.append(text)
    return "; ".join(parts)


def window_steps(ks: Sequence[int], win) -> list[int]:
    """The sampled switch steps inside a window row of :func:`windows` (first..last), else [best], else []."""
    if win["first"] is not None and not pd.isna(win["first"]):
        return [k for k in ks if win["first"] <= k <= win["last"]]
    return [int(win["best"])] if win["best"] is not None and not pd.isna(win["best"]) else []


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Rank correlation of two sequences (ties get their mean rank)."""
    rx, ry = pd.Series(list(x)).rank(), pd.Series(list(y)).rank()
    return float(np.corrcoef(rx, ry)[0, 1]) if rx.std() > 0 and ry.std() > 0 else 0.0


def ks_text(ks: Sequence[int]) -> str:
    """[12, 13, 14] -> "12-14"; [] -> "none"."""
    ks = sorted(int(k) for k in ks)
    if not ks:
        return "none"
    return f"{ks[0]}" if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"


def as_list(values: Any) -> list:
    return list(values) if isinstance(values, (list, tuple, np.ndarray, pd.Series)) else [values]


# ---- scoring single images -------------------------------------------------------------------------------------
def score(ctx, pixels: torch.Tensor, reference: torch.Tensor, c0: str | None = None, c1: str | None = None) -> dict:
    """Evaluator scores of images (R, 3, H, W) against reference images ((3, H, W) for all, or (R, 3, H, W)):
    ``{"style": P(target) (R,), "iou": mask IoU (R,), "shift": centroid move in px (R,), "dist": mean |pixel
    difference| (R,)}``; the evaluator's entries are NaN without one."""
    ref = reference.expand_as(pixels) if reference.ndim == 3 else reference
    out = {"dist": (pixels - ref).abs().mean(dim=(1, 2, 3)).numpy()}
    nan = np.full(len(pixels), np.nan)
    ev = ctx.evaluator
    style = _style(ev, pixels, c0 or ctx.c0, c1 or ctx.c1) if ev is not None else None
    out["style"] = style if style is not None else nan
    if ev is not None:
        kept = ev.content_kept(pixels, ref)
        out["iou"], out["shift"] = kept["mask_iou"].to_numpy(), kept["shift_px"].to_numpy()
    else:
        out["iou"], out["shift"] = nan, nan
    return out


def labelled(labels: Sequence[str], *scores: dict) -> list[str]:
    """Column labels with each image's P(target) and IoU underneath (scores concatenated in order), when known."""
    style = np.concatenate([s["style"] for s in scores])
    iou = np.concatenate([s["iou"] for s in scores])
    return [lab if np.isnan(p) else f"{lab}\nP {p:.2f} IoU {i:.2f}" for lab, p, i in zip(labels, style, iou)]


def named(schedule, label: str):
    """The same schedule under another label (for legends)."""
    from .schedules import MixSchedule

    return MixSchedule(schedule.weights, label, dict(schedule.meta))


# ---- learning ---------------------------------------------------------------------------------------------------
def alternatives(c0: str, c1: str) -> list[str]:
    """What the styled prompt competes with in the prompt loss: for a toyworld caption, c0 with each *other* value
    of the factor c1 sets ("..., green", "..., blue", ...); for any other prompts, c0 itself."""
    from .notebooks import style_target
    from .toyworld.scenes import BACKGROUND_PHRASES, FACTORS

    try:
        factor, value = style_target(c0, c1)
    except (ValueError, KeyError):
        return [c0]
    if factor == "rendering":
        return [c0]
    if factor == "background":
        return [f"{c0}, {BACKGROUND_PHRASES[v]}" for v in FACTORS[factor] if v != value]
    return [f"{c0}, {v}" for v in FACTORS[factor] if v != value]


RECIPES = {
    "paper": "the paper's objective: directional CLIP + 0.05 x perceptual, Adam on every step's weight",
    "prompt": "CLIP's P(c1) against its alternatives + 50 x layout (structure) term, only the steps after the "
              "switch learned, one step scale for all weights (tensorwise Adam)",
}


def learn(ctx, switch: int, iters: int, recipe: str = "prompt", tape=None, callback=None, **kwargs):
    """Learn the weights from ``reference_init(N, switch)`` with one of :data:`RECIPES` (the lesson's CLIP)."""
    from .losses import paper_losses, prompt_losses
    from .optimize import optimize, reference_init

    clip = ctx.clip()
    if recipe == "paper":
        options = {"losses": paper_losses(clip, ctx.c0, ctx.c1, beta=0.05)}
    elif recipe == "prompt":
        terms = prompt_losses(clip, ctx.c0, ctx.c1, alternatives(ctx.c0, ctx.c1), beta=50.0, content="struct")
        options = {"losses": terms, "learn_steps": switch, "optimizer": "tensorwise-adam"}
    else:
        raise OptionError(f"recipe is one of {list(RECIPES)}, not {recipe!r}.")
    return optimize(ctx.pipe, ctx.cond, reference_init(ctx.steps, switch), tape if tape is not None else ctx.tape,
                    iters=iters, guidance=ctx.guidance, callback=callback, progress=False, **options, **kwargs)  # fmt: skip


# ---- fixed noise and guidance (02) --------------------------------------------------------------------------------
def replay(ctx, etas: Sequence[float] = (0.0, 1.0), switch: int | None = None) -> pd.DataFrame:
    """For each eta: sample a switch schedule from one seed's tape twice, and once from a copy of the tape saved to
    ``ctx.out`` and loaded back; the largest pixel differences (``again``, ``loaded``), and ``other_step_noise``:
    the mean difference when only the per-step noise is redrawn (x_T kept)."""
    from .noise import NoiseTape
    from .notebooks import default_switch
    from .schedules import MixSchedule

    s = MixSchedule.switch(ctx.steps, switch if switch is not None else default_switch(ctx.model, ctx.steps))
    rows = []
    for eta in etas:
        t = NoiseTape.from_seed(ctx.pipe, ctx.seeds[0], steps=ctx.steps, eta=eta, height=ctx.height, width=ctx.width)
        path = t.save(ctx.out / f"tape_eta{eta:g}.safetensors")
        # the same x_T with other per-step noise (a deterministic sampler has none to redraw)
        other = None if t.step_noise is None else torch.randn(t.step_noise.shape, generator=torch.Generator().manual_seed(1234))
        fresh = NoiseTape(t.x_T, other, t.scheduler, t.steps, t.eta)
        a, b, c, d = (ctx.sample(s, tape=x).pixels for x in (t, t, NoiseTape.load(path), fresh))
        rows.append({"eta": eta, "again": (a - b).abs().max().item(), "loaded": (a - c).abs().max().item(),
                     "other_step_noise": (a - d).abs().mean().item()})  # fmt: skip
    return pd.DataFrame(rows)


def guidance_sweep(ctx, scales: Sequence[float] = (1.0, 3.0, 7.5)):
    """c0 and c1 everywhere at several guidance scales, every seed: (figure, table). The table has one row per
    scale: ``spread_c0``/``spread_c1`` (mean pixel distance between the images of different seeds),
    ``seed_iou_c1`` (mean mask IoU between different seeds' c1 images), ``same_seed_iou`` (c0 vs c1 image of
    the same seed) and ``style_c1`` (mean P(target) of the c1 images); the last three need the evaluator."""
    import itertools

    from .schedules import MixSchedule
    from .toyworld.evaluator import mask_iou

    both = [MixSchedule.constant(ctx.steps, 0.0), MixSchedule.constant(ctx.steps, 1.0)]
    B, rows, images, row_labels = len(ctx.seeds), [], [], []
    pairs = list(itertools.combinations(range(B), 2))
    for w in scales:
        px = sample_at(ctx, both, w)
        c0p, c1p = px[:B], px[B:]
        row = {"guidance": w, "spread_c0": _mean([(c0p[i] - c0p[j]).abs().mean().item() for i, j in pairs]),
               "spread_c1": _mean([(c1p[i] - c1p[j]).abs().mean().item() for i, j in pairs])}  # fmt: skip
        if ctx.evaluator is not None:
            m = ctx.evaluator.mask(px)
            row["seed_iou_c1"] = _mean([mask_iou(m[B + i : B + i + 1], m[B + j : B + j + 1]).item() for i, j in pairs])
            row["same_seed_iou"] = mask_iou(m[:B], m[B:]).mean().item()
            style = _style(ctx.evaluator, c1p, ctx.c0, ctx.c1)
            row["style_c1"] = float(style.mean()) if style is not None else np.nan
        else:
            row.update(seed_iou_c1=np.nan, same_seed_iou=np.nan, style_c1=np.nan)
        rows.append(row)
        images += list(px)
        row_labels += [f"c0, w={w:g}", f"c1, w={w:g}"]
    fig = image_grid(images, len(row_labels), B, row_labels, [f"seed {s}" for s in ctx.seeds],
                     "the same noise per column; guidance w grows downwards")  # fmt: skip
    return fig, pd.DataFrame(rows)


def _mean(values: Sequence[float]) -> float:
    """The mean, NaN for no values (one seed has no pairs of seeds), without numpy's warning."""
    return float(np.mean(values)) if len(values) else float("nan")


def sample_at(ctx, schedules, guidance: float) -> torch.Tensor:
    from .sampling import sample

    return sample(ctx.pipe, ctx.cond, schedules, ctx.tape, guidance, progress=False).pixels


# ---- the trajectory (04) ------------------------------------------------------------------------------------------
def settled(values: Sequence[float], threshold: float) -> int | None:
    """The first index from which every value is >= threshold (None if the last one is not)."""
    v = np.asarray(values, dtype=float)
    ok = v >= threshold
    if not ok[-1]:
        return None
    bad = np.nonzero(~ok)[0]
    return int(bad[-1] + 1) if len(bad) else 0


def trajectory_table(ctx, result) -> tuple[pd.DataFrame, torch.Tensor]:
    """Per sampling step, for a two-run recorded sample (run 0: c0 everywhere, run 1: c1 everywhere): the pixel
    distance of each run's predicted x0 to its final image (``to_final_c0/c1``), between the two predictions
    (``gap``), and with the evaluator P(target) of each prediction (``p_c0``, ``p_c1``) and the mask IoU of
    each prediction with its own final mask (``layout_c0``, ``layout_c1``). Also returns the decoded x0s
    (steps, 2, 3, H, W)."""
    x0 = result.trajectory.decode(ctx.pipe, "x0_pred")
    final = result.pixels
    table = pd.DataFrame({"step": range(len(x0))})
    table["to_final_c0"] = (x0[:, 0] - final[0]).abs().mean(dim=(1, 2, 3)).numpy()
    table["to_final_c1"] = (x0[:, 1] - final[1]).abs().mean(dim=(1, 2, 3)).numpy()
    table["gap"] = (x0[:, 0] - x0[:, 1]).abs().mean(dim=(1, 2, 3)).numpy()
    ev = ctx.evaluator
    for run, name in ((0, "c0"), (1, "c1")):
        p = _style(ev, x0[:, run], ctx.c0, ctx.c1) if ev is not None else None
        table[f"p_{name}"] = p if p is not None else np.nan
        if ev is not None:
            table[f"layout_{name}"] = ev.content_kept(x0[:, run], final[run].expand_as(x0[:, run]))["mask_iou"].to_numpy()
        else:
            table[f"layout_{name}"] = np.nan
    return table, x0


def trajectory_curves(table: pd.DataFrame, marks: dict[str, int | None], title: str | None = None):
    """Two panels over the sampling step: the layout (mask IoU of each prediction with its own final mask) and
    the style (P(target) of each prediction) -- or, without the evaluator, the distance to the final image --
    with vertical lines at ``marks`` ({label: step})."""
    from .plotting import _new_figure

    fig = _new_figure(9.0, 3.0)
    axes = fig.subplots(1, 2)
    truth = table["p_c1"].notna().any()
    panels = ([("layout", "layout settled: mask IoU with its own final mask"),
               ("p", "style: P(target) of the predicted x0")] if truth else
              [("to_final", "mean |pixel difference| to its final image"), ("to_final", "(same)")])  # fmt: skip
    for ax, (col, name) in zip(axes, panels):
        for run in ("c0", "c1"):
            ax.plot(table["step"], table[f"{col}_{run}"], marker=".", ms=3, label=f"{run} everywhere")
        for k, (label, step) in enumerate(marks.items()):
            if step is not None:
                ax.axvline(step, color=f"C{k + 2}", ls="--", lw=1, label=f"{label} (step {step})")
        ax.set_xlabel("sampling step (0 = noisiest)")
        ax.set_title(name, fontsize=9)
        if truth:
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ---- soft mixing (05) ----------------------------------------------------------------------------------------------
def soft_schedules(steps: int, early: int, late: int) -> list:
    """c0, the switches at ``early`` and ``late`` (plain, and with late weights 1.5 / -1), a ramp and a sigmoid
    between them, and c1: the schedules of the soft-mixing grid, labelled."""
    from .schedules import MixSchedule

    early = max(1, min(early, steps - 2))
    late = max(late, early + 1)  # the two switches must differ for the ramp between them to mean anything
    return [
        named(MixSchedule.constant(steps, 0.0), "c0"),
        named(MixSchedule.switch(steps, early), f"switch {early}"),
        named(MixSchedule.switch(steps, early, after=-1.0), f"switch {early}, late -1"),
        named(MixSchedule.ramp(steps, early, late), f"ramp {early}-{late}"),
        named(MixSchedule.sigmoid(steps, center=(early + late) / 2, width=max(steps / 50, 0.5)), f"sigmoid {(early + late) / 2:g}"),
        named(MixSchedule.switch(steps, late), f"switch {late}"),
        named(MixSchedule.switch(steps, late, after=1.5), f"switch {late}, late 1.5"),
        named(MixSchedule.constant(steps, 1.0), "c1"),
    ]


def pixel_distances(pixels: torch.Tensor, index: Sequence[int]) -> np.ndarray:
    """Mean |pixel difference| between every two of the chosen images: a (len(index), len(index)) matrix."""
    chosen = pixels[list(index)]
    return (chosen[:, None] - chosen[None]).abs().mean(dim=(2, 3, 4)).numpy()


def token_schedules(ctx, schedule) -> tuple[list, dict]:
    """``schedule`` applied to (a) the tokens where c1's text differs from c0's, before c1's end-of-text token, (b)
    c1's end-of-text token and the padding after it, (c) every token; the other tokens stay at c0. Returns the
    three schedules and their token masks ({"attribute": (T,), "end": (T,)})."""
    tok = ctx.pipe.tokenizer
    ids0 = tok(ctx.c0, padding="max_length", truncation=True).input_ids
    ids1 = tok(ctx.c1, padding="max_length", truncation=True).input_ids
    n1 = len(tok(ctx.c1).input_ids) - 1  # the index of c1's end-of-text token
    attribute = np.array([float(a != b and j < n1) for j, (a, b) in enumerate(zip(ids0, ids1))])
    end = np.array([float(j >= n1) for j in range(len(ids1))])
    masks = {"attribute": attribute, "end": end}
    out = [named(schedule.on_tokens(attribute.tolist()), f"{int(attribute.sum())} attribute tokens"),
           named(schedule.on_tokens(end.tolist()), f"{int(end.sum())} end tokens"),
           named(schedule, "all tokens")]  # fmt: skip
    return out, masks


# ---- learning (06) ---------------------------------------------------------------------------------------------
def term_curves(learned: dict):
    """One panel per loss term of every objective ({name: OptimizeResult}): the term against the iteration, the
    best iteration marked."""
    from matplotlib.ticker import MaxNLocator

    from .plotting import _new_figure

    panels = [(name, term) for name, res in learned.items() for term in _terms(res.history)]
    fig = _new_figure(2.6 * max(1, len(panels)), 2.6)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels))))
    for ax, (name, term) in zip(axes, panels):
        h = learned[name].history
        ax.plot(h["iteration"], h[term], marker=".")
        ax.axvline(learned[name].best_iteration, color="0.6", ls=":", lw=1)
        ax.set_title(f"{name}: {term}", fontsize=9)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _terms(history: pd.DataFrame) -> list[str]:
    skip = {"iteration", "loss", "grad_norm"}
    return [c for c in history.columns if c not in skip and not c.startswith("lambda_") and not c.endswith("_floor")]


def learned_grid(ctx, learned: dict, start_px: torch.Tensor, switch: int):
    """Rows: c0, the start switch, each learned schedule, c1; columns: seeds; labels with P(target)/IoU. Returns
    (figure, scores) where scores has one row per schedule (style and iou as lists over seeds)."""
    from .schedules import MixSchedule

    ref = ctx.sample(MixSchedule.constant(ctx.steps, 0.0)).pixels
    c1 = ctx.sample(MixSchedule.constant(ctx.steps, 1.0)).pixels
    rows = [("c0", ref), ("start", start_px), *[(n, r.pixels) for n, r in learned.items()], ("c1", c1)]
    images, labels, table, captions = [], [], [], []
    for name, px in rows:
        s = score(ctx, px, reference=ref)
        images += list(px)
        captions += [f"P {p:.2f} IoU {i:.2f}" for p, i in zip(s["style"], s["iou"])]
        table.append({"schedule": name, "style": [round(float(v), 2) for v in s["style"]],
                      "iou": [round(float(v), 2) for v in s["iou"]]})  # fmt: skip
        labels.append({"start": f"switch at {switch}", "c0": "c0", "c1": "c1"}.get(name, f"learned: {name}"))
    B = len(ctx.seeds)
    cols = [f"seed {sd}" for sd in ctx.seeds]
    truth = ctx.evaluator is not None
    fig = image_grid(images, len(rows), B, labels, cols, "the same seeds: start, learned, and both pure prompts",
                     captions=captions if truth else None)
    return fig, pd.DataFrame(table)


def all_at_least(values, bound: float) -> bool:
    v = np.asarray(values, dtype=float)
    return bool(len(v) and np.all(v >= bound))


def all_below(values, bound: float) -> bool:
    v = np.asarray(values, dtype=float)
    return bool(len(v) and np.all(v < bound))


def early_change(schedule, init, switch: int) -> float:
    """The largest |learned - initial| weight among the steps before ``switch``."""
    if switch <= 0:
        return 0.0
    d = (schedule.weights - init.weights).abs()
    return float(d[:switch].max())


# ---- transfer (07) ---------------------------------------------------------------------------------------------
def find_learned(ctx, schedule_path=None, switch: int | None = None):
    """The schedule to transfer and where it came from: ``schedule_path``, else 06_learning_lambda's
    ``learned_schedule.json`` beside ``ctx.out``, else the switch at ``switch`` (the start of 06)."""
    from pathlib import Path

    from .optimize import reference_init
    from .schedules import MixSchedule

    candidate = Path(schedule_path) if schedule_path else ctx.out.parent / "06_learning_lambda" / "learned_schedule.json"
    if candidate.is_file():
        return MixSchedule.load(candidate).resample(ctx.steps), f"learned, from {candidate}"
    return reference_init(ctx.steps, switch), f"switch at {switch} (no learned schedule at {candidate})"


def transfer_table(ctx, schedules: dict, learned_on: Sequence[int] = ()):
    """Apply each of ``schedules`` ({label: MixSchedule}) to the lesson's seeds; (figure, table). The table has one
    row per (schedule, seed): new (not in ``learned_on``), style, iou, style_ok, works, clip_direction."""
    from .losses import DirectionalCLIPLoss
    from .schedules import MixSchedule

    pure = [MixSchedule.constant(ctx.steps, 0.0), MixSchedule.constant(ctx.steps, 1.0)]
    res = ctx.sample([*pure, *schedules.values()])
    B = len(ctx.seeds)
    ref = res.pixels[:B]
    clip = _optional_clip(ctx)
    direction = DirectionalCLIPLoss(clip, ctx.c0, ctx.c1) if clip is not None else None
    rows, images, labels, captions = [], [], [], []
    for j, label in enumerate(["c0", "c1", *schedules]):
        px = res.pixels[j * B : (j + 1) * B]
        s = score(ctx, px, reference=ref)
        captions += [f"P {p:.2f} IoU {i:.2f}" for p, i in zip(s["style"], s["iou"])]
        with torch.no_grad():
            cd = (1 - direction(px, ref)).cpu().numpy() if direction is not None and j > 0 else np.full(B, np.nan)
        images += list(px)
        labels.append(label)
        if j >= 2:
            for b, seed in enumerate(ctx.seeds):
                rows.append({"schedule": label, "seed": seed, "new": seed not in learned_on,
                             "style": s["style"][b], "iou": s["iou"][b],
                             "style_ok": bool(s["style"][b] >= STYLE_MIN),
                             "works": bool(s["style"][b] >= STYLE_MIN and s["iou"][b] >= IOU_MIN),
                             "clip_direction": float(cd[b])})  # fmt: skip
    table = pd.DataFrame(rows)
    cols = [f"seed {s}" + ("" if s not in learned_on else " (learned on)") for s in ctx.seeds]
    fig = image_grid(images, len(labels), B, labels, cols, f"{ctx.c0!r} -> {ctx.c1!r}: one schedule, many seeds",
                     captions=captions if ctx.evaluator is not None else None)
    return fig, table


def transfer_pivot(table: pd.DataFrame, values: Sequence[str] = ("style", "iou")) -> pd.DataFrame:
    """:func:`transfer_table` as one row per seed (index seed, new) and one column per (value, schedule). Only the
    (seed, new) pairs that occur are kept: ``dropna=False`` (needed so NaN scores without an evaluator keep their
    columns) would otherwise add every seed once as new and once as learned-on, half of them all NaN."""
    t = table.pivot_table(index=["seed", "new"], columns="schedule", values=list(values), aggfunc="first",
                          dropna=False)
    return t.reindex(pd.MultiIndex.from_frame(table[["seed", "new"]].drop_duplicates()))


def transfer_verdicts(table: pd.DataFrame, early: str, start: str, learned: str = "learned") -> dict:
    """What 07 checks, from :func:`transfer_table`: the old seeds the start missed and the learned schedule fixed,
    counts of styled new seeds with the start and learned, the largest IoU change on new seeds, and the new seeds
    where the early switch works but the start comes too late (``need``), with those the learned one fixed."""
    t = transfer_pivot(table, ["style_ok", "works", "iou"]).reset_index()
    old, new = t[~t["new"]], t[t["new"]]
    missed_old = [int(s) for s in old["seed"][~old[("style_ok", start)].astype(bool)]]
    fixed_old = [int(s) for s in old["seed"][~old[("style_ok", start)].astype(bool) & old[("works", learned)].astype(bool)]]
    need = new[new[("works", early)].astype(bool) & ~new[("style_ok", start)].astype(bool)]
    return {"missed_old": missed_old, "fixed_old": fixed_old, "new": len(new),
            "new_start": int(new[("style_ok", start)].astype(bool).sum()),
            "new_learned": int(new[("style_ok", learned)].astype(bool).sum()),
            "iou_change": float((new[("iou", learned)] - new[("iou", start)]).abs().max()) if len(new) else float("nan"),
            "need": [int(s) for s in need["seed"]],
            "fixed_new": [int(s) for s in need["seed"][need[("style_ok", learned)].astype(bool)]]}  # fmt: skip


def background_changes(rec: pd.DataFrame) -> str:
    """One line per row of :func:`invert_and_edit`'s table: the method's edit background, input -> edit, and
    whether it was kept."""
    return "\n".join(f"{m} inversion: edit background {a} -> {b} ({'kept' if a == b else 'changed'})"
                     for m, a, b in zip(rec["method"], rec["background_input"], rec["background_edit"]))


def _optional_clip(ctx):
    """The lesson's CLIP, or None (with a printed note) when it cannot be loaded: the CLIP columns are left out."""
    from .errors import ModelNotFoundError

    try:
        return ctx.clip()
    except ModelNotFoundError as err:
        print(f"(no CLIP, so no CLIP columns: {str(err).splitlines()[0]})")
        return None


# ---- inversion (08) ---------------------------------------------------------------------------------------------
def invert_and_edit(ctx, image, methods: Sequence[str], switch: int):
    """Invert ``image`` under c0 with each method, reconstruct (pure c0) and edit (switch at ``switch``) it.

    Returns (figure, table): the figure has one row per method (input, VAE round trip, reconstruction, edit);
    the table one row per method with ``mae_to_input``, ``mae_to_vae_roundtrip`` (mean |pixel difference|, 0..1),
    and with the evaluator ``edit_style``, ``edit_iou`` (against the input) and the background the evaluator
    sees in the input and in the edit."""
    from .inversion import encode_image, invert, load_image
    from .sampling import decode
    from .schedules import MixSchedule

    input_px = load_image(image)[0].float().cpu()  # (3, H, W) in [0, 1]
    height, width = input_px.shape[1:]
    with torch.no_grad():  # the VAE alone: the best any inversion can give back
        latents = encode_image(ctx.pipe, input_px[None], height=height, width=width)
        vae_roundtrip = decode(ctx.pipe, latents)[0].float().cpu()
    rows, images, captions = [], [], []
    for method in methods:  # at the image's own size: the edit is compared with the input pixel for pixel
        tape = invert(ctx.pipe, image, ctx.c0, steps=ctx.steps, scheduler="ddim", method=method,
                      guidance=ctx.guidance, height=height, width=width, progress=False)  # fmt: skip
        tape.save(ctx.out / f"inverted_{method}.safetensors")
        res = ctx.sample([MixSchedule.constant(ctx.steps, 0.0), MixSchedule.switch(ctx.steps, switch)], tape=tape)
        row = {"method": method, "switch": switch,
               "mae_to_input": (res.pixels[0] - input_px).abs().mean().item() if res.pixels[0].shape == input_px.shape
               else float("nan"), "mae_to_vae_roundtrip": (res.pixels[0] - vae_roundtrip).abs().mean().item()}  # fmt: skip
        s = score(ctx, res.pixels[1:], reference=input_px) if res.pixels[0].shape == input_px.shape else None
        row["edit_style"] = float(s["style"][0]) if s else float("nan")
        row["edit_iou"] = float(s["iou"][0]) if s else float("nan")
        if ctx.evaluator is not None:
            seen = ctx.evaluator(torch.stack([input_px, res.pixels[1]]))["background"].tolist()
            row["background_input"], row["background_edit"] = seen
        else:
            row["background_input"] = row["background_edit"] = None
        rows.append(row)
        images += [input_px, vae_roundtrip, *res.pixels]
        edit_caption = "" if ctx.evaluator is None else (f"P {row['edit_style']:.2f} IoU {row['edit_iou']:.2f}, "
                                                         f"{row['background_edit']}")  # fmt: skip
        captions += [row["background_input"] or "", "", f"|diff| to round trip {row['mae_to_vae_roundtrip']:.3f}",
                     edit_caption]  # fmt: skip
    table = pd.DataFrame(rows)
    labels = ["input", "VAE round trip", "reconstruction (c0)", f"edit (switch at {switch})"]
    fig = image_grid(images, len(methods), 4, [f"{m} inversion" for m in methods], labels, captions=captions)
    return fig, table


# ---- the map (09) ----------------------------------------------------------------------------------------------
MAP_SWITCHES = (0, 6, 10, 14, 18, 24, 40, 50)
# One toyworld pair per attribute family: (c0, c1, scope). Global styles change the whole picture.
FAMILIES = {
    "colour": ("a photo of a circle", "a photo of a circle, red", "local"),
    "texture": ("a photo of a square", "a photo of a square, striped", "local"),
    "expression": ("a photo of a face", "a photo of a face, smiling", "local"),
    "background": ("a photo of a triangle", "a photo of a triangle, at night", "global"),
    "rendering": ("a photo of a star", "a sketch of a star", "global"),
    "snow": ("a photo of a triangle", "a photo of a triangle, in the snow", "global"),
}
PAPER_FAMILIES = [("smiling", "local"), ("crying", "local"), ("angry", "local"), ("young", "local"),
                  ("Egyptian mural style", "global"), ("renaissance style", "global")]  # fmt: skip


def family_pairs(ctx, families: Sequence[str] | None = None) -> pd.DataFrame:
    """The pairs of the map: toyworld's families (default: all but snow), or the paper's attributes on c0
    ("A photo of person") for other models. Columns pair, family, c0, c1, scope."""
    if ctx.toy:
        names = list(families) if families else [f for f in FAMILIES if f != "snow"]
        unknown = [f for f in names if f not in FAMILIES]
        if unknown:
            raise OptionError(f"unknown families {unknown}; choose from {list(FAMILIES)}.")
        rows = [(f, *FAMILIES[f]) for f in names]
    else:
        chosen = [p for p in PAPER_FAMILIES if not families or p[0] in families]
        rows = [(a, ctx.c0, f"{ctx.c0}, {a}", scope) for a, scope in chosen]
    df = pd.DataFrame(rows, columns=["family", "c0", "c1", "scope"])
    df.insert(0, "pair", range(len(df)))
    return df


def family_windows(table: pd.DataFrame, style_min: float = STYLE_MIN, iou_min: float = IOU_MIN) -> pd.DataFrame:
    """Per family: which seeds' c0 already shows the attribute (``c0_shows``, left out), how many seeds are
    counted, on how many of them pure c1 shows it (``c1_reaches``), the median latest switch with the style
    (``latest``), the switch steps that work on every counted seed (``works_at``) and the best one."""
    rows = []
    N = table["switch"].max()
    for (pair, family, scope), part in table.groupby(["pair", "family", "scope"], sort=True):
        c0_shows = sorted(part.loc[(part.switch == N) & (part["style"] >= 0.5), "seed"].tolist())
        p = part[~part["seed"].isin(c0_shows)].assign(ok=lambda d: (d["style"] >= style_min) & (d["iou"] >= iou_min))
        counted = p["seed"].nunique()
        c1_reaches = int((p[p.switch == 0]["style"] >= style_min).sum())
        latest = [s[s["style"] >= style_min]["switch"].max() for _, s in p.groupby("seed")]
        latest = [v for v in latest if pd.notna(v)]
        per_k = p.groupby("switch")["ok"].sum()
        full = per_k.index[(per_k == counted) & (counted > 0)].tolist()
        best_n = int(per_k.max()) if len(per_k) else 0
        rows.append({"pair": pair, "family": family, "scope": scope, "c1": part["c1"].iloc[0], "c0_shows": c0_shows,
                     "counted": counted, "c1_reaches": c1_reaches, "c1_share": f"{c1_reaches}/{counted}",
                     "latest": float(np.median(latest)) if latest else np.nan, "works_at": full,
                     "best": int(per_k.index[per_k == best_n].max()) if best_n > 0 else None,
                     "seeds_ok": f"{best_n}/{counted}"})  # fmt: skip
    return pd.DataFrame(rows)


def content_trend(table: pd.DataFrame) -> dict[str, float]:
    """Per family: the rank correlation of the mean mask IoU with the switch step."""
    out = {}
    for family, part in table.groupby("family", sort=False):
        per_k = part.groupby("switch")["iou"].mean()
        out[family] = spearman(per_k.index, per_k.values)
    return out


def family_grid(table: pd.DataFrame, images: dict, win: pd.DataFrame):
    """Rows: families; for every seed three columns: pure c1, the edit at the family's best switch, pure c0."""
    N = int(table["switch"].max())
    seeds = list(dict.fromkeys(table["seed"]))
    cells, row_labels = [], []
    for w in win.itertuples():
        k = w.best if w.best is not None and pd.notna(w.best) else int(w.latest) if pd.notna(w.latest) else N // 2
        part = table[table["pair"] == w.pair]
        k = min(part["switch"].unique(), key=lambda v: abs(v - k))
        cells += [(w.pair, seed, kk) for seed in seeds for kk in (0, k, N)]
        flag = f", c0 shows it: seed {', '.join(map(str, w.c0_shows))}" if w.c0_shows else ""
        row_labels.append(f"{w.family}\nk={k}{flag}")
    cols = [f"seed {s}: {name}" for s in seeds for name in ("c1", "switch", "c0")]
    rows = table.set_index(["pair", "seed", "switch"]).loc[cells]
    captions = _captions(rows) if has_truth(rows) else _proxy_captions(rows)
    return image_grid([images[c] for c in cells], len(win), 3 * len(seeds), row_labels, cols,
                      "each family at its best switch step, between its two pure images", 1.2, captions)


def proxy_agreement(table: pd.DataFrame, win: pd.DataFrame) -> pd.DataFrame:
    """Per family, how far the proxies follow the evaluator on this run (the seeds whose c0 shows the attribute
    left out, as in ``win`` of :func:`family_windows`): the rank correlation of ``clip_prob`` with P(target)
    (``style_rho``) and of ``pixel`` with the mask IoU (``content_rho``, sign flipped: +1 = the same order), and
    the window :func:`proxy_windows`' rule finds on each side: on the evaluator's columns (``truth``) and on the
    proxies (``proxies``); ``match``: both none, or start and end each within 2 switch steps (as docs/metrics.md).
    A family whose c0 shows the attribute on every seed has no row."""
    from .map import window_text, windows_match

    rows = []
    for w in win.itertuples():
        part = table[(table["pair"] == w.pair) & ~table["seed"].isin(w.c0_shows)]
        if part.empty:  # c0 already shows the attribute on every seed: no edit to compare the proxies on
            continue
        truth, proxies = proxy_windows(part, "iou", "style"), proxy_windows(part)
        rows.append({"family": w.family, "style_rho": round(spearman(part["clip_prob"], part["style"]), 2),
                     "content_rho": round(spearman(-part["pixel"], part["iou"]), 2),
                     "truth": window_text(truth.iloc[0]), "proxies": window_text(proxies.iloc[0]),
                     "match": bool(windows_match(*(f.rename(columns={"pair": "pair_index"})
                                                   for f in (truth, proxies))).iloc[0])})  # fmt: skip
    return pd.DataFrame(rows)


def map_values(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The maps 09 draws: style and content with the evaluator; else the proxies, CLIP's P(c1's attribute) and the
    pixel distance to the c0 image (docs/metrics.md measures how far each follows the ground truth)."""
    if has_truth(table):
        return [("style", "style reached: P(target)"), ("iou", "content kept: mask IoU with c0")]
    return [("clip_prob", "style (proxy): CLIP P(c1's attribute)"),
            ("pixel", "content lost (proxy): RMS pixel difference with c0")][0 if "clip_prob" in table else 1:]


def family_heatmap(table: pd.DataFrame, value: str, name: str, windows: pd.DataFrame | None = None):
    """Family x switch step heatmap of ``value`` (mean over seeds), rows labelled with their scope. With ``windows``
    (:func:`family_windows`), each family's ``c0_shows`` seeds are left out, as they are of its window."""
    from .plotting import heatmap

    if windows is not None:
        shown = {(f, int(sd)) for f, seeds in zip(windows["family"], windows["c0_shows"]) for sd in seeds}
        table = table[[(f, int(sd)) not in shown for f, sd in zip(table["family"], table["seed"])]]
    t = table.assign(row=table["family"] + " (" + table["scope"] + ")")
    bounds = {"vmin": 0, "vmax": 1} if value in ("style", "iou", "clip_prob") else {}
    over = "mean over seeds" + (" (those whose c0 shows it left out)" if windows is not None else "")
    return heatmap(t, "row", "switch", value, title=f"{name}, {over}", **bounds)


# ---- the paper's pairs (10) --------------------------------------------------------------------------------------
PAIR_SWITCHES = (0, 8, 14, 24, 50)


def paper_pair_sweep(ctx, pairs: pd.DataFrame, switch_steps: Sequence[int]):
    """For each pair (columns c0, c1, seed, c0_steps, paper), a map over ``switch_steps`` plus the paper's own
    switch (:func:`run_map`, one per seed over the pairs that share it). Returns (table, images, curves): table, one row per pair
    with the paper's switch, ``c0_shows``, ``c1_style``, ``paper_style``/``paper_iou``/``paper_works``, and
    ``best`` (the latest swept switch that works) with its style and IoU; images: {pair index: (c0, paper switch,
    best switch, c1)}; curves: the maps' rows, ``pair`` = the pair's row in ``table``."""
    pairs = pairs.reset_index(drop=True).assign(switch=lambda d: [round(k * ctx.steps / 50) for k in d["c0_steps"]])
    rows, images, curves = [None] * len(pairs), {}, []
    N = ctx.steps
    for seed, group in pairs.groupby("seed", sort=False):
        ks = sorted(set(switch_steps) | set(group["switch"]) | {0, N})
        t, shown = run_map(ctx, group, ks, seeds=[int(seed)], name=f"map_seed{int(seed)}")
        curves.append(t.assign(pair=[int(group.index[j]) for j in t["pair"]]))
        for j, (i, p) in enumerate(group.iterrows()):
            part = t[t["pair"] == j].set_index("switch")
            ok = (part["style"] >= STYLE_MIN) & (part["iou"] >= IOU_MIN)
            inner = [k for k in part.index[ok] if 0 < k < N]
            best = max(inner) if inner else None
            images[i] = tuple(shown[(j, int(seed), k)] if k is not None else None for k in (N, p["switch"], best, 0))
            rows[i] = {**p.to_dict(), "c0_shows": bool(part.loc[N, "style"] >= 0.5), "c1_style": part.loc[0, "style"],
                       "paper_style": part.loc[p["switch"], "style"], "paper_iou": part.loc[p["switch"], "iou"],
                       "paper_works": bool(ok.loc[p["switch"]]), "best": best,
                       "best_style": part.loc[best, "style"] if best is not None else np.nan,
                       "best_iou": part.loc[best, "iou"] if best is not None else np.nan}  # fmt: skip
    return pd.DataFrame(rows), images, pd.concat(curves, ignore_index=True)


def pair_curves(table: pd.DataFrame, curves: pd.DataFrame):
    """One panel per pair of :func:`paper_pair_sweep`: style and content over the switch step, the paper's switch
    dashed. With the evaluator P(target) and mask IoU; without it the proxies, CLIP's P(c1's attribute) and the
    pixel change rescaled to 0 at pure c0 and 1 at pure c1."""
    from .plotting import _new_figure

    truth = has_truth(curves)
    n = len(table)
    fig = _new_figure(min(12.0, 2.4 * n), 2.4)
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
    for ax, (i, r) in zip(axes, table.iterrows()):
        part = curves[curves["pair"] == i].groupby("switch").mean(numeric_only=True)
        if truth:
            lines = [("style", "P(target)"), ("iou", "mask IoU with c0")]
        else:
            change = part["pixel"] / part["pixel"].iloc[0] if part["pixel"].iloc[0] > 0 else part["pixel"] * np.nan
            part = part.assign(change=change)
            lines = ([("clip_prob", "CLIP P(c1)")] if "clip_prob" in part else []) + [("change", "pixel change (1 = c1's)")]
        for col, label in lines:
            ax.plot(part.index, part[col], marker=".", label=label)
        ax.axvline(r["switch"], color="0.4", ls="--", lw=0.8)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(_attribute_label(r["c1"]), fontsize=8)
        ax.set_xlabel("switch k", fontsize=7)
    handles, labels = axes[0].get_legend_handles_labels()  # one legend for all panels, clear of the curves
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=7, frameon=False)
    fig.suptitle("each pair over the switch step (dashed: the paper's k)", fontsize=9, x=0.01, ha="left")
    return fig


def _attribute_label(c1: str) -> str:
    """What a paper pair's c1 adds, for a panel title: "smiling" for "a photo of a face, smiling", "sketch" for
    "a sketch of a star"."""
    return c1.split(", ")[-1] if ", " in c1 else c1.split(" of ")[0].replace("a ", "")


def pairs_grid(table: pd.DataFrame, images: dict):
    """One column per pair: c0, the edit at the paper's switch, at the toy model's latest working switch (blank if
    none), c1; the column label names the attribute and both switch steps, and flags a c0 that already shows it."""
    from PIL import Image

    blank = Image.new("RGB", next(iter(images.values()))[0].size, (255, 255, 255))
    order = list(table.index)
    cells = [images[i][r] if images[i][r] is not None else blank for r in range(4) for i in order]
    labels = []
    for i in order:
        r = table.loc[i]
        attribute = _attribute_label(r["c1"])
        own = f"{int(r['best'])}" if pd.notna(r["best"]) else "none"
        labels.append(f"{attribute}{' (c0!)' if r['c0_shows'] else ''}\npaper k={r['switch']}\nown k={own}")
    rows = ["c0", "switch at\nthe paper's k", "switch at the\ntoy's own k", "c1"]
    return image_grid(cells, 4, len(order), rows, labels, "the paper's pairs as toy analogues, at the paper's seeds; "
                      "(c0!) = c0 already shows the attribute", 1.1)  # fmt: skip
