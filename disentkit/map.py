"""The disentanglement map: for every prompt pair, seed and switch step, how much style arrived and how much content
stayed; and the window of switch steps where both hold.

    df = dk.disentanglement_map(pipe, [("a photo of a face", "a photo of a face, smiling")], seeds=range(16),
                                switch_steps=range(51), out="outputs/map")
    windows = dk.find_windows(df, content="struct_clip", style="clip_prob")

The images come from the prefix-shared switch sweep (:func:`disentkit.sweep_switch`: the pure-c0 trunk is sampled
once per seed and forked at every switch step) and are scored by :class:`disentkit.metrics.Scorer` against the
pure-c0 image of the same seed. The work is split into (pair, seed) units; with ``out`` each finished unit is
written at once (atomically) under ``out/parts/``, so an interrupted map resumes where it stopped, and under
``accelerate launch`` the units are split between the processes (``accelerate.PartialState``), each writing its
own. A unit is always one seed's sweep in one batch, so its numbers do not depend on how the units were split.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .errors import (
    MapIncompleteError,
    MapMismatchError,
    MapSettingsError,
    MissingResultError,
    PairsFileError,
    UnknownKeyError,
)
from .files import atomic_path, write_json_atomic, write_text_atomic
from .metrics import DEFAULT_METRICS, METRICS, METRICS_VERSION, Scorer, alternatives, check_metrics, toy_target
from .pipeline import check_image_size, default_image_size

MAP_CSV = "map.csv"
MANIFEST = "map.json"
PAPER_PAIRS = Path(__file__).resolve().parent / "data" / "sd_paper_pairs.csv"  # Wu et al.'s SD pairs, `--pairs sd-paper`
# (content, style): the default pair of find_windows and `disentkit map`, chosen by the validation on toyworld's ground
# truth (benchmarks/metrics_report.py, docs/metrics.md).
RECOMMENDED = ("pixel", "clip_prob")


# ---- prompt pairs ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One prompt pair. ``name`` labels it in tables and plots (default: what c1 adds to c0); ``target`` the
    (factor, value) it should reach, where known (toyworld: derived from the captions), for the evaluator;
    ``alternatives`` what "clip_prob" weighs c1 against (default :func:`disentkit.metrics.alternatives`)."""

    c0: str
    c1: str
    name: str = ""
    target: tuple[str, str] | None = None
    alternatives: tuple[str, ...] | None = None

    def __post_init__(self):
        for field_name in ("c0", "c1"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value.strip():
                raise PairsFileError(f"a pair's {field_name} must be a non-empty prompt, got {value!r}.")
        if self.c0 == self.c1:
            raise PairsFileError(f"pair {self.c0!r} -> {self.c1!r}: c0 and c1 are the same prompt; nothing would change.")
        if not self.name:
            object.__setattr__(self, "name", _default_name(self.c0, self.c1))
        if self.target is None:
            object.__setattr__(self, "target", toy_target(self.c0, self.c1))


def _default_name(c0: str, c1: str) -> str:
    """What c1 adds to c0 ("a photo of a face" -> "..., smiling": "face: smiling"), else "c0 -> c1"."""
    if c1.startswith(c0):
        added = c1[len(c0) :].lstrip(" ,")
        return f"{c0.split()[-1]}: {added}" if added else c1
    return f"{c0} -> {c1}"


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Read a pairs CSV: columns ``c0`` and ``c1`` (one pair a row), optional ``name``, ``target`` ("factor=value")
    and ``alternatives`` (prompts separated by "|"); other columns are ignored (e.g. the paper's seed). Raises
    :class:`PairsFileError` for a missing file, missing columns, an empty prompt or a repeated pair."""
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"pairs file {str(path)!r} does not exist; give a CSV with columns c0,c1 (one pair a row).")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PairsFileError(f"{path} is not a readable CSV ({type(err).__name__}: {err}); write it with a header "
                             "line 'c0,c1' and one pair a row, quoting prompts that hold commas.") from err  # fmt: skip
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("c0", "c1") if c not in table.columns]
    if missing:
        raise PairsFileError(f"{path} has columns {list(table.columns)} but needs {missing}; the header line must name "
                             "c0 and c1 (optional: name, target, alternatives).")  # fmt: skip
    if table.empty:
        raise PairsFileError(f"{path} has a header but no pairs; add one row per pair.")
    pairs = []
    for line, row in enumerate(table.to_dict("records"), start=2):
        try:
            pairs.append(_pair_from_record(row))
        except PairsFileError as err:
            raise PairsFileError(f"{path}, line {line}: {err}") from None
    return as_pairs(pairs)


def _pair_from_record(row: dict) -> Pair:
    """A pair from one CSV row or dict (target "factor=value" or a tuple; alternatives "a|b" or a list)."""
    if "c0" not in row or "c1" not in row:
        raise PairsFileError(f"a pair needs c0 and c1, got keys {sorted(row)}.")
    target, alts = row.get("target"), row.get("alternatives")
    if isinstance(target, (tuple, list)) or isinstance(alts, (tuple, list)):
        return Pair(row["c0"], row["c1"], row.get("name", "") or "", tuple(target) if target else None,
                    tuple(alts) if alts else None)  # fmt: skip
    target = None
    if str(row.get("target", "") or "").strip():
        text = str(row["target"]).strip()
        if "=" not in text:
            raise PairsFileError(f"target {text!r} must read 'factor=value', e.g. 'expression=smiling'.")
        factor, value = (s.strip() for s in text.split("=", 1))
        target = (factor, value)
    alts = str(row.get("alternatives", "") or "").strip()
    alternatives = tuple(a.strip() for a in alts.split("|") if a.strip()) or None
    return Pair(str(row["c0"]).strip(), str(row["c1"]).strip(), str(row.get("name", "") or "").strip(), target, alternatives)


def as_pairs(pairs: Any) -> list[Pair]:
    """Pairs from a pairs file path, a DataFrame with c0/c1 columns, or a list of :class:`Pair`, (c0, c1) tuples or
    dicts; repeated pairs raise :class:`PairsFileError`."""
    if isinstance(pairs, str) and pairs == "sd-paper":
        return read_pairs(PAPER_PAIRS)
    if isinstance(pairs, (str, os.PathLike)):
        return read_pairs(pairs)
    if isinstance(pairs, pd.DataFrame):
        pairs = pairs.to_dict("records")
    if isinstance(pairs, Pair) or (isinstance(pairs, tuple) and pairs and isinstance(pairs[0], str)):
        pairs = [pairs]  # a single pair
    out = []
    for p in pairs:
        if isinstance(p, Pair):
            out.append(p)
        elif isinstance(p, dict):
            out.append(_pair_from_record({str(k).lower(): v for k, v in p.items()}))
        elif isinstance(p, (tuple, list)) and len(p) >= 2:
            out.append(Pair(*p[:2], *(p[2:3] or [""])))
        else:
            raise PairsFileError(f"cannot read {p!r} as a prompt pair; give (c0, c1), a dict with c0/c1 or a Pair.")
    if not out:
        raise PairsFileError("no prompt pairs given; pass at least one (c0, c1).")
    seen: dict[tuple[str, str], int] = {}
    for i, p in enumerate(out):
        if (p.c0, p.c1) in seen:
            raise PairsFileError(f"pair {p.c0!r} -> {p.c1!r} is given twice (rows {seen[(p.c0, p.c1)] + 1} and {i + 1}).")
        seen[(p.c0, p.c1)] = i
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise PairsFileError(f"pair names repeat ({names}); give each pair its own name.")
    return out


# ---- the map ----------------------------------------------------------------------------------------------------------
def disentanglement_map(
    pipe,
    pairs: Any,
    seeds: Iterable[int],
    switch_steps: Iterable[int],
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    evaluator: Any = None,
    steps: int = 50,
    guidance: float = 7.5,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    clip: Any = None,
    backbone: Any = None,
    scheduler: str = "ddim",
    late: float = 1.0,
    max_batch: int | None = None,
    strip_seeds: int = 1,
    scorer: Scorer | None = None,
    height: int | None = None,
    width: int | None = None,
) -> pd.DataFrame:
    """Score every (pair, seed, switch step) image: c0 for steps 0..k-1, c1 (weight ``late``) from step k on.

    Args:
        pipe: a pipeline from :func:`disentkit.load_pipeline` (metrics run on its device).
        pairs: (c0, c1) tuples, :class:`Pair` objects, a DataFrame with c0/c1 columns, or a pairs CSV path.
        seeds: seeds of the noise tapes.
        switch_steps: switch steps k in 0..steps (0 = pure c1, ``steps`` = pure c0).
        metrics: names from :data:`disentkit.metrics.METRICS`.
        evaluator: the toyworld evaluator adding ``evaluator_*`` columns (target_prob: P(pair's target) in [0, 1];
            mask_iou: object-mask IoU with the pure-c0 image in [0, 1]; kind_agree; score = target_prob x mask_iou).
            ``None``: the bundled evaluator when ``pipe`` is the toyworld model, else none; ``False``: none.
        steps, guidance, scheduler: the sampler's settings.
        out: folder for partial results (``parts/``), thumbnails (``strips/``), the manifest and ``map.csv``;
            an interrupted map with the same ``out`` and settings resumes; ``None``: in memory only.
        progress: a tqdm bar over the (pair, seed) units.
        clip: CLIP folder / hub id / loaded Clip for the CLIP metrics (default: the model's, see
            :func:`disentkit.losses.default_clip`); backbone: for "struct_dino".
        late: the weight of c1 after the switch (the paper's 1.0-1.2).
        max_batch: at most this many runs per UNet call (memory).
        strip_seeds: with ``out``, the images of this many first seeds per pair are kept as a PNG strip.
        scorer: a :class:`~disentkit.metrics.Scorer` already loaded for ``metrics`` (then ``clip`` and ``backbone``
            are its own).
        height, width: the image size in pixels (default: the model's).
    Returns:
        A tidy DataFrame, one row per image: pair (name), pair_index, c0, c1, seed, switch, one column per metric,
        and the evaluator's columns; sorted by pair_index, seed, switch.
    """
    from .losses import default_clip

    pairs = as_pairs(pairs)
    metrics = check_metrics(metrics)
    seeds = [int(s) for s in seeds]
    switches = check_switches(switch_steps, steps)
    if not seeds or len(set(seeds)) != len(seeds):
        raise MapSettingsError(f"seeds must be a non-empty list of distinct ints, got {seeds!r}.")
    if scorer is not None:
        if scorer.metrics != metrics:
            raise MapSettingsError(f"the scorer computes {scorer.metrics}, the map asks for {metrics}; give the same list.")
        clip, backbone = scorer.clip or clip, scorer.backbone or backbone
    state = _process_state(pipe)
    if out is None and state is not None and state.num_processes > 1:
        raise MapSettingsError("a map over several processes needs out= (each process writes its part there).")
    evaluator = _resolve_evaluator(pipe, evaluator)
    needs_clip = any(METRICS[m].needs == "clip" for m in metrics)
    clip_name = clip if clip is not None or not needs_clip else default_clip(pipe)
    height, width = check_image_size(pipe, height, width)  # ImageSizeError now, not at the first unit
    size = {"height": height, "width": width}
    settings = _settings(pipe, pairs, switches, metrics, evaluator, steps, guidance, scheduler, late, clip_name, backbone,
                         size)  # fmt: skip

    out = Path(out) if out is not None else None
    if out is not None:
        _claim(out, settings, state)
    units = [(p, s) for p in range(len(pairs)) for s in seeds]
    todo = [u for u in units if out is None or not _part_path(out, *u).is_file()]
    mine = _my_share(todo, state)

    records: list[pd.DataFrame] = []
    if mine:
        from .pipeline import pipeline_device

        scorer = scorer or Scorer(metrics, clip_name, backbone, pipeline_device(pipe))
        first_seeds = set(seeds[: max(0, strip_seeds)])
        quiet = not progress or (state is not None and not state.is_main_process)  # one bar, the main process's
        bar = tqdm(mine, desc="map", disable=quiet, unit="seed")
        cache: dict[int, Any] = {}
        for p, seed in bar:
            bar.set_postfix_str(pairs[p].name, refresh=False)
            part, pixels = _score_unit(pipe, pairs[p], p, seed, switches, steps, guidance, scheduler, late, max_batch,
                                       scorer, evaluator, cache, size)  # fmt: skip
            if out is not None:  # the thumbnails first: a unit whose part exists is complete
                if seed in first_seeds:
                    _save_strip(pixels, out / "strips" / f"p{p:03d}_s{seed}.png")
                write_text_atomic(_part_path(out, p, seed), part.to_csv(index=False))
            records.append(part)

    if out is None:
        df = pd.concat(records, ignore_index=True)
    else:
        _barrier(state)
        df = _merge(out, units)
        if state is None or state.is_main_process:
            write_text_atomic(out / MAP_CSV, df.to_csv(index=False))
        _barrier(state)
    return df.sort_values(["pair_index", "seed", "switch"], kind="stable").reset_index(drop=True)


def check_switches(switch_steps: Iterable[int], steps: int) -> list[int]:
    """The switch steps, sorted and unique; :class:`MapSettingsError` unless all lie in 0..steps and steps >= 1."""
    if steps < 1:
        raise MapSettingsError(f"steps must be at least 1, got {steps}.")
    switches = sorted({int(k) for k in switch_steps})
    if not switches or switches[0] < 0 or switches[-1] > steps:
        raise MapSettingsError(f"switch steps must lie in 0..{steps} (0 = pure c1, {steps} = pure c0), got {switches}; "
                         f"e.g. range({steps + 1}) (--switch 0-{steps}).")  # fmt: skip
    return switches


def _score_unit(pipe, pair: Pair, p: int, seed: int, switches, steps, guidance, scheduler, late, max_batch, scorer,
                evaluator, cache, size) -> tuple[pd.DataFrame, torch.Tensor]:  # fmt: skip
    """One seed's switch sweep for one pair, scored. Returns the rows and the pixels of ``switches`` (K, 3, H, W)."""
    from .conditioning import encode
    from .noise import NoiseTape
    from .sweeps import sweep_switch

    if p not in cache:
        cache.clear()  # units come pair by pair: keep one pair's embeddings
        cache[p] = encode(pipe, pair.c0, pair.c1)
    ks = sorted(set(switches) | {steps})  # the pure-c0 image is the reference (the sweep's trunk: free)
    tape = NoiseTape.from_seed(pipe, int(seed), steps=steps, scheduler=scheduler, **size)
    result = sweep_switch(pipe, cache[p], tape, ks, guidance, late=late, max_batch=max_batch, progress=False)
    pixels, latents = result.pixels, result.latents  # (K, ...): one seed, so runs are the switch steps in order
    r = ks.index(steps)
    keep = [ks.index(k) for k in switches]
    pixels, latents = pixels[keep], latents[keep]
    reference, reference_latent = result.pixels[r : r + 1], result.latents[r : r + 1]
    others = list(pair.alternatives) if pair.alternatives else alternatives(pair.c0, pair.c1, pair.target)
    scores = scorer(pixels, reference, pair.c0, pair.c1, others, latents, reference_latent)
    rows = pd.DataFrame({"pair": pair.name, "pair_index": p, "c0": pair.c0, "c1": pair.c1, "seed": int(seed),
                         "switch": switches})  # fmt: skip
    rows = pd.concat([rows, scores], axis=1)
    if evaluator is not None:
        rows = pd.concat([rows, evaluate(evaluator, pixels, reference, pair.target)], axis=1)
    return rows, pixels


def evaluate(evaluator, images: torch.Tensor, reference: torch.Tensor, target: tuple[str, str] | None) -> pd.DataFrame:
    """The toyworld evaluator's ground truth for ``images`` (R, 3, H, W) against the pure-c0 ``reference``
    (1, 3, H, W): ``evaluator_target_prob`` (P(target factor = value), NaN without a target), ``evaluator_mask_iou``
    (object-mask IoU), ``evaluator_kind_agree`` (same object kind), ``evaluator_score`` (their product)."""
    kept = evaluator.content_kept(images, reference.expand_as(images))
    prob = evaluator.style_reached(images, *target).numpy().astype(float) if target else np.full(len(images), np.nan)
    iou = kept["mask_iou"].to_numpy(dtype=float)
    return pd.DataFrame({"evaluator_target_prob": prob, "evaluator_mask_iou": iou,
                         "evaluator_kind_agree": kept["kind_agree"].to_numpy(dtype=bool),
                         "evaluator_score": prob * iou})  # fmt: skip


def _resolve_evaluator(pipe, evaluator):
    if evaluator is False:
        return None
    return evaluator if evaluator is not None else toy_evaluator(pipe)


def toy_evaluator(pipe):
    """The toyworld evaluator when ``pipe`` is the toy model and the evaluator's weights are installed, else None."""
    from .pipeline import model_id

    if model_id(pipe) != "toyworld":
        return None
    try:
        from .toyworld.evaluator import Evaluator

        return Evaluator.load()
    except (FileNotFoundError, ImportError):
        return None


# ---- resuming and splitting -------------------------------------------------------------------------------------
def _settings(pipe, pairs, switches, metrics, evaluator, steps, guidance, scheduler, late, clip, backbone,
              size) -> dict:  # fmt: skip
    """What a part file depends on (the seeds are not in it: a map with more seeds reuses the parts it has). The
    size is None at the model's own size, as in the manifests of maps made before the size was recorded."""
    from .losses import Clip
    from .optimize import model_id

    def name(x):
        if x is None or isinstance(x, (str, os.PathLike)):
            return None if x is None else os.fspath(x)
        return getattr(x, "name", type(x).__name__) if isinstance(x, Clip) else type(x).__name__

    return {
        "model": model_id(pipe), "pairs": [[p.name, p.c0, p.c1, list(p.target or []), list(p.alternatives or [])]
                                           for p in pairs],
        "switch_steps": switches, "metrics": metrics, "metrics_version": METRICS_VERSION,
        "evaluator": evaluator is not None, "steps": steps,
        "guidance": float(guidance), "scheduler": scheduler, "late": float(late), "clip": name(clip),
        "backbone": name(backbone), "dtype": str(getattr(pipe.unet, "dtype", "")),
        "size": None if (size["height"], size["width"]) == default_image_size(pipe) else [size["height"], size["width"]],
    }  # fmt: skip


def _claim(out: Path, settings: dict, state) -> None:
    """Write the manifest of a new map (main process), or check that an existing one was made with these settings."""
    path = out / MANIFEST
    if state is None or state.is_main_process:
        if path.is_file():
            _check_manifest(path, settings)
        else:
            write_json_atomic(path, settings)
        for stale in [*out.glob("parts/.*.tmp"), *out.glob("strips/.*.tmp")]:  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
    _barrier(state)
    _check_manifest(path, settings)


def _check_manifest(path: Path, settings: dict) -> None:
    old = json.loads(path.read_text())
    differ = [k for k in settings if old.get(k) != json.loads(json.dumps(settings[k]))]
    if differ:
        raise MapMismatchError(
            f"{path.parent} holds a map made with other settings ({', '.join(differ)} differ, e.g. {differ[0]}: "
            f"{old.get(differ[0])!r} there, {settings[differ[0]]!r} now); use another out folder, or delete "
            f"{path.parent} to start this map afresh."
        )


def _part_path(out: Path, p: int, seed: int) -> Path:
    return out / "parts" / f"p{p:03d}_s{seed}.csv"


def _merge(out: Path, units: list[tuple[int, int]]) -> pd.DataFrame:
    missing = [u for u in units if not _part_path(out, *u).is_file()]
    if missing:
        raise MapIncompleteError(f"{len(missing)} units of the map have no results in {out / 'parts'} (e.g. {missing[0]}).")
    return pd.concat([pd.read_csv(_part_path(out, *u)) for u in units], ignore_index=True)


def _process_state(pipe):
    """accelerate's PartialState when this process is one of several (``accelerate launch``, ``torchrun``), else
    None. On a CPU, PartialState joins the processes only when told ``cpu=True`` (gloo); on GPUs it uses NCCL."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    from .pipeline import pipeline_device

    return PartialState(cpu=pipeline_device(pipe).type == "cpu")


def _my_share(todo: list, state) -> list:
    if state is None or state.num_processes == 1:
        return todo
    with state.split_between_processes(todo) as mine:  # contiguous shares, the same list in every process
        return list(mine)


def _barrier(state) -> None:
    if state is not None and state.num_processes > 1:
        state.wait_for_everyone()


# ---- thumbnails ------------------------------------------------------------------------------------------------------
def _save_strip(pixels: torch.Tensor, path: Path) -> None:
    """The K images of one seed side by side in one PNG (K, 3, H, W) -> (H, K*W)."""
    from PIL import Image

    arr = (pixels.clamp(0, 1).permute(2, 0, 3, 1).flatten(1, 2).numpy() * 255).round().astype("uint8")
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def load_strip(out: str | os.PathLike, pair_index: int, seed: int | None = None) -> tuple[list, int]:
    """The images a map kept for one pair (one per switch step, in the manifest's order) and their seed."""
    from PIL import Image

    out = Path(out)
    found = sorted((out / "strips").glob(f"p{pair_index:03d}_s*.png"))
    if seed is not None:
        found = [f for f in found if f.stem == f"p{pair_index:03d}_s{seed}"]
    if not found:
        raise MissingResultError(f"no thumbnail strip for pair {pair_index} in {out / 'strips'}.")
    strip = Image.open(found[0]).convert("RGB")
    count = len(json.loads((out / MANIFEST).read_text())["switch_steps"])  # images need not be square
    w = strip.width // count
    tiles = [strip.crop((i * w, 0, (i + 1) * w, strip.height)) for i in range(count)]
    return tiles, int(found[0].stem.split("_s")[1])


# ---- windows ------------------------------------------------------------------------------------------------------
# Content columns where higher means kept (everything in METRICS is a distance: higher means lost).
HIGHER_IS_KEPT = {"evaluator_mask_iou", "evaluator_kind_agree", "evaluator_score"}


def find_windows(
    df: pd.DataFrame,
    content: str = RECOMMENDED[0],
    style: str = RECOMMENDED[1],
    content_threshold: float = 0.5,
    style_threshold: float = 0.5,
    relative: bool = True,
) -> pd.DataFrame:
    """Per pair, the window of switch steps that keep the content and reach the style (seeds averaged).

    ``relative=True`` (the default, comparable across metrics and models): each curve is rescaled per pair so the
    largest switch step in ``df`` (pure c0 when it is there) reads 0 and the smallest (pure c1 at 0) reads 1; the
    style is reached where the rescaled style >= ``style_threshold``, the content kept where the rescaled content
    change <= ``content_threshold`` (0.5 and 0.5: more than halfway to c1's style, less than halfway to c1's
    content). ``relative=False``: thresholds in the metric's own units (style >= threshold; content distance <=
    threshold, or >= for a column where higher means kept, such as ``evaluator_mask_iou``).

    Returns one row per pair: pair, pair_index, c0, c1, start, end (the longest run of consecutive switch steps in
    ``df`` where both hold; NaN if none), width (its number of switch steps), found, best (the switch step in it
    where rescaled style minus rescaled content change is largest).
    """
    for col in (content, style, "switch", "pair"):
        if col not in df:
            raise UnknownKeyError(f"find_windows needs column {col!r}; the map has {list(df.columns)}.")
    rows = []
    by = ["pair_index", "pair"] if "pair_index" in df else ["pair"]
    for key, part in df.groupby(by, sort=True):
        curves = part.groupby("switch")[[style, content]].mean().sort_index()
        ks = curves.index.to_numpy()
        s, c = curves[style].to_numpy(float), curves[content].to_numpy(float)
        if relative:
            s, c = _rescale(s), _rescale(c)
            reached, kept = s >= style_threshold, c <= content_threshold
        else:
            reached = s >= style_threshold
            kept = c >= content_threshold if content in HIGHER_IS_KEPT else c <= content_threshold
        start, end = _longest_run(ks, reached & kept)
        best = np.nan
        if start is not None:
            inside = (ks >= start) & (ks <= end)
            gain = (s - c)[inside] if relative else s[inside]
            best = int(ks[inside][int(np.nanargmax(gain))])
        first = part.iloc[0]
        rows.append({
            "pair": first["pair"], "pair_index": int(first.get("pair_index", len(rows))), "c0": first.get("c0"),
            "c1": first.get("c1"), "start": start, "end": end,
            "width": 0 if start is None else int(((ks >= start) & (ks <= end)).sum()), "found": start is not None,
            "best": best,
        })  # fmt: skip
    out = pd.DataFrame(rows)
    for col in ("start", "end", "best"):
        out[col] = pd.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else int(v) for v in out[col]],
                            dtype="Int64")  # fmt: skip
    return out


def _rescale(v: np.ndarray) -> np.ndarray:
    """0 at the largest switch step (last entry), 1 at the smallest (first): v's change from pure c0 toward c1."""
    span = v[0] - v[-1]
    if not np.isfinite(span) or abs(span) < 1e-12:
        return np.full_like(v, np.nan)
    return (v - v[-1]) / span


def _longest_run(ks: np.ndarray, ok: np.ndarray) -> tuple[int | None, int | None]:
    best, run = (None, None, 0), None
    for k, good in zip(ks, ok):
        if good:
            run = (run[0], k, run[2] + 1) if run else (k, k, 1)
            if run[2] > best[2]:
                best = run
        else:
            run = None
    return (int(best[0]), int(best[1])) if best[0] is not None else (None, None)


def windows_match(a: pd.DataFrame, b: pd.DataFrame, tolerance: int = 2) -> pd.Series:
    """Per pair (by pair_index), whether two :func:`find_windows` results agree: both without a window, or both
    with one whose start and end each differ by at most ``tolerance`` switch steps."""
    cols = ["pair_index", "start", "end", "found"]
    m = a[cols].merge(b[cols], on="pair_index", suffixes=("", "_b")).set_index("pair_index")
    close = ((m["start"] - m["start_b"]).abs() <= tolerance) & ((m["end"] - m["end_b"]).abs() <= tolerance)
    return ((~m["found"] & ~m["found_b"]) | (m["found"] & m["found_b"] & close.fillna(False).astype(bool))).rename("match")


def window_text(row) -> str:
    """A :func:`find_windows` row as text: "10-16", or "none"."""
    return f"{int(row['start'])}-{int(row['end'])}" if bool(row["found"]) else "none"


# ---- the report of `disentkit map` ---------------------------------------------------------------------------------
def write_map_report(
    df: pd.DataFrame, out: str | os.PathLike, content: str = RECOMMENDED[0], style: str = RECOMMENDED[1],
    figures: bool = True,
) -> pd.DataFrame:
    """Write ``windows.csv``, ``summary.md`` and (``figures``) ``figures/``: a pair x switch heatmap per metric, each
    pair's curves with its window shaded, and its thumbnail strip; every file atomically. Returns the windows."""
    from . import plotting

    out = Path(out)
    windows = find_windows(df, content=content, style=style)
    write_text_atomic(out / "windows.csv", windows.to_csv(index=False))
    shown = [c for c in df.columns if c in METRICS or c.startswith("evaluator_")]
    if figures:
        for col in shown:
            if df[col].notna().any() and df[col].dtype != bool:
                plotting.save_figure(plotting.map_heatmap(df, col), out / "figures" / f"heatmap_{col}.png")
        for w in windows.itertuples():
            window = None if not w.found else (int(w.start), int(w.end))
            slug = f"p{w.pair_index:03d}"
            fig = plotting.window_curves(df, w.pair, content, style, window)
            plotting.save_figure(fig, out / "figures" / f"curves_{slug}.png")
            try:
                tiles, seed = load_strip(out, w.pair_index)
            except FileNotFoundError:
                continue  # a map made with strip_seeds=0
            switches = sorted(df["switch"].unique())
            fig = plotting.thumbnail_strip(tiles, switches, window, every=max(1, len(switches) // 10),
                                           title=f"{w.pair} (seed {seed})")  # fmt: skip
            plotting.save_figure(fig, out / "figures" / f"strip_{slug}.png")
    write_text_atomic(out / "summary.md", _summary(df, windows, content, style, figures))
    return windows


def _summary(df: pd.DataFrame, windows: pd.DataFrame, content: str, style: str, figures: bool) -> str:
    seeds, switches = sorted(df["seed"].unique()), sorted(df["switch"].unique())
    lines = [
        "# Disentanglement map", "",
        f"{df['pair'].nunique()} pairs x {len(seeds)} seeds x {len(switches)} switch steps ({switches[0]}..{switches[-1]}) "
        f"= {len(df)} images. Window: the switch steps where `{content}` keeps the content and `{style}` reaches the "
        "style (each curve averaged over seeds and rescaled per pair: 0 at the largest switch step, pure c0, and 1 at "
        "the smallest; style reached at >= 0.5, content kept at <= 0.5; `dk.find_windows`).", "",
        "| pair | c0 | c1 | window | best switch |" + (" images |" if figures else ""),
        "|---|---|---|---|---|" + ("---|" if figures else ""),
    ]  # fmt: skip
    for w in windows.itertuples():
        span = f"{w.start}-{w.end}" if w.found else "none"
        best = "" if not w.found else str(w.best)
        fig = f" ![](figures/strip_p{w.pair_index:03d}.png) |" if figures else ""
        lines.append(f"| {w.pair} | {w.c0} | {w.c1} | {span} | {best} |{fig}")
    cols = [c for c in df.columns if c in METRICS or (c.startswith("evaluator_") and df[c].dtype != bool)]
    means = df.groupby("switch")[cols].mean()
    means = means.iloc[:: max(1, len(means) // 10)]
    lines += ["", "Means over pairs and seeds at some switch steps:", "", "| switch | " + " | ".join(cols) + " |",
              "|---|" + "---|" * len(cols)]  # fmt: skip
    lines += [f"| {k} | " + " | ".join(f"{v:.4g}" for v in row) + " |" for k, row in zip(means.index, means.to_numpy())]
    if figures:
        lines += ["", "Figures: `figures/heatmap_<metric>.png` (pair x switch step), `figures/curves_pNNN.png` (style and "
                  "content with the window shaded), `figures/strip_pNNN.png` (one seed's images)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def digest(df: pd.DataFrame) -> str:
    """A short fingerprint of a map's numbers (tests compare single- and multi-process maps with it)."""
    return hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()[:16]
