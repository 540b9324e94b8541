"""Figures of results: image grids, lambda curves, heatmaps, trajectories, metric curves.

Every function here only *reads* results (images, schedules, DataFrames, :class:`~disentkit.SampleResult`) and
returns a matplotlib :class:`~matplotlib.figure.Figure`; nothing here samples. Figures are built with the
object-oriented API (``Figure`` + ``FigureCanvasAgg``), never through ``pyplot``'s global state, so they work
headless (CI, papermill) and do not pile up in memory. In a notebook, a Figure that is the last expression of a
cell is shown by IPython as usual.

    fig = plotting.result_grid(result, rows="schedule", cols="seed")
    plotting.save_figure(fig, "outputs/grid.png")
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .errors import InvalidImageError, LayoutError, OptionError, UnknownKeyError
from .files import atomic_path
from .schedules import MixSchedule

CELL_INCHES = 1.6  # side of one image cell in a grid; small models make small images, so cells do not grow


# ---- images in, numpy out ----------------------------------------------------------------------------------
def to_array(image: Any) -> np.ndarray:
    """One image as an (H, W, 3) float array in [0, 1].

    Accepts a PIL image, a torch tensor (3, H, W) in [0, 1] (what ``SampleResult.pixels[i]`` holds), or a numpy
    array (H, W, 3) / (H, W) as uint8 (0..255) or float (0..1).
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise InvalidImageError(f"a tensor image must be (3, H, W) or (1, H, W) in [0, 1], got {tuple(t.shape)}.")
        return t.expand(3, -1, -1).permute(1, 2, 0).clamp(0, 1).numpy()
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InvalidImageError(f"an array image must be (H, W, 3) or (H, W), got {a.shape}.")
    a = a[..., :3]
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else np.clip(a.astype(np.float32), 0, 1)


def _image_list(images: Any) -> list[np.ndarray]:
    """A flat list of images from a list, a (B, 3, H, W) tensor or a (B, H, W, 3) array."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return [to_array(x) for x in images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [to_array(x) for x in images]
    if isinstance(images, (Image.Image, torch.Tensor, np.ndarray)):
        return [to_array(images)]
    return [to_array(x) for x in images]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attach a headless canvas so savefig/draw work without pyplot
    return fig


# ---- saving ------------------------------------------------------------------------------------------------
def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, e.g. .png or .svg) atomically; folders are created."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


def save_table(df: pd.DataFrame, path: str | os.PathLike, index: bool = False) -> Path:
    """Write a DataFrame as CSV atomically (folders created), so notebooks never leave half-written tables."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)
    return path


# ---- image grids -------------------------------------------------------------------------------------------
def image_grid(
    images: Any,
    rows: int | None = None,
    cols: int | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    cell_inches: float = CELL_INCHES,
    captions: Sequence[str] | None = None,
) -> Figure:
    """A grid of images, filled row by row; ``rows``/``cols`` default to one row (or the shape the other implies).

    ``images`` is a list (PIL / tensors / arrays), a (B, 3, H, W) tensor or a (B, H, W, 3) array. Labels go on
    the left of each row and above each column; ``captions`` (one per image, in the same order) go under each
    image, e.g. a measured score. Empty cells (when B < rows * cols) stay blank.
    """
    arrays = _image_list(images)
    n = len(arrays)
    if n == 0:
        raise LayoutError("image_grid got no images.")
    if rows is None and cols is None:
        rows, cols = 1, n
    elif rows is None:
        rows = -(-n // cols)
    elif cols is None:
        cols = -(-n // rows)
    if rows * cols < n:
        raise LayoutError(f"{n} images do not fit a {rows}x{cols} grid.")
    if captions is not None and len(captions) != n:
        raise LayoutError(f"captions has {len(captions)} entries for {n} images.")
    for name, labels, count in (("row_labels", row_labels, rows), ("col_labels", col_labels, cols)):
        if labels is not None and len(labels) != count:
            raise LayoutError(f"{name} has {len(labels)} entries for {count} {name.split('_')[0]}s.")

    fig = _new_figure(cols * cell_inches + (0.8 if row_labels is not None else 0), rows * cell_inches + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            k = r * cols + c
            if k < n:
                # nearest: toy images are 32-64 px; smoothing would hide exactly the pixels we compare
                ax.imshow(arrays[k], interpolation="nearest")
                if captions is not None and captions[k]:
                    ax.set_xlabel(str(captions[k]), fontsize=7)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(str(row_labels[r]), fontsize=8)
            if r == 0 and col_labels is not None:
                ax.set_title(str(col_labels[c]), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_grid(images: Any, path: str | os.PathLike, **grid_kwargs) -> Path:
    """:func:`image_grid` written straight to a PNG (atomically, folders created)."""
    return save_figure(image_grid(images, **grid_kwargs), path)


def _axis_keys(axis: str) -> tuple[str, str]:
    """The ``runs`` column that orders an axis of a result grid, and the column that labels it."""
    axes = {"schedule": ("schedule", "label"), "seed": ("seed_index", "seed"), "pair": ("pair", "c1")}
    if axis not in axes:
        raise OptionError(f"grid axes are 'schedule', 'seed' or 'pair', got {axis!r}.")
    return axes[axis]


def result_grid(
    result,
    rows: str = "schedule",
    cols: str = "seed",
    pair: int = 0,
    schedule: int = 0,
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Grid of a :class:`~disentkit.SampleResult` (or any object with ``images`` and a ``runs`` DataFrame with
    columns pair/schedule/label/seed_index/seed): one row per value of ``rows``, one column per value of ``cols``.

    The axis not shown is held at ``pair`` / ``schedule`` / ``seed`` (indices). Rows are labelled with the
    schedule label, ``seed <n>`` or the styled prompt.
    """
    if rows == cols:
        raise OptionError(f"rows and cols must be different axes, both are {rows!r}.")
    runs = result.runs.reset_index(drop=True)
    fixed = {"pair": ("pair", pair), "schedule": ("schedule", schedule), "seed": ("seed_index", seed)}
    for axis in set(fixed) - {rows, cols}:
        column, value = fixed[axis]
        runs = runs[runs[column] == value]
    if runs.empty:
        raise LayoutError(f"no runs left after fixing pair={pair}, schedule={schedule}, seed={seed}.")
    row_key, row_name = _axis_keys(rows)
    col_key, col_name = _axis_keys(cols)
    row_values = sorted(runs[row_key].unique())
    col_values = sorted(runs[col_key].unique())
    where = {(r[row_key], r[col_key]): i for i, r in runs.iterrows()}  # (row value, col value) -> image index
    blank = np.ones((8, 8, 3), dtype=np.float32)
    images = [result.images[where[(rv, cv)]] if (rv, cv) in where else blank for rv in row_values for cv in col_values]

    def label(key, name, value, prefix=""):
        text = runs.loc[runs[key] == value, name].iloc[0]
        return f"{prefix}{text}"

    row_labels = [label(row_key, row_name, v, "seed " if rows == "seed" else "") for v in row_values]
    col_labels = [label(col_key, col_name, v, "seed " if cols == "seed" else "") for v in col_values]
    return image_grid(images, len(row_values), len(col_values), row_labels, col_labels, title)


def trajectory_strip(
    pixels: Any,
    steps: Sequence[int],
    run_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Decoded trajectory images, one column per sampling step and one row per run.

    ``pixels`` is what ``Trajectory.decode(pipe, steps=steps, runs=...)`` returns: (K, R, 3, H, W), or (K, 3, H, W)
    for one run; K must equal ``len(steps)``. Columns are labelled ``step i``.
    """
    p = torch.as_tensor(pixels) if not isinstance(pixels, torch.Tensor) else pixels
    if p.ndim == 4:
        p = p[:, None]
    if p.ndim != 5 or p.shape[0] != len(steps):
        raise LayoutError(f"pixels must be (len(steps)={len(steps)}, R, 3, H, W), got {tuple(p.shape)}.")
    K, R = p.shape[:2]
    images = [p[k, r] for r in range(R) for k in range(K)]  # row-major: one row per run
    return image_grid(images, R, K, run_labels, [f"step {s}" for s in steps], title)


# ---- curves and maps ---------------------------------------------------------------------------------------
def _schedules_frame(schedules_or_df: Any) -> pd.DataFrame:
    """A long DataFrame step / lambda / label from a schedule, a list of them, or a DataFrame already so shaped."""
    if isinstance(schedules_or_df, pd.DataFrame):
        df = schedules_or_df.copy()
        if "label" not in df:
            df["label"] = ""
        return df
    items = [schedules_or_df] if isinstance(schedules_or_df, MixSchedule) else list(schedules_or_df)
    frames = []
    for k, s in enumerate(items):
        df = s.to_dataframe()
        df["label"] = s.label or f"schedule {k}"  # unnamed schedules still need distinct legend entries
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def lambda_curves(
    schedules_or_df: Any,
    title: str | None = "lambda per step",
    ax=None,
    width: float = 5.0,
    height: float = 3.0,
) -> Figure:
    """Plot lambda (weight of the styled prompt c1) against sampling step (0 = noisiest) for each schedule.

    Accepts a :class:`MixSchedule`, a list of them, or a DataFrame with columns ``step``, ``lambda`` and
    optionally ``label`` (``MixSchedule.to_dataframe()`` output, concatenated). Per-token schedules show their
    token mean. Guides at lambda = 0 (pure c0) and 1 (pure c1) make weights outside [0, 1] easy to spot.
    """
    df = _schedules_frame(schedules_or_df)
    fig = ax.figure if ax is not None else _new_figure(width, height)
    ax = ax or fig.subplots()
    for label, part in df.groupby("label", sort=False):
        part = part.sort_values("step")
        ax.plot(part["step"], part["lambda"], marker=".", drawstyle="steps-post", label=str(label) or None)
    for level in (0.0, 1.0):
        ax.axhline(level, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("sampling step (0 = noisiest)")
    ax.set_ylabel("lambda (weight of c1)")
    if df["label"].astype(str).str.len().gt(0).any():
        ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def heatmap(
    df: pd.DataFrame,
    index: str,
    columns: str,
    values: str,
    title: str | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = True,
    fmt: str = "{:.2f}",
) -> Figure:
    """A heatmap of ``values`` over ``index`` (rows) x ``columns`` from a long DataFrame (duplicates averaged)."""
    for col in (index, columns, values):
        if col not in df:
            raise UnknownKeyError(f"heatmap needs column {col!r}; the DataFrame has {list(df.columns)}.")
    table = df.pivot_table(index=index, columns=columns, values=values, aggfunc="mean")
    # wide enough for the row labels (attribute names) and a title, whatever the number of columns
    fig = _new_figure(max(5.0, 0.45 * table.shape[1] + 3.0), max(2.5, 0.4 * table.shape[0] + 1.2))
    ax = fig.subplots()
    im = ax.imshow(table.to_numpy(dtype=float), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], fontsize=7)
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index], fontsize=7)
    ax.set_xlabel(columns)
    ax.set_ylabel(index)
    if annotate and table.size <= 400:  # beyond that the numbers are unreadable anyway
        lo, hi = np.nanmin(table.to_numpy()), np.nanmax(table.to_numpy())
        mid = (lo + hi) / 2
        for (r, c), v in np.ndenumerate(table.to_numpy(dtype=float)):
            if np.isfinite(v):
                ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=6, color="k" if v > mid else "w")
    fig.colorbar(im, ax=ax, label=values)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def metric_curves(
    df: pd.DataFrame,
    x: str,
    ys: str | Sequence[str],
    hue: str | None = None,
    title: str | None = None,
    ylabel: str | None = None,
    ylim: tuple[float, float] | None = None,
    ax=None,
) -> Figure:
    """Lines of the columns ``ys`` against ``x`` (mean over rows sharing an x, with a min-max band when several,
    e.g. over seeds); with ``hue``, one line per value of that column for each y."""
    ys = [ys] if isinstance(ys, str) else list(ys)
    for col in [x, *ys, *([hue] if hue else [])]:
        if col not in df:
            raise UnknownKeyError(f"metric_curves needs column {col!r}; the DataFrame has {list(df.columns)}.")
    fig = ax.figure if ax is not None else _new_figure(5.0, 3.0)
    ax = ax or fig.subplots()
    groups = df.groupby(hue, sort=False) if hue else [(None, df)]
    for key, part in groups:
        stats = part.groupby(x)[ys].agg(["mean", "min", "max"])
        for y in ys:
            name = y if key is None else (f"{key}" if len(ys) == 1 else f"{y} ({key})")
            line = ax.plot(stats.index, stats[(y, "mean")], marker=".", label=name)[0]
            if (stats[(y, "max")] > stats[(y, "min")]).any():
                ax.fill_between(stats.index, stats[(y, "min")], stats[(y, "max")], color=line.get_color(), alpha=0.15)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or (ys[0] if len(ys) == 1 else "value"))
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# ---- the disentanglement map (disentkit.map) ------------------------------------------------------------------
def map_heatmap(df: pd.DataFrame, metric: str, title: str | None = None, cmap: str | None = None) -> Figure:
    """Pair x switch step heatmap of one metric of a :func:`disentkit.disentanglement_map` frame (seeds averaged).
    Style metrics read "more style" upwards in the colour map, content distances "more content lost"."""
    from .metrics import METRICS

    for col in ("pair", "switch", metric):
        if col not in df:
            raise UnknownKeyError(f"map_heatmap needs column {col!r}; the DataFrame has {list(df.columns)}.")
    info = METRICS.get(metric)
    cmap = cmap or ("magma" if info is not None and info.kind == "content" else "viridis")
    order = df.drop_duplicates("pair")["pair"].tolist()  # the map's pair order, not alphabetical
    table = df.pivot_table(index="pair", columns="switch", values=metric, aggfunc="mean").reindex(order)
    # 51 switch steps: narrow cells and a tick every 5, so the figure stays page-wide
    fig = _new_figure(min(12.0, max(5.0, 0.16 * table.shape[1] + 3.0)), max(2.2, 0.32 * table.shape[0] + 1.3))
    ax = fig.subplots()
    im = ax.imshow(table.to_numpy(dtype=float), cmap=cmap, aspect="auto")
    cols = list(table.columns)
    ticks = [i for i, k in enumerate(cols) if len(cols) <= 20 or int(k) % 5 == 0]
    ax.set_xticks(ticks, [str(cols[i]) for i in ticks], fontsize=7)
    ax.set_yticks(range(len(order)), order, fontsize=7)
    ax.set_xlabel("switch step (c0 before it, c1 from it on)")
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(title or (f"{metric}: higher = {info.higher_is}" if info is not None else metric), fontsize=9)
    return fig


def window_curves(
    df: pd.DataFrame,
    pair: str,
    content: str,
    style: str,
    window: tuple[int, int] | None = None,
    title: str | None = None,
) -> Figure:
    """One pair's style and content curves over the switch step (mean over seeds, min-max band), two y axes, with
    the window of :func:`disentkit.find_windows` shaded (``window``: its (start, end), or None for no window)."""
    part = df[df["pair"] == pair]
    if part.empty:
        raise UnknownKeyError(f"pair {pair!r} is not in the map; it has {sorted(df['pair'].unique())}.")
    fig = _new_figure(5.5, 3.0)
    ax = fig.subplots()
    if window is not None and window[0] is not None and not pd.isna(window[0]):
        ax.axvspan(window[0] - 0.5, window[1] + 0.5, color="tab:green", alpha=0.15, label="window")
    handles = []
    for axis, col, colour in ((ax, style, "tab:blue"), (ax.twinx(), content, "tab:red")):
        stats = part.groupby("switch")[col].agg(["mean", "min", "max"])
        handles += axis.plot(stats.index, stats["mean"], color=colour, marker=".", markersize=3, label=col)
        axis.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.12)
        axis.set_ylabel(col, color=colour)
    ax.set_xlabel("switch step (c0 before it, c1 from it on)")
    handles += [h for h in ax.patches[:1]]  # the shaded window, when there is one
    ax.legend(handles=handles, fontsize=7, loc="upper center")
    ax.set_title(title or pair, fontsize=10)
    return fig


def thumbnail_strip(
    images: Sequence[Any],
    switches: Sequence[int],
    window: tuple[int, int] | None = None,
    every: int = 1,
    title: str | None = None,
) -> Figure:
    """One seed's images along the switch steps, left to right; those inside ``window`` framed in green.
    ``every``: show every n-th switch step (51 thumbnails are too many to read)."""
    if len(images) != len(switches):
        raise LayoutError(f"{len(images)} images for {len(switches)} switch steps; give one image per switch step.")
    keep = list(range(0, len(images), max(1, every)))
    if keep[-1] != len(images) - 1:
        keep.append(len(images) - 1)  # always show the pure-c0 end
    fig = _new_figure(max(4.0, 0.9 * len(keep)), 1.4)
    axes = np.atleast_1d(fig.subplots(1, len(keep)))
    inside = window is not None and window[0] is not None and not pd.isna(window[0])
    for ax, i in zip(axes, keep):
        ax.imshow(to_array(images[i]))
        ax.set_xticks([])
        ax.set_yticks([])
        k = int(switches[i])
        ax.set_title(str(k), fontsize=7)
        if inside and window[0] <= k <= window[1]:
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green")
                spine.set_linewidth(2.5)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure (for widgets, which show images as bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
