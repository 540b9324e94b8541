"""How far can the content and style metrics be trusted? Checked against the toyworld evaluator's ground truth.

    python benchmarks/metrics_report.py                    # 10 pairs x 51 switch steps x 16 seeds x 50 steps
    python benchmarks/metrics_report.py --processes 2      # the same map split over 2 processes (accelerate)
    python benchmarks/metrics_report.py --quick            # 3 pairs, every 5th switch step, 4 seeds (minutes)
    python benchmarks/metrics_report.py --speed            # also images/s on 1 and 2 CPU processes (else kept)

The map (:func:`disentkit.disentanglement_map`) of the ten attribute pairs of ``benchmarks/optimize_report.py``
(every style family: colour, texture, expression, background, rendering) is scored by every offline proxy and by the
evaluator. Per pair we report each proxy's Spearman rank correlation with the ground truth over all its (switch,
seed) images: style proxies against P(target), content proxies (distances, negated) against the object-mask IoU
with the pure-c0 image; and whether the proxies' window (:func:`disentkit.find_windows`, the same rule for both)
is within 2 switch steps of the evaluator's. The recommended pair is the (content, style) pair of proxies that
meets the bar (Spearman >= 0.7 for both, windows matched) on the most pairs.

The map is resumable (``--map-dir``, default outputs/benchmarks/metrics_map): run it again after an interruption.
Writes docs/metrics.md, docs/metrics_report.json and docs/metrics_curves.csv (the map averaged over seeds; the
full map stays in the map folder); ``--quick`` writes them under outputs/benchmarks/ instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import disentkit as dk  # noqa: E402
from disentkit.files import write_json_atomic, write_text_atomic  # noqa: E402
from disentkit.map import Pair, find_windows, window_text, windows_match  # noqa: E402
from disentkit.metrics import METRICS  # noqa: E402
from disentkit.reports.learned_schedules import PAIRS  # noqa: E402  (the ten attribute pairs of every report)

PROXIES = ["clip_prob", "clip_dir", "clip_text", "struct_clip", "pixel", "latent"]  # every metric that runs offline
STYLE = [m for m in PROXIES if METRICS[m].kind == "style"]
CONTENT = [m for m in PROXIES if METRICS[m].kind == "content"]
GT_STYLE, GT_CONTENT = "evaluator_target_prob", "evaluator_mask_iou"
BAR = 0.7  # Spearman a recommended metric should reach
TOLERANCE = 2  # switch steps by which the proxies' window may differ from the ground truth's
GOAL_PAIRS = 8  # of 10
RENDERED = 32  # rendered scenes per pair for the check of clip_prob's alternatives


def settings(quick: bool) -> dict:
    if quick:
        return dict(pairs=PAIRS[:3], seeds=list(range(4)), switches=list(range(0, 51, 5)), steps=50)
    return dict(pairs=PAIRS, seeds=list(range(16)), switches=list(range(51)), steps=50)


def run_map(cfg: dict, map_dir: Path, progress: bool = True) -> pd.DataFrame:
    from disentkit.toyworld.evaluator import Evaluator

    torch.set_num_threads(1)  # the toy model gains nothing from threads on a shared CPU (tests/conftest.py)
    pipe = dk.load_pipeline("toyworld")
    pairs = [Pair(c0, c1, target=target) for c0, c1, target in cfg["pairs"]]
    return dk.disentanglement_map(pipe, pairs, cfg["seeds"], cfg["switches"], metrics=PROXIES,
                                  evaluator=Evaluator.load(), steps=cfg["steps"], out=map_dir, progress=progress,
                                  strip_seeds=len(cfg["seeds"]))  # fmt: skip  (every image kept as PNG strips)


def map_wall_s(map_dir: Path) -> float | None:
    """How long the map took: from its manifest (written first) to its last part (a resumed map counts its pauses)."""
    parts = list((map_dir / "parts").glob("*.csv"))
    if not parts or not (map_dir / "map.json").is_file():
        return None
    return max(p.stat().st_mtime for p in parts) - (map_dir / "map.json").stat().st_mtime


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Rank correlation (ties get their mean rank); NaN when either side is constant."""
    ra, rb = a.rank(), b.rank()
    if ra.nunique() < 2 or rb.nunique() < 2:
        return float("nan")
    return float(ra.corr(rb))


def analyse(df: pd.DataFrame) -> dict:
    per_pair = []
    gt = find_windows(df, content=GT_CONTENT, style=GT_STYLE)
    windows = {(c, s): find_windows(df, content=c, style=s) for c in CONTENT for s in STYLE}
    matches = {k: windows_match(w, gt, TOLERANCE) for k, w in windows.items()}
    for (p, name), part in df.groupby(["pair_index", "pair"]):
        row = {"pair_index": p, "pair": name, "images": len(part)}
        for m in STYLE:
            row[m] = spearman(part[m], part[GT_STYLE])
        for m in CONTENT:
            row[m] = spearman(-part[m], part[GT_CONTENT])  # a distance: lower should mean a higher IoU
        g = gt.set_index("pair_index").loc[p]
        row["gt_window"] = window_text(g)
        per_pair.append(row)
    table = pd.DataFrame(per_pair)

    combos = []
    for (c, s), w in windows.items():
        ok_style, ok_content = table[s] >= BAR, table[c] >= BAR
        match = matches[(c, s)].reindex(table["pair_index"]).fillna(False).to_numpy(bool)
        combos.append({"content": c, "style": s, "style_pairs": int(ok_style.sum()), "content_pairs": int(ok_content.sum()),
                       "windows_matched": int(match.sum()), "all_three": int((ok_style & ok_content & match).sum()),
                       "style_median": float(table[s].median()), "content_median": float(table[c].median())})  # fmt: skip
    combos = pd.DataFrame(combos).sort_values(["all_three", "windows_matched", "style_median", "content_median"],
                                              ascending=False, ignore_index=True)  # fmt: skip
    best = combos.iloc[0]
    w = windows[(best["content"], best["style"])].set_index("pair_index")
    table["proxy_window"] = [window_text(w.loc[p]) for p in table["pair_index"]]
    chosen = matches[(best["content"], best["style"])]
    table["window_match"] = chosen.reindex(table["pair_index"]).fillna(False).to_numpy(bool)
    return {"per_pair": table, "combos": combos, "best": best.to_dict(), "gt_windows": gt}


def short(name: str) -> str:
    """A pair's label for the tables: "a photo of a square -> a sketch of a square" -> "square: sketch"."""
    if " -> " not in name:
        return name
    c0, c1 = name.split(" -> ")
    added = [w for w in c1.split() if w not in c0.split()]
    return f"{c0.split()[-1]}: {' '.join(added)}" if added else name


def rendered_check(cfg: dict, n: int = 32) -> pd.DataFrame:
    """How sure the toy CLIP is of c1 on rendered scenes that truly show the target: mean P(c1) against the
    attribute's other values (``metrics.alternatives``, the map's choice) and with c0 added to them. c0 describes
    such an image too, so it takes a share whatever the image shows."""
    from dataclasses import replace

    from disentkit.metrics import alternatives, target_probability
    from disentkit.toyworld.scenes import render_batch, scene_for_caption

    clip = dk.load_clip(None)
    rng = np.random.default_rng(0)
    rows = []
    for c0, c1, target in cfg["pairs"]:
        scenes = [replace(scene_for_caption(c0, rng), **{target[0]: target[1]}) for _ in range(n)]
        pixels = torch.tensor(render_batch(scenes)[0]).permute(0, 3, 1, 2).float() / 255  # (n, 3, 64, 64)
        others = alternatives(c0, c1, target)
        with_c0 = list(dict.fromkeys([*others, c0]))
        rows.append({"pair": Pair(c0, c1).name, "alternatives": len(others), "c0_is_other": c0 in others,
                     "p_c1": float(target_probability(clip, pixels, c1, others).mean()),
                     "p_c1_with_c0": float(target_probability(clip, pixels, c1, with_c0).mean())})  # fmt: skip
    return pd.DataFrame(rows)


# ---- speed -------------------------------------------------------------------------------------------------------------
def measure_speed(tmp: Path) -> dict:
    """Images/s of `disentkit map` on the toy model (1 pair, 6 seeds, 51 switch steps, 50 steps) with 1 and 2 CPU
    processes, each timed from the command's start (model loading included) to its end."""
    tmp.mkdir(parents=True, exist_ok=True)
    pairs = tmp / "pairs.csv"
    pd.DataFrame({"c0": ["a photo of a face"], "c1": ["a photo of a face, smiling"]}).to_csv(pairs, index=False)
    base = ["-m", "disentkit", "map", "--model", "toyworld", "--pairs", str(pairs), "--seeds", "0-5", "--switch",
            "0-50", "--quiet", "--no-figures"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = {"images": 6 * 51}
    for n in (1, 2):
        folder = tmp / f"speed{n}"
        shutil.rmtree(folder, ignore_errors=True)  # a fresh map: an old one would only be resumed, i.e. merged
        cmd = [sys.executable, *base, "--out", str(folder)]
        if n > 1:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *base, "--out",
                   str(folder)]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        out[f"wall_s_{n}"] = time.perf_counter() - t0
        out[f"images_per_s_{n}"] = out["images"] / out[f"wall_s_{n}"]
    out["cpu_cores"] = os.cpu_count()
    out["load_average_after"] = os.getloadavg()[0]  # other work on the machine: what a second process competes with
    out["sd_estimate"] = sd_estimate()
    return out


def measure_sd(device: str, max_batch: int | None = None) -> dict:
    """Images/s of the map on the SD v1.4 architecture with random weights (float16, 512 px) on ``device``: one seed
    of one pair over all 51 switch steps, 50 steps, guidance 7.5, timed after a warm-up seed (CUDA synchronised).
    Sampling and the two cheap content metrics only; the CLIP metrics add one ViT-B/32 pass per image."""
    from disentkit.testing import sd_architecture

    pipe = sd_architecture("sd1", device=device, dtype=torch.float16 if device.startswith("cuda") else torch.float32)
    pairs = [("A photo of person", "A photo of person, smiling")]
    run = lambda seed: dk.disentanglement_map(pipe, pairs, [seed], range(51), metrics=["pixel", "latent"],  # noqa: E731
                                              progress=False, evaluator=False, max_batch=max_batch)  # fmt: skip
    run(0)  # warm-up: kernels, allocator
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    run(1)
    sync()
    dt = time.perf_counter() - t0
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return {"device": name, "images": 51, "seconds": dt, "images_per_s": 51 / dt,
            "full_map_hours_1": 15 * 16 * dt / 3600, "full_map_hours_8": 15 * 16 * dt / 3600 / 8}  # fmt: skip


def sd_estimate() -> dict:
    """The full SD v1.4 map (15 pairs x 51 switch steps x 16 seeds, 50 steps, guidance 7.5, 512 px) on 1 and 8 GPUs,
    estimated from the kept H100 measurement of one optimisation iteration of the SD v1.4 architecture
    (docs/results/gpu_2026-11-26*/bench_results.json: 50 steps of forward + checkpointed backward, batch 1).
    A forward-and-backward step with per-step checkpointing costs about 3 forward passes (forward, the recomputed
    forward, a backward of about twice a forward) -> one guided UNet call (2 rows) ~ iteration / (50 x 4) s, an
    upper bound for the inference map, which batches its 51 branches per call (larger batches are cheaper per row
    on an H100)."""
    from disentkit.sweeps import count_branch_steps

    found = []
    for folder in sorted((ROOT / "benchmarks" / "results").glob("gpu_*")):
        path = folder / "bench_results.json"
        if path.is_file():
            fig = json.loads(path.read_text())["figures"].get("4_real_scale_gpu", {}).get("sd14_512")
            if fig:
                found.append((folder.name, fig["iteration_s"], json.loads(path.read_text())["meta"]["device"]))
    if not found:
        return {}
    name, iteration_s, device = min(found, key=lambda f: f[1])
    per_call = iteration_s / (50 * 4)  # one guided call, 2 UNet rows, with the decode's share folded in
    schedules = [dk.MixSchedule.switch(50, k) for k in range(51)]
    calls_per_seed = count_branch_steps(schedules, "ddim", 50)  # branch-steps of one seed's prefix-shared sweep
    total_calls = 15 * 16 * calls_per_seed
    one_gpu_h = total_calls * per_call / 3600
    return {"source": f"docs/results/{name}/bench_results.json", "device": device, "iteration_s": iteration_s,
            "guided_call_s": per_call, "branch_steps_per_seed": calls_per_seed, "images": 15 * 51 * 16,
            "unshared_calls": 15 * 16 * 51 * 50, "guided_calls": total_calls, "hours_1_gpu": one_gpu_h,
            "hours_8_gpus": one_gpu_h / 8}  # 240 (pair, seed) units split evenly: 30 per GPU  # fmt: skip


# ---- the report -----------------------------------------------------------------------------------------------------
def render(cfg: dict, df: pd.DataFrame, result: dict, speed: dict | None, wall_s: float | None,
           rendered: pd.DataFrame | None = None) -> str:
    t, combos, best = result["per_pair"], result["combos"], result["best"]
    n = len(t)
    lines = [
        "# Content and style metrics against toyworld's ground truth",
        "",
        f"Generated by `benchmarks/metrics_report.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): the "
        f"bundled toyworld model, {n} attribute pairs x {len(cfg['switches'])} switch steps x {len(cfg['seeds'])} seeds "
        f"({len(df)} images), {cfg['steps']} DDIM steps, guidance 7.5"
        + (f"; the map took {wall_s / 60:.0f} min on this 2-core CPU, shared with other work "
           f"({len(df) / wall_s:.1f} images/s, evaluator and metrics included)." if wall_s else "."),
        "",
        "Ground truth: the toyworld evaluator (a supervised CNN, independent of the toy CLIP the proxies use): style = "
        "P(target attribute), content = object-mask IoU with the pure-c0 image of the same seed. Each proxy's Spearman "
        "rank correlation with it over all (switch, seed) images of a pair (content distances negated, so +1 is "
        f"perfect for every column). Windows: `dk.find_windows` with the same rule on both sides (each curve, seeds "
        "averaged, rescaled per pair to 0 at pure c0 and 1 at pure c1; style reached where >= 0.5, content kept where "
        f"the change <= 0.5); matched = the same start and end within {TOLERANCE} steps, or no window on both.",
        "",
        f"## Recommended default: content `{best['content']}`, style `{best['style']}`",
        "",
        f"Spearman >= {BAR} on {best['style_pairs']}/{n} pairs for style and {best['content_pairs']}/{n} for content; "
        f"windows matched on {best['windows_matched']}/{n}; all three on {best['all_three']}/{n}. "
        + ("The goal (>= 8 of 10 pairs for each) is met." if min(best["style_pairs"], best["content_pairs"],
           best["windows_matched"]) >= GOAL_PAIRS * n / 10 else "The goal (>= 8 of 10 pairs for each) is **not** met; "
           "see where the proxies fail below."),
        "",
        "## Spearman with the evaluator, per pair",
        "",
        "| pair | " + " | ".join(STYLE) + " | " + " | ".join(CONTENT) + " | evaluator window | proxy window | match |",
        "|---|" + "---|" * (len(STYLE) + len(CONTENT) + 3),
    ]  # fmt: skip
    for _, r in t.iterrows():
        vals = [f"{r[m]:.2f}" if np.isfinite(r[m]) else "n/a" for m in STYLE + CONTENT]
        lines.append(f"| {short(r['pair'])} | " + " | ".join(vals) + f" | {r['gt_window']} | {r['proxy_window']} | "
                     f"{'yes' if r['window_match'] else 'no'} |")  # fmt: skip
    med = [f"{t[m].median():.2f}" for m in STYLE + CONTENT]
    cnt = [f"{int((t[m] >= BAR).sum())}/{n}" for m in STYLE + CONTENT]
    lines += [f"| **median** | " + " | ".join(med) + " | | | |", f"| **>= {BAR}** | " + " | ".join(cnt) + " | | | |", ""]
    lines += ["(proxy window: that of the recommended pair)", "", "## Every (content, style) pair of proxies", "",
              "| content | style | style >= 0.7 | content >= 0.7 | windows matched | all three |", "|---|---|---|---|---|---|"]
    for _, r in combos.iterrows():
        lines.append(f"| {r['content']} | {r['style']} | {r['style_pairs']}/{n} | {r['content_pairs']}/{n} | "
                     f"{r['windows_matched']}/{n} | {r['all_three']}/{n} |")  # fmt: skip
    lines += ["", "## Where the proxies fail", ""] + by_family(t, cfg, best["style"], best["content"]) + [""]
    lines += failures(t)
    if rendered is not None:
        added = rendered[~rendered["c0_is_other"]]  # where c0 is not itself the attribute's other value (rendering)
        lines += ["", "`clip_prob` weighs c1 against the attribute's other values, not c0: on rendered scenes that show "
                  f"the target ({RENDERED} per pair), the toy CLIP's mean P(c1) is {added['p_c1'].min():.2f}-"
                  f"{added['p_c1'].max():.2f} that way and {added['p_c1_with_c0'].min():.2f}-"
                  f"{added['p_c1_with_c0'].max():.2f} with c0 added to the alternatives (c0 describes those images "
                  "too), on the pairs whose c0 is not the attribute's other value. So where `clip_prob` is low on "
                  "generated images, it is the CLIP's judgement of those images.", "",
                  "| pair | P(c1) | P(c1) with c0 |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {short(r.pair)} | {r.p_c1:.3f} | {r.p_c1_with_c0:.3f} |" for r in rendered.itertuples()]
    lines += usage()
    if speed:
        lines += speed_section(speed)
    return "\n".join(lines) + "\n"


def failures(t: pd.DataFrame) -> list[str]:
    """One line per proxy: the pairs where its Spearman is below the bar (computed, not written by hand)."""
    out = []
    for m in STYLE + CONTENT:
        bad = t[~(t[m] >= BAR)]
        if len(bad):
            what = ", ".join(f"{short(p)} ({v:.2f})" if np.isfinite(v) else f"{short(p)} (n/a)"
                             for p, v in zip(bad["pair"], bad[m]))  # fmt: skip
            out.append(f"- `{m}` ({METRICS[m].kind}) below {BAR} on {len(bad)}/{len(t)}: {what}.")
        else:
            out.append(f"- `{m}` ({METRICS[m].kind}) >= {BAR} on every pair.")
    return out


def by_family(t: pd.DataFrame, cfg: dict, best_style: str, best_content: str) -> list[str]:
    """Median Spearman per style family (the factor the pair changes): local edits (colour, texture, expression)
    against whole-image ones (background, rendering)."""
    family = {f"{c1}": target[0] for _, c1, target in cfg["pairs"]}
    names = {p.name: family[p.c1] for p in (Pair(c0, c1, target=tg) for c0, c1, tg in cfg["pairs"])}
    t = t.assign(family=t["pair"].map(names))
    med = t.groupby("family", sort=False)[STYLE + CONTENT].median()
    lines = []
    for m in (best_style, best_content):
        good = [f for f in med.index if med.loc[f, m] >= BAR]
        bad = [f for f in med.index if med.loc[f, m] < BAR]
        where = f" and fails on the {', '.join(bad)} pairs" if bad else ", every family"
        lines.append(f"- `{m}` follows the evaluator (median Spearman >= {BAR}) on the {', '.join(good) or 'no'} "
                     f"pairs{where}.")  # fmt: skip
    lines += ["", "Median Spearman by the factor the pair changes:", "",
             "| family | " + " | ".join(STYLE + CONTENT) + " |", "|---|" + "---|" * len(STYLE + CONTENT)]
    lines += [f"| {f} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for f, row in zip(med.index, med.to_numpy())]
    return lines


def usage() -> list[str]:
    return [
        "", "## Using the metrics", "",
        "```python",
        "import disentkit as dk",
        "from disentkit import metrics",
        "clip = dk.load_clip(\"openai/clip-vit-base-patch32\")                 # any CLIPModel folder or hub id",
        "p = metrics.target_probability(clip, images, c1, metrics.alternatives(c0, c1))  # (R,) in [0, 1]",
        "d = metrics.structure_distance(clip, images, reference)                  # (R,) in [0, 2], 0 = same layout",
        "df = dk.disentanglement_map(pipe, pairs, seeds=range(16), switch_steps=range(51), out=\"map/\")",
        "windows = dk.find_windows(df)                                           # the recommended pair by default",
        "```", "",
        "```",
        "disentkit map --model CompVis/stable-diffusion-v1-4 --device cuda --half --pairs sd-paper --seeds 0-15 \\",
        "    --switch 0-50 --out map/ [--clip FOLDER] [--metrics clip_prob,struct_clip,...] [--backbone DINO_FOLDER]",
        "accelerate launch --num_processes 8 -m disentkit map ...                # one GPU per process, same CSV",
        "```", "",
        "Metrics (`disentkit.metrics.METRICS`): " + "; ".join(
            f"`{m.name}` ({m.kind}, higher = {m.higher_is}, range {m.range[0]:g}..{m.range[1]:g}): {m.description}"
            for m in METRICS.values()) + ".",
        "On models other than toyworld there is no ground truth: the numbers above are how far the same proxies "
        "could be trusted on the toy world, where the truth is known, not a guarantee for SD.",
    ]  # fmt: skip


def speed_section(s: dict) -> list[str]:
    lines = ["", "## Speed", ""]
    m = s.get("sd_measured")
    if m:
        lines += [f"Measured on {m['device']}: the SD v1.4 architecture (random weights, float16, 512 px), one seed x 51 "
                  f"switch steps in {m['seconds']:.1f} s = {m['images_per_s']:.2f} images/s; the full map (15 pairs x "
                  f"16 seeds) at that rate: {m['full_map_hours_1']:.1f} h on 1 GPU, {m['full_map_hours_8'] * 60:.0f} min "
                  "on 8.", ""]  # fmt: skip
    if "images" not in s:
        return lines
    lines += [
             f"`disentkit map` on the toy model ({s['images']} images: 1 pair x 6 seeds x 51 switch steps, 50 steps; "
             f"wall time from the command's start, model loading included; {s['cpu_cores']} CPU cores shared with "
             f"other work, load average {s.get('load_average_after', float('nan')):.1f} at the end, so a second "
             "process finds no idle core here; the (pair, seed) units are split evenly between the processes):", "",
             "| processes | wall (s) | images/s |", "|---|---|---|"]  # fmt: skip
    for n in (1, 2):
        lines.append(f"| {n} | {s[f'wall_s_{n}']:.1f} | {s[f'images_per_s_{n}']:.2f} |")
    e = s.get("sd_estimate")
    if e:
        lines += ["", "**An estimate, not a measurement**" + ("" if m else " (no GPU was measured for this report)")
                  + ": from the kept "
                  f"{e['device']} time of one SD v1.4 optimisation iteration ({e['iteration_s']:.1f} s for 50 steps of "
                  f"forward and checkpointed backward, `{e['source']}`), one guided UNet call costs at most "
                  f"~{e['guided_call_s'] * 1000:.0f} ms. The full SD map ({e['images']} images: 15 pairs x 51 switch steps "
                  f"x 16 seeds) needs {e['guided_calls']:,} guided calls with prefix sharing ({e['branch_steps_per_seed']} "
                  f"per seed instead of {51 * 50}): about **{e['hours_1_gpu']:.1f} h on 1 GPU** and "
                  f"**{e['hours_8_gpus'] * 60:.0f} min on 8** (240 (pair, seed) units, 30 per GPU), before the metrics "
                  "(CLIP ViT-B/32 on 12k images: a minute). Batching the 51 branches of a seed into one call should be "
                  "faster per row than this batch-1 figure."]  # fmt: skip
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--map-dir", default=None, help="resumable map folder (default outputs/benchmarks/metrics_map[_quick])")
    ap.add_argument("--processes", type=int, default=1, help="split the map over this many processes (accelerate)")
    ap.add_argument("--map-only", action="store_true", help="compute the map and stop (what each process runs)")
    ap.add_argument("--speed", action="store_true", help="also measure images/s on 1 and 2 CPU processes")
    ap.add_argument("--out", default=None, help="report folder (default docs/, --quick: outputs/benchmarks/)")
    ap.add_argument("--sd-device", default=None, help="also time the map on the SD v1.4 architecture (random "
                    "weights, float16) on this device, e.g. cuda")
    args = ap.parse_args(argv)
    cfg = settings(args.quick)
    map_dir = Path(args.map_dir or ROOT / "outputs" / "benchmarks" / ("metrics_map_quick" if args.quick else "metrics_map"))
    if not (dk.pipeline.toyworld_dir() / "pipeline" / "model_index.json").is_file():
        print("toyworld weights are absent; nothing to measure.")
        return 0
    t0 = time.perf_counter()
    if args.map_only:
        run_map(cfg, map_dir, progress=int(os.environ.get("RANK", "0")) == 0)
        return 0
    if args.processes > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(args.processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", __file__, "--map-only",
               "--map-dir", str(map_dir), *(["--quick"] if args.quick else [])]  # fmt: skip
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    df = run_map(cfg, map_dir)  # with every part on disk this only merges them
    wall = map_wall_s(map_dir) or time.perf_counter() - t0
    result = analyse(df)
    out = Path(args.out or (ROOT / "outputs" / "benchmarks" if args.quick else ROOT / "docs"))
    name = "metrics_quick" if args.quick else "metrics"
    kept = out / f"{name}_report.json"  # without --speed, the last measurement is kept
    speed = measure_speed(map_dir.parent / "metrics_speed") if args.speed else (
        json.loads(kept.read_text()).get("speed") if kept.is_file() else None)
    if args.sd_device:
        speed = {**(speed or {}), "sd_measured": measure_sd(args.sd_device)}
    rendered = rendered_check(cfg, RENDERED)
    write_text_atomic(out / f"{name}.md", render(cfg, df, result, speed, wall, rendered))
    write_json_atomic(out / f"{name}_report.json", {
        "settings": {"pairs": [list(p[:2]) + [list(p[2])] for p in cfg["pairs"]], "seeds": cfg["seeds"],
                     "switches": cfg["switches"], "steps": cfg["steps"]},
        "per_pair": result["per_pair"].to_dict("records"), "combos": result["combos"].to_dict("records"),
        "recommended": {k: (v.item() if hasattr(v, "item") else v) for k, v in result["best"].items()},
        "gt_windows": json.loads(result["gt_windows"].to_json(orient="records")), "speed": speed, "wall_s": wall,
        "rendered_clip_prob": rendered.to_dict("records"),
    })  # fmt: skip
    curves = df.groupby(["pair_index", "pair", "switch"])[PROXIES + [GT_STYLE, GT_CONTENT]].mean().reset_index()
    write_text_atomic(out / f"{name}_curves.csv", curves.to_csv(index=False, float_format="%.5g"))  # seeds averaged
    print((out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
