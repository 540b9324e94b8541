"""How good is the bundled toyworld model, and what does its disentanglement map look like?

The measurements of `benchmarks/toyworld_report.py`, its command line:

    python benchmarks/toyworld_report.py            # full: ~393k UNet rows, ~20 min on 2 free CPU cores
    python benchmarks/toyworld_report.py --quick    # 8 samples per prompt, 4 seeds, switch steps every 5 (~28k rows)
    python benchmarks/toyworld_report.py --model /tmp/w/pipeline --clip /tmp/w/clip --out outputs/x
    python benchmarks/toyworld_report.py --render outputs/toyworld_report/report.json   # rewrite the words only
    # on a GPU for the sampling parts, the speed bar on this CPU, then one report of both:
    python benchmarks/toyworld_report.py --device cuda --parts clip prompts map --out outputs/tw_gpu
    python benchmarks/toyworld_report.py --parts speed --out outputs/tw_cpu
    python benchmarks/toyworld_report.py --render outputs/tw_cpu/report.json outputs/tw_gpu/report.json --out outputs/tw

Cost: one UNet row (one 16x16 latent through the toy UNet, one guidance branch) took ~6 CPU ms on our 2-core box
(batched, one thread); the full map is 212,000 rows thanks to prefix sharing (~22 CPU min, ~11 min with two
workers on two free cores), prompt following 180,000. On a crowded machine use --samples/--seeds/--switch-every;
the report prints the sizes it used.

Five parts, each judged by the independent toyworld evaluator (a supervised CNN), never by the toy CLIP:
  1. prompt following: held-out prompts that each say one attribute ("a photo of a circle, red", "a sketch of a
     star", ...), 100 samples each (50 DDIM steps, guidance 7.5); accuracy per factor against what the prompt says;
  2. the toy CLIP's zero-shot accuracy per factor on held-out renders (captions that differ in that factor only);
  3. speed of one 50-step DDIM image with guidance on the CPU (median of 5 after a warm-up);
  4. the disentanglement map: c0 for steps 0..k-1, c1 from step k on, for every k in 0..50 (prefix-shared sweep),
     16 seeds, 5 attribute pairs; content kept against the pure-c0 image (k = 50) and style reached, per (pair, k);
  5. a markdown section for the README, written from the measured numbers.

Writes OUT/report.json (every number, the config, timings, versions), CSV tables, PNG figures and OUT/report.md
(also printed). The bars: prompt following kind, colour, background, rendering >= 95%, expression >= 90% (each
expression >= 85%), texture >= 85% (each texture >= 80%); the toy CLIP >= 90% per factor on renders and agreeing
with the evaluator on >= 85% of generated images per factor; for every pair a window (>= 3 consecutive switch steps
keeping mean mask IoU >= 0.8 and reaching the target on >= 80% of the seeds whose c0 image lacks it, >= 16 seeds);
one image <= 1 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


import disentkit as dk
from disentkit import plotting
from disentkit.files import write_json_atomic, write_text_atomic
from disentkit.losses import CLIP_MEAN, CLIP_STD, Clip, load_clip
from disentkit.pipeline import toyworld_dir
from disentkit.sweeps import sweep_switch
from disentkit.toyworld import scenes
from disentkit.toyworld.evaluator import Evaluator, centroid_shift, mask_iou
from disentkit.toyworld.quality import (
    IOU_BAR,
    REACH_BAR,
    WINDOW_SEEDS,
    WINDOW_STEPS,
    clip_agreement,
    switch_windows,
)

# ---- what is measured, and the bars ----------------------------------------------------------------------------
# The bars of prompt following: accuracy per factor over the prompts that say it.
PROMPT_BARS = {"kind": 0.95, "color": 0.95, "texture": 0.85, "expression": 0.90, "background": 0.95, "rendering": 0.95}
# ... and each value of these factors on its own (every expression, every texture), judged on the prompts saying it.
VALUE_BARS = {"expression": 0.85, "texture": 0.80}
CLIP_BAR = 0.90
CLIP_GENERATED_BAR = 0.85  # the toy CLIP's agreement with the evaluator on generated images, per factor
SECONDS_BAR = 1.0

# The report's parts (--parts), and the report.json keys each one writes (merge_reports puts reports together).
PARTS = ("speed", "clip", "prompts", "map")
PART_KEYS = {
    "speed": ("speed",),
    "clip": ("clip_zero_shot", "clip_zero_shot_openai_stats"),
    "prompts": ("prompt_following", "clip_on_generated"),
    "map": ("map",),
}
TIMING_KEYS = {"speed": "speed", "clip": "clip_zero_shot", "prompts": "prompt_following", "map": "map"}

# Seeds and scene seeds nobody else uses: training samples grids with seeds 0..5, the evaluator's held-out renders
# use 20231, training's own CLIP check uses default_rng(10_000). Same seeds every run, so reports compare.
PROMPT_SEED0 = 700_000  # sample seeds PROMPT_SEED0 + i for prompt following
MAP_SEED0 = 800_000  # sample seeds of the disentanglement map
CLIP_SCENE_SEED = 900_001  # numpy seed of the held-out renders for the CLIP check

# How the map's one-line summary reads the curves (see best_switch_steps).
STYLE_REACHED = 0.8  # mean evaluator probability of the target value
CONTENT_KEPT = 0.8  # mean object-mask IoU with the pure-c0 image

# The toy CLIP is trained on images scaled to [-1, 1] (disentkit.toyworld.models.images_to_tensor), i.e. mean 0.5
# and std 0.5 per channel. Its export folder has no preprocessor_config.json, so we fall back to that convention,
# not to OpenAI CLIP's statistics (which are right only for OpenAI's CLIP).
TOY_CLIP_MEAN, TOY_CLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def styled_caption(kind: str, factor: str | None = None, value: str | None = None) -> str:
    """The toy caption of a ``kind`` object that says ``factor = value`` (and nothing else), via scenes.caption so
    the wording is the one the model was trained on: ("circle", "background", "night") -> "a photo of a circle,
    at night"; ("star", "rendering", "sketch") -> "a sketch of a star"."""
    fixed = {"kind": kind, "rendering": "photo"}
    if factor is not None:
        fixed[factor] = value
    scene = scenes.sample_scene(np.random.default_rng(0), **fixed)  # only the fixed fields reach the caption
    return scenes.caption(scene, [factor] if factor else [])


def prompt_set() -> list[str]:
    """Held-out prompts, each saying one attribute; together they say every value of colour (6), background (4),
    texture (3) and expression (3), a sketch twice, and each kind at least twice. ("a photo of" pins no rendering,
    since training captions may leave a sketch unsaid, so "photo" cannot be prompted for.)"""
    plan = [
        ("circle", "color", "red"), ("square", "color", "green"), ("triangle", "color", "blue"),
        ("star", "color", "yellow"), ("face", "color", "purple"), ("circle", "color", "orange"),
        ("square", "background", "day"), ("triangle", "background", "night"),
        ("star", "background", "snow"), ("face", "background", "sunset"),
        ("star", "texture", "plain"), ("circle", "texture", "striped"), ("triangle", "texture", "dotted"),
        ("face", "expression", "neutral"), ("face", "expression", "smiling"), ("face", "expression", "frowning"),
        ("star", "rendering", "sketch"), ("square", "rendering", "sketch"),
    ]  # fmt: skip
    return [styled_caption(*p) for p in plan]


@dataclass(frozen=True)
class MapPair:
    """One attribute pair of the disentanglement map: c0 -> c1, and the evaluator factor/value c1 asks for."""

    name: str
    kind: str
    factor: str
    target: str

    @property
    def c0(self) -> str:
        return styled_caption(self.kind)

    @property
    def c1(self) -> str:
        return styled_caption(self.kind, self.factor, self.target)


MAP_PAIRS = (
    MapPair("colour", "circle", "color", "red"),
    MapPair("texture", "square", "texture", "striped"),
    MapPair("background", "triangle", "background", "night"),
    MapPair("sketch", "star", "rendering", "sketch"),
    MapPair("smiling", "face", "expression", "smiling"),
)
# The paper's "global" styles (the whole image changes) against "local" ones (the object's own look).
GLOBAL_PAIRS, LOCAL_PAIRS = ("background", "sketch"), ("colour", "texture", "smiling")


@dataclass
class ReportConfig:
    """Sizes of every part; ``quick()`` is the development setting, the defaults are the report's."""

    steps: int = 50
    guidance: float = 7.5
    samples_per_prompt: int = 100
    clip_scenes: int = 500  # held-out renders per factor
    speed_repeats: int = 5
    speed_compile: bool = False  # also time the image with the UNet under torch.compile (the command line's default)
    map_seeds: int = 16
    switch_every: int = 1  # switch steps 0, e, 2e, ..., steps
    max_batch: int = 256  # runs per UNet call (two UNet rows each with guidance)
    prompts: list[str] = field(default_factory=prompt_set)
    pairs: tuple[MapPair, ...] = MAP_PAIRS

    @classmethod
    def quick(cls) -> "ReportConfig":
        return cls(samples_per_prompt=8, clip_scenes=100, speed_repeats=3, map_seeds=4, switch_every=5)

    @property
    def switch_steps(self) -> list[int]:
        # k = steps (c0 throughout) is always included: it is the reference image for "content kept".
        return sorted(set(range(0, self.steps + 1, self.switch_every)) | {self.steps})


# ---- running tasks: here, or in worker processes -----------------------------------------------------------------
# On a shared 2-core machine one torch thread per process beats two threads in one process by far (two threads of
# one UNet call wait for each other; we measured 2.7x the CPU time per UNet row). So the sampling parts are split
# into independent tasks, fn(pipe, evaluator, *args), that a pool of single-threaded worker processes runs.
_WORKER: dict = {}


def _init_worker(model: str, evaluator_path: str | None, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["pipe"] = dk.load_pipeline(model)
    _WORKER["evaluator"] = Evaluator.load(evaluator_path)


def _timed(fn, pipe, evaluator, args):
    cpu = time.process_time()
    return fn(pipe, evaluator, *args), time.process_time() - cpu


def _worker_task(fn, args):
    return _timed(fn, _WORKER["pipe"], _WORKER["evaluator"], args)


class Runner:
    """Runs tasks ``fn(pipe, evaluator, *args)`` in this process (workers=1) or in ``workers`` spawned processes
    that each load the model once. ``cpu_s`` adds up the CPU seconds the tasks took, wherever they ran."""

    def __init__(self, pipe, evaluator: Evaluator, workers: int = 1, model: str | None = None,
                 evaluator_path: str | None = None, threads: int = 1):  # fmt: skip
        self.pipe, self.evaluator, self.cpu_s, self.pool = pipe, evaluator, 0.0, None
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                workers, multiprocessing.get_context("spawn"), _init_worker, (model, evaluator_path, threads)
            )

    def map(self, fn, arg_list: list[tuple]) -> list:
        if self.pool is None:
            done = [_timed(fn, self.pipe, self.evaluator, args) for args in arg_list]
        else:
            done = [f.result() for f in [self.pool.submit(_worker_task, fn, args) for args in arg_list]]
        self.cpu_s += sum(cpu for _, cpu in done)
        return [out for out, _ in done]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


# ---- 1. prompt following -----------------------------------------------------------------------------------------
def prompt_task(pipe, evaluator: Evaluator, prompt: str, cfg: ReportConfig) -> tuple[list[dict], list, tuple]:
    """Sample one prompt ``cfg.samples_per_prompt`` times (seeds PROMPT_SEED0 + i) and check each factor it says
    (its kind always). Returns rows (prompt, factor, target, n, accuracy, target_prob), the first 8 images
    (uint8 arrays), and (every image (N, 64, 64, 3) uint8, the evaluator's labels of them) for the CLIP check on
    generated images. Expression counts as wrong when the evaluator does not see a face at all."""
    seeds = [PROMPT_SEED0 + i for i in range(cfg.samples_per_prompt)]
    tape = dk.NoiseTape.from_seed(pipe, seeds, steps=cfg.steps)
    cond = dk.encode(pipe, prompt, prompt)  # c0 = c1: a plain text-to-image sample
    result = dk.sample(
        pipe, cond, dk.MixSchedule.constant(cfg.steps, 0.0), tape, cfg.guidance, max_batch=cfg.max_batch, progress=False
    )
    seen = evaluator(result.pixels)
    rows = [
        {
            "prompt": prompt, "factor": factor, "target": target, "n": len(seen),
            "accuracy": float((seen[factor] == target).mean()),
            "target_prob": float(seen[f"p_{factor}_{target}"].mean()),
        }
        for factor, target in scenes.parse_caption(prompt).items()
    ]  # fmt: skip
    labels = seen[list(evaluator.factors)]
    every = np.stack([np.asarray(im) for im in result.images])  # (N, 64, 64, 3) uint8
    return rows, list(every[:8]), (every, labels)


def prompt_following(runner: Runner, cfg: ReportConfig) -> tuple[pd.DataFrame, pd.DataFrame, list, tuple]:
    """Every prompt of ``cfg.prompts``: (per prompt and factor), (per factor: n_prompts, n_images, accuracy, bar,
    passed), the first 8 images of each prompt (for a grid), and (all images, the evaluator's labels)."""
    done = runner.map(prompt_task, [(prompt, cfg) for prompt in cfg.prompts])
    per_prompt = pd.DataFrame([row for rows, _, _ in done for row in rows])
    examples = [im for _, images, _ in done for im in images]
    generated = (np.concatenate([g[0] for _, _, g in done]), pd.concat([g[1] for _, _, g in done], ignore_index=True))
    per_factor = (
        per_prompt.groupby("factor", sort=False)
        .agg(n_prompts=("prompt", "size"), n_images=("n", "sum"), accuracy=("accuracy", "mean"))
        .reset_index()
    )  # every prompt has the same number of images, so the mean over prompts is the mean over images
    per_factor["bar"] = per_factor["factor"].map(PROMPT_BARS)
    # The worst single value (e.g. smiling among the expressions), on the prompts that ask for a value of this factor
    # (the kind is judged on every prompt, so its per-value accuracy mixes prompts; it has no value bar).
    said = per_prompt[per_prompt["factor"].isin(list(VALUE_BARS))]
    worst = said.groupby("factor")["accuracy"].min() if len(said) else pd.Series(dtype=float)
    per_factor["worst_value_accuracy"] = per_factor["factor"].map(worst)
    per_factor["value_bar"] = per_factor["factor"].map(VALUE_BARS)
    per_factor["passed"] = [
        None if pd.isna(bar) else bool(acc >= bar and (pd.isna(vbar) or pd.isna(w) or w >= vbar))
        for acc, bar, w, vbar in zip(per_factor["accuracy"], per_factor["bar"], per_factor["worst_value_accuracy"],
                                     per_factor["value_bar"])
    ]  # fmt: skip
    order = list(scenes.FACTORS)
    per_factor = per_factor.sort_values("factor", key=lambda c: c.map(order.index)).reset_index(drop=True)
    return per_prompt, per_factor, examples, generated


# ---- 2. the toy CLIP -------------------------------------------------------------------------------------------
def load_report_clip(path: str | Path) -> tuple[Clip, str]:
    """The CLIP at ``path`` with the image statistics it was trained with, and where they came from.

    ``disentkit.losses.load_clip`` takes mean/std from the folder's preprocessor_config.json, else OpenAI CLIP's;
    the toy CLIP folder has none and was trained on [-1, 1] inputs, so without a config we use mean = std = 0.5.
    """
    clip = load_clip(path)
    if (Path(path) / "preprocessor_config.json").is_file():
        return clip, "preprocessor_config.json"
    return replace(clip, mean=TOY_CLIP_MEAN, std=TOY_CLIP_STD), "toyworld convention [-1, 1] (no preprocessor config)"


@torch.no_grad()
def clip_zero_shot(clip: Clip, n_scenes: int, seed: int = CLIP_SCENE_SEED) -> pd.DataFrame:
    """Zero-shot accuracy per factor on ``n_scenes`` held-out renders each (faces only for expression): the caption
    whose text embedding is closest to the image embedding must say the scene's true value.

    Returns one row per factor: factor, n, accuracy, chance, bar, passed.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for factor in scenes.FACTORS:
        fixed = {"kind": "face"} if factor == "expression" else {}
        batch = [scenes.sample_scene(rng, **fixed) for _ in range(n_scenes)]
        images, _ = scenes.render_batch(batch)  # (n, 64, 64, 3) uint8
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (n, 3, 64, 64) in [0, 1]
        img = torch.cat([clip.encode_images(p) for p in pixels.split(256)])  # (n, E); resized + normalised inside
        captions = [scenes.factor_captions(s, factor) for s in batch]  # n x V
        unique = sorted({c for cs in captions for c in cs})
        text = dict(zip(unique, clip.encode_texts(unique)))
        scores = torch.stack([torch.stack([text[c] for c in cs]) @ img[i] for i, cs in enumerate(captions)])  # (n, V)
        truth = torch.tensor([scenes.FACTORS[factor].index(getattr(s, factor)) for s in batch])
        rows.append({
            "factor": factor, "n": n_scenes, "accuracy": float((scores.argmax(1) == truth).float().mean()),
            "chance": 1 / len(scenes.FACTORS[factor]), "bar": CLIP_BAR,
        })  # fmt: skip
    df = pd.DataFrame(rows)
    df["passed"] = df["accuracy"] >= df["bar"]
    return df


# ---- 3. speed ----------------------------------------------------------------------------------------------------
def one_image_seconds(pipe, cfg: ReportConfig, prompt: str = "a photo of a face, smiling") -> dict:
    """Wall and CPU seconds of one image (encode, tape, 50-step DDIM with guidance, decode): median of
    ``cfg.speed_repeats`` after one warm-up.

    The bar is judged on the time the image takes on a core of its own. On a machine shared with other jobs the
    wall time grows with their load; the CPU time of a one-thread process does not (much), and it is what the wall
    time would be on a free core. So with one torch thread we judge the CPU time, with more threads the wall time
    (their CPU seconds add up over threads). ``judged_on`` says which.
    """

    def once(compile: bool) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        cond = dk.encode(pipe, prompt, prompt)
        tape = dk.NoiseTape.from_seed(pipe, PROMPT_SEED0, steps=cfg.steps)
        schedule = dk.MixSchedule.constant(cfg.steps, 0.0)
        dk.sample(pipe, cond, schedule, tape, cfg.guidance, progress=False, compile=compile)
        return time.perf_counter() - wall, time.process_time() - cpu

    judged_on = "cpu" if torch.get_num_threads() == 1 else "wall"

    def timing(compile: bool) -> dict:
        first = once(compile)  # warm-up: first calls allocate and pick kernels (and compile, with compile=True)
        runs = np.array([once(compile) for _ in range(cfg.speed_repeats)])
        wall, cpu = float(np.median(runs[:, 0])), float(np.median(runs[:, 1]))
        seconds = cpu if judged_on == "cpu" else wall
        return {
            "seconds": seconds, "judged_on": judged_on, "wall_s_median": wall, "cpu_s_median": cpu,
            "wall_s_all": runs[:, 0].round(4).tolist(), "cpu_s_all": runs[:, 1].round(4).tolist(),
            "first_call_wall_s": round(first[0], 2), "passed": bool(seconds <= SECONDS_BAR),
        }  # fmt: skip

    out = timing(False) | {
        "torch_threads": torch.get_num_threads(), "steps": cfg.steps, "guidance": cfg.guidance, "bar_s": SECONDS_BAR,
    }  # fmt: skip
    if cfg.speed_compile:  # dk.sample(compile=True): the same image, after a one-off compilation
        out["compiled"] = timing(True)
    return out


# ---- 4. the disentanglement map -------------------------------------------------------------------------------
def map_task(pipe, evaluator: Evaluator, pair: MapPair, seeds: list[int], cfg: ReportConfig) -> tuple:
    """Sweep the switch step k over ``cfg.switch_steps`` for one pair and some seeds (one prefix-shared sweep), and
    judge every image. Returns (runs, examples, unet_rows, unshared_rows): one row per (k, seed) with

      mask_iou, shift_px, shift_frac, kind, kind_kept: content, against the pure-c0 image (k = steps) of the same
          seed (evaluator masks, 64x64 px);
      style_prob: evaluator probability of the pair's target value; style_hit: the target is the most likely value;
      style_value: what the evaluator sees for that factor (its raw head: for a face that lost its face-ness the
          expression head still answers, and kind_kept says that it was lost);
    and examples {k: uint8 image of the first seed}.
    """
    ks = cfg.switch_steps
    cond = dk.encode(pipe, pair.c0, pair.c1)
    tape = dk.NoiseTape.from_seed(pipe, seeds, steps=cfg.steps)
    result = sweep_switch(pipe, cond, tape, ks, cfg.guidance, max_batch=cfg.max_batch, progress=False)

    runs = result.runs.reset_index()  # ordered (switch step, seed), seed fastest
    ref = torch.tensor(ks.index(cfg.steps) * tape.batch + runs["seed_index"].to_numpy())  # the same seed's c0 image
    probs, mask_p = evaluator.predict(result.pixels)  # one evaluator pass for every image, references included
    masks = mask_p > 0.5
    shift = centroid_shift(masks[ref], masks)
    kinds, values = evaluator.factors["kind"], evaluator.factors[pair.factor]
    kind = [kinds[i] for i in probs["kind"].argmax(1)]
    target, seen = values.index(pair.target), probs[pair.factor].argmax(1)
    df = pd.DataFrame({
        "pair": pair.name, "c0": pair.c0, "c1": pair.c1, "factor": pair.factor, "target": pair.target,
        "k": [ks[s] for s in runs["schedule"]], "seed": runs["seed"],
        "mask_iou": mask_iou(masks, masks[ref]).numpy().astype(float),
        "shift_px": shift["shift_px"], "shift_frac": shift["shift_frac"],
        "kind": kind, "kind_kept": [kind[i] == kind[r] for i, r in enumerate(ref)],
        "style_prob": probs[pair.factor][:, target].numpy().astype(float),
        "style_hit": (seen == target).numpy(), "style_value": [values[i] for i in seen],
    })  # fmt: skip
    first_seed = runs.index[runs["seed_index"] == 0]
    examples = {ks[runs["schedule"][r]]: np.asarray(result.images[r]) for r in first_seed}
    return df, examples, result.meta["unet_rows"], result.meta["unshared_rows"]


def disentanglement_runs(runner: Runner, cfg: ReportConfig) -> tuple[pd.DataFrame, dict, dict]:
    """The map for every pair of ``cfg.pairs`` and ``cfg.map_seeds`` seeds (MAP_SEED0 + i), split into tasks of at
    most 8 seeds so that workers share the load evenly. Returns (runs, {pair: {k: image of the first seed}},
    UNet row counts)."""
    seeds = [MAP_SEED0 + i for i in range(cfg.map_seeds)]
    chunks = [seeds[i : i + 8] for i in range(0, len(seeds), 8)]
    tasks = [(pair, chunk, cfg) for pair in cfg.pairs for chunk in chunks]
    done = runner.map(map_task, tasks)
    runs = pd.concat([d[0] for d in done], ignore_index=True)
    runs = runs.sort_values(["k", "seed"], kind="stable")
    runs = runs.sort_values("pair", key=lambda c: c.map([p.name for p in cfg.pairs].index), kind="stable")
    examples = {task[0].name: d[1] for task, d in zip(tasks, done) if task[1][0] == seeds[0]}
    rows = {"unet_rows": sum(d[2] for d in done), "unshared_rows": sum(d[3] for d in done)}
    return runs.reset_index(drop=True), examples, rows


def map_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per (pair, k): n, style_prob, style_hit, mask_iou, shift_px, shift_frac, kind_kept."""
    order = list(dict.fromkeys(runs["pair"]))
    table = (
        runs.groupby(["pair", "k"], sort=False)
        .agg(
            n=("seed", "size"), style_prob=("style_prob", "mean"), style_hit=("style_hit", "mean"),
            mask_iou=("mask_iou", "mean"), shift_px=("shift_px", "mean"), shift_frac=("shift_frac", "mean"),
            kind_kept=("kind_kept", "mean"),
        )
        .reset_index()
    )  # fmt: skip
    table["pair"] = pd.Categorical(table["pair"], categories=order, ordered=True)  # keep MAP_PAIRS order in plots
    return table.sort_values(["pair", "k"]).reset_index(drop=True)


def best_switch_steps(table: pd.DataFrame, steps: int) -> pd.DataFrame:
    """One line per pair.

    best_k: the largest switch step k < steps whose mean style_prob is >= STYLE_REACHED: switching later keeps more
        of the c0 image's content, so the latest k that still reaches the style is the best trade (None if no k
        does; k = steps, c0 alone, is the reference and never counts);
    product_k: the k < steps maximising style_prob x mask_iou (a threshold-free second opinion);
    content_k: the earliest k from which on every later switch keeps mean mask_iou >= CONTENT_KEPT, i.e. where
        the content is settled; style_c0 / style_c1: style_prob of the pure-c0 (k = steps) and pure-c1 (k = 0) images.
    """
    rows = []
    for pair, part in table.groupby("pair", sort=False, observed=True):
        part = part.set_index("k").sort_index()
        switches = part.drop(index=steps)  # k = steps is c0 alone, the reference, not an edit
        reached = switches.index[switches["style_prob"] >= STYLE_REACHED]
        best = int(reached.max()) if len(reached) else None
        product_k = int((switches["style_prob"] * switches["mask_iou"]).idxmax())
        kept = part["mask_iou"] >= CONTENT_KEPT
        # the last k whose IoU is below the bar; content is settled from the next listed k on
        below = part.index[~kept]
        content_k = int(part.index[part.index > below.max()].min()) if len(below) else int(part.index.min())
        at = part.loc[best] if best is not None else None
        rows.append({
            "pair": pair, "best_k": best,
            "style_prob": None if at is None else float(at["style_prob"]),
            "style_hit": None if at is None else float(at["style_hit"]),
            "mask_iou": None if at is None else float(at["mask_iou"]),
            "shift_px": None if at is None else float(at["shift_px"]),
            "kind_kept": None if at is None else float(at["kind_kept"]),
            "product_k": product_k, "content_k": content_k,
            "style_c0": float(part.loc[steps, "style_prob"]),
            "style_c1": float(part.loc[part.index.min(), "style_prob"]),
            "window": best is not None and content_k <= best,
        })  # fmt: skip
    return pd.DataFrame(rows)


def map_figures(table: pd.DataFrame, examples: dict, cfg: ReportConfig) -> dict[str, Figure]:
    """Heatmaps (pair x k) of style reached and content IoU, per-pair curves, and example images (first seed)."""
    t = table.assign(pair=table["pair"].astype(str))
    t = t.assign(pair=pd.Categorical(t["pair"], categories=[p.name for p in cfg.pairs], ordered=True))
    dense = len(cfg.switch_steps) > 20  # 51 columns: numbers in the cells would be unreadable
    figs = {
        "map_style.png": plotting.heatmap(
            t, "pair", "k", "style_prob", "style reached: P(target) by switch step k (c0 for steps < k)",
            vmin=0, vmax=1, annotate=not dense),
        "map_content_iou.png": plotting.heatmap(
            t, "pair", "k", "mask_iou", "content kept: mask IoU with the pure-c0 image", vmin=0, vmax=1,
            annotate=not dense),
    }  # fmt: skip

    pairs = [p.name for p in cfg.pairs]
    fig = Figure(figsize=(3.4 * len(pairs), 3.0), layout="constrained")
    FigureCanvasAgg(fig)  # headless, like disentkit.plotting
    for ax, name in zip(fig.subplots(1, len(pairs), squeeze=False)[0], pairs):
        part = t[t["pair"] == name]
        plotting.metric_curves(part, "k", ["style_prob", "mask_iou", "kind_kept"], ax=ax, title=name, ylim=(0, 1.02))
        ax.set_xlabel("switch step k")
    figs["map_curves.png"] = fig

    # examples: pair x a few switch steps, first seed
    shown = [k for k in cfg.switch_steps if k % 5 == 0] if len(cfg.switch_steps) > 11 else cfg.switch_steps
    images = [examples[name][k] for name in pairs for k in shown]
    figs["map_examples.png"] = plotting.image_grid(
        images, len(pairs), len(shown), [f"{p.name}" for p in cfg.pairs], [f"k={k}" for k in shown],
        title=f"c0 for steps < k, then c1 (first seed); k=0: pure c1, k={cfg.steps}: pure c0",
    )  # fmt: skip
    return figs


# ---- 5. the words ----------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _verdict(passed) -> str:
    return "—" if passed is None else ("pass" if passed else "**FAIL**")


def readme_section(r: dict) -> str:
    """The README's "What toyworld shows" section, every number taken from the report ``r`` (the parts it holds)."""
    cfg = r["config"]
    trained = r["model_info"].get("unet")
    parts = report_parts(r)
    where = ""
    if r.get("sources"):  # a merged report: say where each part was measured
        where = "; " + ", ".join(f"{part} on {src['device']} ({src['date']})" for part, src in r["sources"].items())
    elif r.get("device", "cpu") != "cpu":
        where = f"; sampled on {r['device']}"
    lines = [
        "## What toyworld shows",
        "",
        f"Measured by `python benchmarks/toyworld_report.py` ({r['date']}, model `{r['model']}`"
        + (f", {trained}" if trained else "") + where + ").",
        "",
    ]
    if "prompts" in parts:
        lines += prompt_lines(r)
    if "clip" in parts:
        zs = pd.DataFrame(r["clip_zero_shot"])
        lines += [
            f"**Its CLIP reads the scenes.** Zero-shot accuracy on {int(zs['n'].iloc[0])} held-out renders per "
            f"factor (bar >= {_pct(CLIP_BAR)}): "
            + ", ".join(f"{f} {_pct(a)} (chance {_pct(c)})" for f, a, c in zip(zs["factor"], zs["accuracy"], zs["chance"]))
            + ("." if zs["passed"].all() else f"; below the bar: {', '.join(zs.loc[~zs['passed'], 'factor'])}."),
            "",
        ]
    if "speed" in parts:
        lines += [speed_text(r["speed"], cfg), ""]
    if "map" in parts:
        lines += map_lines(r)
    return "\n".join(lines) + "\n"


def prompt_lines(r: dict) -> list[str]:
    cfg = r["config"]
    pf = pd.DataFrame(r["prompt_following"]["per_factor"])
    lines = [
        f"**It follows prompts.** {len(cfg['prompts'])} held-out prompts that each say one attribute, "
        f"{cfg['samples_per_prompt']} samples each ({cfg['steps']} DDIM steps, guidance {cfg['guidance']}), judged by the "
        "independent toyworld evaluator:",
        "",
        "| factor | accuracy | bar | |",
        "|---|---|---|---|",
    ]
    for row in pf.itertuples():
        bar = "—" if pd.isna(row.bar) else f">= {_pct(row.bar)}"
        acc = f"{_pct(row.accuracy)} ({row.n_prompts} prompts)"
        vbar, worst = getattr(row, "value_bar", None), getattr(row, "worst_value_accuracy", None)
        if vbar is not None and not pd.isna(vbar) and not pd.isna(worst):  # older reports have no value bars
            acc += f", worst value {_pct(worst)}"
            bar += f", each >= {_pct(vbar)}"
        lines.append(f"| {row.factor} | {acc} | {bar} | {_verdict(row.passed)} |")
    if r.get("clip_on_generated"):  # reports written before this check was added have none
        lines += ["", f"**Its CLIP on generated images.** On the same generated images, the toy CLIP's zero-shot "
                  f"answer agrees with the evaluator's (bar >= {_pct(CLIP_GENERATED_BAR)} per factor): "
                  + ", ".join(f"{row['factor']} {_pct(row['agreement'])} ({_verdict(row['passed'])})"
                              for row in r["clip_on_generated"]) + "."]  # fmt: skip
    return lines + [""]


def map_lines(r: dict) -> list[str]:
    cfg = r["config"]
    steps = cfg["steps"]
    best = pd.DataFrame(r["map"]["summary"])
    lines = [
        f"**The switch step separates content from style.** For each pair, c0 for steps 0..k-1 and c1 from step k "
        f"on, for every k in {cfg['switch_steps'][0]}..{cfg['switch_steps'][-1]} (step {cfg['switch_every']}), "
        f"{cfg['map_seeds']} seeds. Best k = the latest switch whose images still reach the style "
        f"(evaluator P(target) >= {STYLE_REACHED}); content = object-mask IoU, centroid shift and kind against the "
        f"pure-c0 image of the same seed; `c0 alone` = how often c0's own image already shows the target.",
        "",
        "| pair (c0 -> c1) | best k | P(target) | target seen | mask IoU | shift (px of 64) | kind kept "
        "| content settled from k | c0 alone |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pairs = {p["name"]: p for p in r["map"]["pairs"]}
    for row in best.itertuples():
        p = pairs[row.pair]
        name = f"{row.pair}: \"{p['c0']}\" -> \"{p['c1']}\""
        if row.best_k is None or pd.isna(row.best_k):
            lines.append(f"| {name} | none reaches {STYLE_REACHED} (best product at k={row.product_k}) | | | | | | "
                         f"{row.content_k} | {row.style_c0:.2f} |")
        else:
            lines.append(
                f"| {name} | {int(row.best_k)} | {row.style_prob:.2f} | {_pct(row.style_hit)} | {row.mask_iou:.2f} | "
                f"{row.shift_px:.1f} | {_pct(row.kind_kept)} | {row.content_k} | {row.style_c0:.2f} |"
            )
    if r["map"].get("windows"):  # reports written before this check was added have none
        rules = r["map"]["window_rules"]
        lines += ["", f"**Windows** (>= {rules['consecutive_steps']} consecutive switch steps with mean mask IoU >= "
                  f"{rules['content_kept']} and the target reached on >= {_pct(rules['reached_on_lacking_seeds'])} of "
                  f"the seeds whose c0 image lacks it; >= {rules['seeds']} seeds):", "",
                  "| pair | seeds (c0 lacks target) | longest run of switch steps | window |", "|---|---|---|---|"]
        for w in r["map"]["windows"]:
            run = f"k = {int(w['start'])}..{int(w['end'])} ({w['length']} steps)" if w["length"] else "none"
            lines.append(f"| {w['pair']} | {w['seeds']} ({w['lacking']}) | {run} | {_verdict(w['window'])} |")
    lines += ["", "Compared with what the paper reports for Stable Diffusion v1.4 (50 steps):", ""]
    table = pd.DataFrame(r["map"]["table"])
    lines += [f"- {s}" for s in paper_comparison(best, table, steps)]
    lines += [
        "",
        "Figures: `map_style.png`, `map_content_iou.png` (pair x switch step), `map_curves.png`, `map_examples.png`; "
        "every number is in `report.json` and the CSV tables next to it.",
    ]
    return lines


def speed_text(speed: dict, cfg: dict) -> str:
    """The speed sentence; judged as in one_image_seconds (also for reports written before it said so)."""
    judged_on = speed.get("judged_on") or ("cpu" if speed["torch_threads"] == 1 else "wall")
    passed = speed[f"{judged_on}_s_median"] <= SECONDS_BAR
    repeats = len(speed.get("cpu_s_all") or []) or cfg["speed_repeats"]
    if judged_on == "cpu":
        how = (f"{speed['cpu_s_median']:.2f} s on one CPU core (CPU time of a one-thread process, median of "
               f"{repeats}; the wall time was {speed['wall_s_median']:.2f} s on this shared machine)")
    else:
        how = (f"{speed['wall_s_median']:.2f} s on the CPU (wall time, median of {repeats}, "
               f"{speed['torch_threads']} torch threads)")
    verdict = "within" if passed else "**over**"
    text = (f"**Speed.** One {speed.get('steps', cfg['steps'])}-step DDIM image with guidance (encode, sample, decode) takes {how}: "
            f"{verdict} the bar of {SECONDS_BAR:.0f} s.")  # fmt: skip
    if "compiled" in speed:
        c = speed["compiled"]
        verdict = "within" if c["passed"] else "**over**"
        text += (f" With the UNet compiled (`dk.sample(..., compile=True)`, torch.compile; the first call compiles, "
                 f"{c['first_call_wall_s']:.0f} s) it takes {c[f'{judged_on}_s_median']:.2f} s: {verdict} the bar.")
    return text


def paper_comparison(best: pd.DataFrame, table: pd.DataFrame, steps: int) -> list[str]:
    """Sentences comparing the measured map with the paper's claims, each one decided by the numbers."""
    out = []
    # 1. Fewer c0 steps: stronger style, more content drift. Rank (Spearman) correlation with k over the switch steps.
    def spearman(a: pd.Series, b: pd.Series) -> float:
        return a.rank().corr(b.rank())  # NaN when b is constant: then it counts as no trend

    trend = {
        pair: (spearman(part["k"], part["style_prob"]), spearman(part["k"], part["mask_iou"]))
        for pair, part in table.groupby("pair", sort=False)
    }
    both = [p for p, (rs, ri) in trend.items() if rs < 0 and ri > 0]
    first, last = table[table["k"] == table["k"].min()], table[table["k"] == steps]
    out.append(
        f"Fewer c0 steps give a stronger style and more content drift for {len(both)} of {len(trend)} pairs "
        f"(P(target) falls and mask IoU rises with k): averaged over pairs, P(target) is "
        f"{first['style_prob'].mean():.2f} with c1 from step 0 and {last['style_prob'].mean():.2f} with c0 alone, "
        f"and the mask IoU with the c0 image is {first['mask_iou'].mean():.2f} at k = 0"
        + (" - as in the paper." if len(both) == len(trend) else "; the paper describes this trade-off for every pair.")
    )
    # 2. When is the content fixed? The paper: in the first ~10-20 of 50 steps.
    ck = best["content_k"].astype(int)
    lo, hi = 10 * steps / 50, 20 * steps / 50  # scaled to our step count
    m = float(ck.median())
    where = "earlier than" if m < lo else ("as in" if m <= hi else "later than in")
    per_pair = ", ".join(f"{p} {k}" for p, k in zip(best["pair"], ck))
    text = (
        f"Content is fixed by step {m:.0f} (median over pairs; {per_pair}): switching at or after it keeps the "
        f"object's mask (mean IoU >= {CONTENT_KEPT} with the c0 image) - {where} the paper, which finds content "
        f"fixed in the first ~10-20 of 50 steps."
    )
    at_once = list(best.loc[ck == table["k"].min(), "pair"])
    if at_once:
        text += (
            f" For {', '.join(at_once)} even c1 from the first step keeps the mask: there the start noise alone "
            "fixes the object's place and shape."
        )
    out.append(text)
    # 3. Is there a switch step that keeps the content and still reaches the style?
    has_window = best["window"].astype(bool)
    ok = [f"{r.pair} k = {r.content_k}..{int(r.best_k)}" for r in best[has_window].itertuples()]
    missing = list(best.loc[~has_window, "pair"])
    text = (
        f"A late enough switch keeps the content and still reaches the style (P(target) >= {STYLE_REACHED}) for "
        f"{len(ok)} of {len(best)} pairs" + (f" ({'; '.join(ok)})" if ok else "")
        + (f"; not for {', '.join(missing)}" if missing else "") + "."
    )  # fmt: skip
    paper = " The paper shows such a window for every attribute it edits." if missing else " As in the paper."
    out.append(text + paper)
    # 4. Global styles need earlier switches than local attributes (the paper: backgrounds, art styles vs expressions).
    k = best.set_index("pair")["best_k"]
    g = {p: float(k[p]) for p in GLOBAL_PAIRS if p in k and pd.notna(k[p])}
    loc = {p: float(k[p]) for p in LOCAL_PAIRS if p in k and pd.notna(k[p])}
    left_out = [p for p in GLOBAL_PAIRS + LOCAL_PAIRS if p in k and pd.isna(k[p])]
    if g and loc:
        gm, lm = np.mean(list(g.values())), np.mean(list(loc.values()))
        # A couple of steps is within what a few seeds move the latest working switch; call that no difference.
        if abs(gm - lm) <= 2:
            verdict = "no clear difference, where the paper finds that global styles need earlier switches"
        elif gm < lm:
            verdict = "global styles need earlier switches, as the paper reports"
        else:
            verdict = "the opposite of the paper, where global styles need earlier switches"
        each = lambda d: ", ".join(f"{p} {v:.0f}" for p, v in d.items())  # noqa: E731
        out.append(
            f"The latest working switch is step {gm:.0f} on average for global styles ({each(g)}) and step "
            f"{lm:.0f} for local attributes ({each(loc)}): {verdict}."
            + (f" Left out: {', '.join(left_out)} (no switch step reaches the style)." if left_out else "")
        )
    else:
        out.append(
            "Global and local styles cannot be compared: too few of those pairs reach the style at any switch step."
        )
    return out


def full_map_rows(cfg: ReportConfig) -> int:
    """UNet rows of the full map (all switch steps, ``map_seeds`` seeds, every pair) with prefix sharing."""
    from disentkit.sweeps import count_branch_steps

    full = replace(cfg, switch_every=1)
    schedules = [dk.MixSchedule.switch(cfg.steps, k) for k in full.switch_steps]
    rows_per_run = 2 if cfg.guidance > 1 else 1
    return count_branch_steps(schedules, "ddim", cfg.steps) * rows_per_run * len(cfg.pairs) * ReportConfig().map_seeds


def map_runtime_text(r: dict) -> str:
    """How long the map took, its CPU cost per UNet row, and what the full map costs at that rate."""
    m, cfg = r["map"], r["config"]
    ms_per_row = 1000 * r["cpu_s"]["map"] / m["unet_rows"]
    full = m.get("full_map_unet_rows") or full_map_rows(ReportConfig(steps=cfg["steps"], guidance=cfg["guidance"]))
    workers = max(1, r.get("workers", 1))
    device = (r.get("sources") or {}).get("map", {}).get("device") or r.get("device", "cpu")
    if device != "cpu":  # one process on an accelerator: wall time is what it cost
        per_row = 1000 * r["timings_s"]["map"] / m["unet_rows"]
        return (
            f"Map runtime on {device}: {r['timings_s']['map']:.0f} s wall for {m['images']} images "
            f"({m['unet_rows']} UNet rows; {m['unshared_rows']} without prefix sharing), {per_row:.2f} ms per UNet "
            f"row (sampling, decoding and judging included); the full map is {full} UNet rows."
        )
    return (
        f"Map runtime: {r['timings_s']['map']:.0f} s wall, {r['cpu_s']['map']:.0f} CPU s for {m['images']} images "
        f"({m['unet_rows']} UNet rows; {m['unshared_rows']} without prefix sharing), i.e. {ms_per_row:.1f} CPU ms "
        f"per UNet row (sampling, decoding and judging included). The full map ({ReportConfig().map_seeds} seeds, "
        f"every k in 0..{cfg['steps']}) is {full} UNet rows: {full * ms_per_row / 60000:.0f} CPU minutes at this rate, "
        f"{full * ms_per_row / 60000 / workers:.0f} minutes on {workers} free core(s) with {workers} worker(s)."
    )


def report_markdown(r: dict) -> str:
    """The whole printed report: the README section plus the details a reviewer wants (timings, per prompt)."""
    parts = report_parts(r)
    lines = [
        "# toyworld quality report" + (" (QUICK: development sizes, not the report's)" if r["quick"] else ""),
        "",
        f"model `{r['model']}`, CLIP `{r['clip']}` (image statistics: {r['clip_stats']}), evaluator "
        f"`{r['evaluator']}`; {r['date']}; torch {r['versions']['torch']}, {r['torch_threads']} thread(s).",
        "",
        f"Sizes: {r['config']['samples_per_prompt']} samples per prompt, {r['config']['map_seeds']} map seeds, switch "
        f"steps every {r['config']['switch_every']}; {r.get('workers', 1)} worker process(es).",
        "",
        "| part | wall s | CPU s (all processes) |",
        "|---|---|---|",
        *[f"| {k} | {v:.0f} | {r['cpu_s'][k]:.0f} |" if k in r["cpu_s"] else f"| {k} | {v:.0f} | |"
          for k, v in r["timings_s"].items()],
        "",
        readme_section(r),
        "## Details",
        "",
    ]
    if "prompts" in parts:
        pp = pd.DataFrame(r["prompt_following"]["per_prompt"])
        lines += [
            "Prompt following, per prompt (accuracy of each factor the prompt says; mean evaluator P(target)):",
            "",
            "| prompt | factor | target | accuracy | P(target) |",
            "|---|---|---|---|---|",
            *[
                f"| {x.prompt} | {x.factor} | {x.target} | {_pct(x.accuracy)} | {x.target_prob:.2f} |"
                for x in pp.itertuples()
            ],
            "",
        ]
    if "map" in parts:
        lines += [
            "Map, product rule (k maximising P(target) x IoU): "
            + ", ".join(f"{x['pair']} k={x['product_k']}" for x in r["map"]["summary"]) + ".",
            "",
            map_runtime_text(r),
        ]
    diag = r.get("clip_zero_shot_openai_stats") if "clip" in parts else None
    if diag:
        lines.append(
            "CLIP zero-shot with OpenAI CLIP's image statistics instead (what `disentkit.losses.load_clip` uses for a "
            "folder without preprocessor_config.json): " + ", ".join(f"{k} {_pct(v)}" for k, v in diag.items()) + "."
        )
    return "\n".join(lines) + "\n"


# ---- running it ------------------------------------------------------------------------------------------------
def model_info(model: str) -> dict:
    """Which weights: the folder, the UNet file's time, and the model card's training lines (honest provenance)."""
    folder = toyworld_dir() / "pipeline" if model == "toyworld" else Path(model)
    info = {"folder": str(folder)}
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if unet.is_file():
        info["unet_mtime_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unet.stat().st_mtime))
        info["unet_sha256"] = hashlib.sha256(unet.read_bytes()).hexdigest()  # which weights, on any machine
    card = folder.parent / "README.md"
    if card.is_file():
        for line in card.read_text().splitlines():
            for part in ("unet", "text_encoder", "vae"):
                if line.startswith(f"| {part}"):
                    info[part] = f"{part}: " + line.split("|")[-2].strip()
    return info


def report_meta(model: str, clip_path, clip_stats: str, evaluator: str | None, quick: bool) -> dict:
    """What was measured with what: model, CLIP, evaluator, date, library versions."""
    import diffusers
    import transformers

    return {
        "quick": quick, "model": str(model), "model_info": model_info(str(model)), "clip": str(clip_path),
        "clip_stats": clip_stats, "evaluator": str(evaluator or "bundled"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
    }  # fmt: skip


def run_report(runner: Runner, clip: Clip, cfg: ReportConfig, out: Path, meta: dict,
               parts: tuple[str, ...] = PARTS) -> dict:  # fmt: skip
    """Measure the ``parts`` asked for, write OUT/{report.json, report.md, readme_section.md, *.csv, *.png}, return
    the report.

    Timings: wall seconds per part in ``timings_s``; CPU seconds in ``cpu_s`` (summed over worker processes; on a
    machine shared with other jobs the wall time grows with their load, the CPU time much less)."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown report part(s) {unknown}; the parts are {', '.join(PARTS)}")
    timings, cpu, measured = {}, {}, {}
    tables, figures = {}, {}

    if "speed" in parts:  # first, in this process, before the workers get busy
        t, c = time.perf_counter(), time.process_time()
        measured["speed"] = one_image_seconds(runner.pipe, cfg)
        timings["speed"], cpu["speed"] = time.perf_counter() - t, time.process_time() - c

    if "clip" in parts:
        t, c = time.perf_counter(), time.process_time()
        zero_shot = clip_zero_shot(clip, cfg.clip_scenes)
        # what the library's default loader would give (OpenAI statistics), to show whether the statistics matter
        openai = None
        if tuple(clip.mean) == TOY_CLIP_MEAN:
            other = replace(clip, mean=CLIP_MEAN, std=CLIP_STD)
            openai = dict(zip(*clip_zero_shot(other, cfg.clip_scenes)[["factor", "accuracy"]].to_numpy().T))
        timings["clip_zero_shot"], cpu["clip_zero_shot"] = time.perf_counter() - t, time.process_time() - c
        measured |= {"clip_zero_shot": zero_shot.to_dict("records"), "clip_zero_shot_openai_stats": openai}
        tables["clip_zero_shot.csv"] = zero_shot

    if "prompts" in parts:
        t, c = time.perf_counter(), runner.cpu_s
        per_prompt, per_factor, prompt_examples, generated = prompt_following(runner, cfg)
        timings["prompt_following"], cpu["prompt_following"] = time.perf_counter() - t, runner.cpu_s - c
        # The toy CLIP judged on what the model draws, not only on renders: its zero-shot answer against the
        # evaluator's on the same generated images.
        agreement = clip_agreement(clip, *generated)
        agreement["bar"] = CLIP_GENERATED_BAR
        agreement["passed"] = agreement["agreement"] >= agreement["bar"]
        measured["clip_on_generated"] = agreement.to_dict("records")
        tables["clip_on_generated.csv"] = agreement
        measured["prompt_following"] = {"per_factor": per_factor.to_dict("records"),
                                        "per_prompt": per_prompt.to_dict("records")}  # fmt: skip
        tables |= {"prompt_following.csv": per_factor, "prompt_following_per_prompt.csv": per_prompt}
        figures["prompt_examples.png"] = plotting.image_grid(
            prompt_examples, len(cfg.prompts), min(8, cfg.samples_per_prompt), row_labels=cfg.prompts,
            title="prompt following: the first seeds of each prompt",
        )  # fmt: skip

    if "map" in parts:
        t, c = time.perf_counter(), runner.cpu_s
        runs, map_examples, rows = disentanglement_runs(runner, cfg)
        timings["map"], cpu["map"] = time.perf_counter() - t, runner.cpu_s - c
        table = map_table(runs)
        summary = best_switch_steps(table, cfg.steps)
        measured["map"] = {
            "pairs": [
                {"name": p.name, "c0": p.c0, "c1": p.c1, "factor": p.factor, "target": p.target} for p in cfg.pairs
            ],
            "rules": {"style_reached": STYLE_REACHED, "content_kept": CONTENT_KEPT},
            "summary": summary.to_dict("records"),
            "table": table.assign(pair=table["pair"].astype(str)).to_dict("records"),
            "images": len(runs), **rows, "full_map_unet_rows": full_map_rows(cfg),
        }
        windows = switch_windows(runs, cfg.steps)
        measured["map"]["windows"] = windows.to_dict("records")
        measured["map"]["window_rules"] = {"content_kept": IOU_BAR, "reached_on_lacking_seeds": REACH_BAR,
                                           "consecutive_steps": WINDOW_STEPS, "seeds": WINDOW_SEEDS}  # fmt: skip
        tables |= {"map.csv": table, "map_runs.csv": runs, "map_summary.csv": summary, "map_windows.csv": windows}
        figures |= map_figures(table, map_examples, cfg)

    config = {k: v for k, v in asdict(cfg).items() if k != "pairs"} | {"switch_steps": cfg.switch_steps}
    report = {
        **meta,
        "config": config,
        "torch_threads": torch.get_num_threads(),
        "bars": {"prompt_following": PROMPT_BARS, "prompt_following_each_value": VALUE_BARS, "clip_zero_shot": CLIP_BAR,
                 "clip_on_generated": CLIP_GENERATED_BAR, "seconds_per_image": SECONDS_BAR},
        "parts": [p for p in PARTS if p in parts],
        **measured,
        "timings_s": timings | {"total": sum(timings.values())},
        "cpu_s": cpu,
    }
    report = _plain(report)  # JSON types only: numpy scalars become Python ones, NaN becomes None

    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        plotting.save_table(df, out / name)
    for name, fig in figures.items():
        plotting.save_figure(fig, out / name)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", report_markdown(report))
    write_text_atomic(out / "readme_section.md", readme_section(report))
    return report


def report_parts(r: dict) -> list[str]:
    """The parts a report holds (reports written before --parts hold all of them)."""
    return r.get("parts", list(PARTS))


def merge_reports(reports: list[dict]) -> dict:
    """One report from several that measured different parts of the same model (say the sampling parts on a GPU,
    the speed bar on this CPU): each part comes from the last report that measured it, and ``sources`` says where
    and when each part was measured. Reports of different weights (by the UNet file's hash), or with different
    step counts or guidance, refuse to merge."""
    models = {r["model_info"].get("unet_sha256") or r["model"] for r in reports}
    if len(models) > 1:
        raise ValueError("these reports measured different models (UNet hashes differ); merge reports of one model")
    settings = {(r["config"]["steps"], r["config"]["guidance"]) for r in reports}
    if len(settings) > 1:
        raise ValueError(f"these reports sampled with different (steps, guidance): {sorted(settings)}")
    merged = json.loads(json.dumps(reports[0]))
    merged.update(sources={}, timings_s={}, cpu_s={}, quick=any(r["quick"] for r in reports))
    for r in reports:
        for part in report_parts(r):
            for key in PART_KEYS[part]:
                merged[key] = r.get(key)
            timing = TIMING_KEYS[part]
            for field_ in ("timings_s", "cpu_s"):
                if timing in r.get(field_, {}):
                    merged[field_][timing] = r[field_][timing]
            if part != "speed":  # the sampling sizes; the speed part carries its own (steps, repeats)
                merged["config"] = merged["config"] | r["config"]
            merged["sources"][part] = (r.get("sources") or {}).get(part) or {
                "date": r["date"], "device": r.get("device", "cpu"), "torch_threads": r["torch_threads"],
                "workers": r.get("workers", 1)}  # fmt: skip
    merged["parts"] = [p for p in PARTS if p in merged["sources"]]
    merged["timings_s"]["total"] = sum(merged["timings_s"].values())
    for part, key in (("map", "workers"), ("speed", "torch_threads")):  # what the map and speed texts read
        if part in merged["sources"]:
            merged[key] = merged["sources"][part][key]
    if "map" in merged["sources"]:
        merged["device"] = merged["sources"]["map"]["device"]
    return merged


def _plain(x):
    """``x`` with numpy scalars made Python ones and NaN made None, so report.json is strict JSON."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and np.isnan(x):
        return None
    return x


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="8 samples per prompt, 4 map seeds, switch steps every 5")
    p.add_argument("--model", default="toyworld", help="'toyworld' (bundled) or a diffusers pipeline folder")
    p.add_argument("--clip", default=None, help="CLIP folder (default: the 'clip' folder beside the pipeline)")
    p.add_argument("--evaluator", default=None, help="evaluator folder (default: the bundled one)")
    p.add_argument("--out", default=None, help="output folder (default outputs/toyworld_report[_quick])")
    p.add_argument("--workers", type=int, default=2, help="sampling processes (one torch thread each by default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--max-batch", type=int, default=256, help="runs per UNet call")
    p.add_argument("--no-compile", action="store_true", help="time the image without torch.compile only")
    # Smaller sizes for a crowded machine; the report prints the sizes it used.
    p.add_argument("--samples", type=int, default=None, help="samples per prompt (default 100; quick 8)")
    p.add_argument("--seeds", type=int, default=None, help="seeds of the map (default 16; quick 4)")
    p.add_argument("--switch-every", type=int, default=None, help="map switch steps 0, e, 2e, .. (default 1; quick 5)")
    p.add_argument("--device", default="cpu",
                   help="where the model samples (cuda: one process, big batches); the speed bar is about the CPU")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to measure (default: all)")
    p.add_argument("--render", nargs="+", default=None, metavar="REPORT_JSON",
                   help="measure nothing: rewrite report.md and readme_section.md beside an existing report.json; "
                        "with several, merge them (each part from the last that has it) into --out")
    args = p.parse_args(argv)

    if args.render:  # the words change more often than the numbers; no need to sample again for them
        paths = [Path(x) for x in args.render]
        reports = [json.loads(path.read_text()) for path in paths]
        report = reports[0] if len(reports) == 1 else merge_reports(reports)
        folder = paths[0].parent if len(reports) == 1 else Path(args.out or "outputs/toyworld_report")
        folder.mkdir(parents=True, exist_ok=True)
        if len(reports) > 1:
            write_json_atomic(folder / "report.json", report)
        write_text_atomic(folder / "report.md", report_markdown(report))
        write_text_atomic(folder / "readme_section.md", readme_section(report))
        print(report_markdown(report))
        return report
    if args.device != "cpu" and "speed" in args.parts:
        p.error(f"the speed bar is about this CPU: measure it with --parts speed on the CPU, and the other parts "
                f"with --device {args.device} --parts clip prompts map; --render A.json B.json --out DIR merges them")

    torch.set_num_threads(args.threads)
    cfg = ReportConfig.quick() if args.quick else ReportConfig()
    overrides = {"samples_per_prompt": args.samples, "map_seeds": args.seeds, "switch_every": args.switch_every}
    cfg = replace(cfg, max_batch=args.max_batch, speed_compile=not args.no_compile,
                  **{k: v for k, v in overrides.items() if v is not None})
    clip_path = args.clip or (toyworld_dir() / "clip" if args.model == "toyworld" else Path(args.model).parent / "clip")
    out = Path(args.out or ("outputs/toyworld_report_quick" if args.quick else "outputs/toyworld_report"))

    pipe = dk.load_pipeline(args.model, device=args.device)
    clip, stats = load_report_clip(clip_path)
    evaluator = Evaluator.load(args.evaluator, device=args.device)
    # On a GPU one process with big batches is fastest; worker processes are for the CPU's cores.
    workers = args.workers if args.device == "cpu" else 1
    meta = report_meta(args.model, clip_path, stats, args.evaluator, args.quick) | {"workers": workers,
                                                                                     "device": args.device}
    runner = Runner(pipe, evaluator, workers, args.model, args.evaluator, args.threads)
    try:
        report = run_report(runner, clip, cfg, out, meta, tuple(args.parts))
    finally:
        runner.close()
    print(report_markdown(report))
    print(f"wrote {out}/report.md, report.json, readme_section.md, *.csv, *.png")
    return report


if __name__ == "__main__":
    main()
