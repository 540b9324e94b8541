"""The disentanglement map: one row per (pair, seed, switch) scored against that seed's pure-c0 image, the same
numbers as sampling each schedule on its own, a resume that recomputes only what is missing (and nothing half-written
after an interruption), windows found where both conditions hold, pairs files checked, the command's errors before
the model loads, and a two-process run whose merged CSV equals the single-process one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import disentkit as dk
from disentkit import map as dmap
from disentkit.cli import main
from disentkit.errors import MapMismatchError, ModelNotFoundError, PairsFileError
from disentkit.losses import save_tiny_clip, tiny_clip
from disentkit.metrics import pixel_distance

PAIRS = [("a photo of a face", "a photo of a face, smiling"), ("a photo of a circle", "a photo of a circle, red")]
STEPS = 4
FAST = ["clip_prob", "clip_dir", "struct_clip", "pixel", "latent"]


@pytest.fixture(scope="module")
def clip():
    return tiny_clip(seed=0)


def run(pipe, clip, out=None, seeds=(0, 1), **kw):
    return dk.disentanglement_map(pipe, PAIRS, list(seeds), range(STEPS + 1), metrics=FAST, steps=STEPS, out=out,
                                  progress=False, clip=clip, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def reference_map(sd1_pipe, clip):
    return run(sd1_pipe, clip)


def test_one_row_per_image_and_the_pure_c0_image_is_the_reference(reference_map):
    df = reference_map
    assert len(df) == 2 * 2 * (STEPS + 1)
    assert list(df.columns[:6]) == ["pair", "pair_index", "c0", "c1", "seed", "switch"]
    assert set(FAST) <= set(df.columns) and not df[FAST].isna().any().any()
    assert list(df["pair"].unique()) == ["face: smiling", "circle: red"]
    pure_c0 = df[df["switch"] == STEPS]
    assert (pure_c0[["pixel", "latent", "struct_clip", "clip_dir"]] == 0).all().all()
    assert (df[df["switch"] == 0]["pixel"] > 0).all()  # pure c1 differs from pure c0
    assert "evaluator_mask_iou" not in df  # not the toyworld model: no evaluator unless given


def test_numbers_equal_sampling_each_schedule_on_its_own(sd1_pipe, reference_map):
    p, seed = 1, 1
    cond = dk.encode(sd1_pipe, *PAIRS[p])
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed, steps=STEPS)
    ref = dk.sample(sd1_pipe, cond, dk.MixSchedule.constant(STEPS, 0.0), tape, progress=False).pixels
    rows = reference_map[(reference_map["pair_index"] == p) & (reference_map["seed"] == seed)]
    for k in (0, 2):
        img = dk.sample(sd1_pipe, cond, dk.MixSchedule.switch(STEPS, k, 0.0, 1.0), tape, progress=False).pixels
        got = rows.loc[rows["switch"] == k, "pixel"].item()
        assert abs(got - float(pixel_distance(img, ref))) < 1e-4


def test_resume_recomputes_only_the_missing_units(sd1_pipe, clip, reference_map, tmp_path, monkeypatch):
    out = tmp_path / "map"
    first = run(sd1_pipe, clip, out)
    pd.testing.assert_frame_equal(first, reference_map)
    assert (out / "map.csv").is_file() and len(list((out / "parts").glob("*.csv"))) == 4
    (out / "parts" / "p001_s0.csv").unlink()
    calls = []
    real = dmap._score_unit
    monkeypatch.setattr(dmap, "_score_unit", lambda *a, **k: calls.append(a[2:4]) or real(*a, **k))
    again = run(sd1_pipe, clip, out)
    assert calls == [(1, 0)]
    pd.testing.assert_frame_equal(again, first)
    calls.clear()
    more = run(sd1_pipe, clip, out, seeds=(0, 1, 2))  # more seeds: the old parts are reused
    assert calls == [(0, 2), (1, 2)] and len(more) == 3 * 2 * (STEPS + 1)


def test_an_interrupted_map_leaves_no_half_written_file_and_resumes(sd1_pipe, clip, reference_map, tmp_path, monkeypatch):
    out = tmp_path / "map"
    real = dmap._score_unit
    done = []

    def dies_on_the_second(*a, **k):
        if done:
            raise KeyboardInterrupt  # what Ctrl-C or a kill between units does
        done.append(1)
        return real(*a, **k)

    monkeypatch.setattr(dmap, "_score_unit", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run(sd1_pipe, clip, out)
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["map.json", "p000_s0.csv", "p000_s0.png"]  # no map.csv, no temporary file
    monkeypatch.setattr(dmap, "_score_unit", real)
    (out / "parts" / ".p000_s1.csv.abc.tmp").write_text("c0,c1\nhalf")  # what a kill -9 inside a write leaves
    pd.testing.assert_frame_equal(run(sd1_pipe, clip, out), reference_map)
    assert not list(out.rglob("*.tmp"))


def test_other_settings_in_the_same_folder_are_refused(sd1_pipe, clip, tmp_path):
    out = tmp_path / "map"
    run(sd1_pipe, clip, out, seeds=(0,))
    with pytest.raises(MapMismatchError, match="guidance"):
        run(sd1_pipe, clip, out, seeds=(0,), guidance=3.0)


def test_a_size_is_kept_and_the_strips_give_back_each_image(sd1_pipe, clip, tmp_path):
    from disentkit.errors import ImageSizeError

    h, w = dk.pipeline.default_image_size(sd1_pipe)
    size = {"height": h, "width": w + 16}  # not square, so a strip's tiles cannot be cut as squares
    with pytest.raises(ImageSizeError):
        run(sd1_pipe, clip, tmp_path / "bad", seeds=(0,), height=h, width=w + 3)
    assert not (tmp_path / "bad").exists()  # refused before any work
    out = tmp_path / "map"
    df = run(sd1_pipe, clip, out, seeds=(0,), **size)
    cond = dk.encode(sd1_pipe, *PAIRS[1])
    tape = dk.NoiseTape.from_seed(sd1_pipe, 0, steps=STEPS, **size)
    img = dk.sample(sd1_pipe, cond, dk.MixSchedule.switch(STEPS, 2, 0.0, 1.0), tape, progress=False)
    tiles, seed = dmap.load_strip(out, 1, 0)
    assert seed == 0 and len(tiles) == STEPS + 1 and tiles[2].size == (w + 16, h)
    assert np.abs(np.asarray(tiles[2], dtype=int) - np.asarray(img.images[0], dtype=int)).max() <= 1  # 8-bit
    with pytest.raises(MapMismatchError, match="size"):
        run(sd1_pipe, clip, out, seeds=(0,))  # the same folder at the model's own size
    assert len(df) == 2 * (STEPS + 1)


def test_the_evaluator_adds_its_ground_truth(sd1_pipe, clip):
    from disentkit.toyworld.evaluator import DEFAULT_WEIGHTS, Evaluator

    if not (DEFAULT_WEIGHTS / "model.safetensors").is_file():
        pytest.skip("toyworld evaluator weights are absent")
    df = dk.disentanglement_map(sd1_pipe, PAIRS[:1], [0], [0, STEPS], metrics=["pixel"], steps=STEPS,
                                evaluator=Evaluator.load(), progress=False)  # fmt: skip
    cols = ["evaluator_target_prob", "evaluator_mask_iou", "evaluator_kind_agree", "evaluator_score"]
    assert set(cols) <= set(df.columns)
    assert df.loc[df["switch"] == STEPS, "evaluator_mask_iou"].item() == 1.0  # the reference against itself
    assert df["evaluator_target_prob"].between(0, 1).all()


def test_find_windows_on_known_curves():
    ks = np.arange(11)
    style = np.clip((8 - ks) / 4, 0, 1)  # reached (>= 0.5 rescaled) up to switch 6
    content = np.clip((4 - ks) / 4, 0, 1)  # kept (<= 0.5 rescaled) from switch 2 on
    rows = [{"pair": "a", "pair_index": 0, "c0": "x", "c1": "y", "seed": 0, "switch": k, "s": s, "c": c}
            for k, s, c in zip(ks, style, content)]  # fmt: skip
    rows += [{**r, "pair": "b", "pair_index": 1, "c": 0.0 if r["switch"] == 10 else 1.0} for r in rows[:11]]
    df = pd.DataFrame(rows)
    w = dk.find_windows(df, content="c", style="s")
    a = w.iloc[0]
    assert (a["start"], a["end"], a["width"], bool(a["found"])) == (2, 6, 5, True)
    assert not w.iloc[1]["found"]  # content lost at every switch but pure c0, where the style is absent
    absolute = dk.find_windows(df, content="c", style="s", content_threshold=0.25, style_threshold=0.75, relative=False)
    assert (absolute.iloc[0]["start"], absolute.iloc[0]["end"]) == (3, 5)
    gt = w.copy()
    gt.loc[0, ["start", "end"]] = [4, 8]
    assert dmap.windows_match(w, gt, tolerance=2).tolist() == [True, True]
    assert dmap.windows_match(w, gt, tolerance=1).tolist() == [False, True]


def test_pairs_files_are_checked(tmp_path):
    good = tmp_path / "pairs.csv"
    good.write_text('c0,c1,target\na photo of a face,"a photo of a face, smiling",expression=smiling\n'
                    'A photo of person,"A photo of person, young",\n')  # fmt: skip
    pairs = dmap.read_pairs(good)
    assert [p.name for p in pairs] == ["face: smiling", "person: young"] and pairs[0].target == ("expression", "smiling")
    bad = {
        "missing.csv": None,
        "nocol.csv": "prompt,styled\na,b\n",
        "empty.csv": "c0,c1\n",
        "blank.csv": "c0,c1\na photo of a face,\n",
        "twice.csv": "c0,c1\na,b\na,b\n",
        "same.csv": "c0,c1\na,a\n",
        "target.csv": "c0,c1,target\na,b,smiling\n",
    }
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(PairsFileError):
            dmap.read_pairs(tmp_path / name)
    paper = dmap.as_pairs("sd-paper")
    assert len(paper) == 14 and paper[0].c1 == "A photo of person, smiling"
    assert all(p.c1.startswith(p.c0 + ", ") for p in paper)


def test_map_plots(reference_map, tmp_path):
    from matplotlib.figure import Figure

    from disentkit import plotting

    assert isinstance(plotting.map_heatmap(reference_map, "pixel"), Figure)
    assert isinstance(plotting.window_curves(reference_map, "circle: red", "pixel", "clip_prob", (1, 3)), Figure)
    tiles = [torch.rand(3, 8, 8) for _ in range(STEPS + 1)]
    assert isinstance(plotting.thumbnail_strip(tiles, list(range(STEPS + 1)), (1, 2), every=2), Figure)
    with pytest.raises(ValueError):
        plotting.thumbnail_strip(tiles, [0, 1])


# ---- the command line --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr("disentkit.pipeline.load_pipeline", refuse)


def _pairs_csv(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"c0": [p[0] for p in PAIRS], "c1": [p[1] for p in PAIRS]}).to_csv(path, index=False)
    return path


def test_command_errors_come_before_the_model_loads(tmp_path, tiny_pipe_dir, clip_dir, no_model_load, capsys, monkeypatch):
    base = ["map", "--model", str(tiny_pipe_dir), "--seeds", "0", "--switch", f"0-{STEPS}", "--steps", str(STEPS),
            "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    (tmp_path / "bad.csv").write_text("prompt\nx\n")
    assert main([*base, "--pairs", str(tmp_path / "bad.csv"), "--clip", str(clip_dir)]) == 2
    assert "PairsFileError" in capsys.readouterr().err
    assert main([*base, "--pairs", str(_pairs_csv(tmp_path)), "--clip", str(clip_dir), "--metrics", "pixel,ssim"]) == 2
    assert "UnknownMetricError" in capsys.readouterr().err
    assert main([*base, "--pairs", str(_pairs_csv(tmp_path)), "--clip", str(clip_dir), "--switch", "0-60"]) == 2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([*base, "--pairs", str(_pairs_csv(tmp_path))]) == 2  # a model with no CLIP here: the default one
    err = capsys.readouterr().err
    assert "ModelNotFoundError" in err and "--clip" in err
    assert not (tmp_path / "out").exists()


def _cli_map(out: Path, tiny_pipe_dir, clip_dir, pairs: Path, processes: int = 1) -> subprocess.CompletedProcess:
    args = ["-m", "disentkit", "map", "--model", str(tiny_pipe_dir), "--clip", str(clip_dir), "--pairs", str(pairs),
            "--seeds", "0-2", "--switch", f"0-{STEPS}", "--steps", str(STEPS), "--metrics", ",".join(FAST),
            "--out", str(out), "--quiet"]  # fmt: skip
    if processes > 1:
        args = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines",
                "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_two_processes_give_the_single_process_csv(tmp_path, tiny_pipe_dir, clip_dir):
    pairs = _pairs_csv(tmp_path)
    one = _cli_map(tmp_path / "one", tiny_pipe_dir, clip_dir, pairs)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _cli_map(tmp_path / "two", tiny_pipe_dir, clip_dir, pairs, processes=2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "two" / "map.csv").read_text() == (tmp_path / "one" / "map.csv").read_text()
    for name in ("windows.csv", "summary.md", "figures/heatmap_pixel.png", "figures/strip_p001.png"):
        assert (tmp_path / "two" / name).is_file(), name
    df = pd.read_csv(tmp_path / "two" / "map.csv")
    assert len(df) == 2 * 3 * (STEPS + 1)


def test_the_default_windows_use_the_pair_the_validation_recommends():
    """docs/metrics_report.json is written by benchmarks/metrics_report.py; the library's default must be its pick."""
    import json

    report = Path(__file__).resolve().parents[1] / "docs" / "metrics_report.json"
    if not report.is_file():
        pytest.skip("the validation report has not been generated")
    pick = json.loads(report.read_text())["recommended"]
    assert (pick["content"], pick["style"]) == dmap.RECOMMENDED
