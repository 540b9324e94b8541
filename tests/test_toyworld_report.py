"""Smoke tests of the toyworld report (disentkit.reports.toyworld, run by benchmarks/toyworld_report.py) on the tiny random sd1 pipeline and a tiny random CLIP.

The quality bars are not checked here (random weights cannot pass them); what is checked is that every part runs,
writes its tables and figures, and that the numbers have the shapes, columns and ranges a reader relies on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from disentkit.losses import save_tiny_clip
from disentkit.toyworld import scenes
from disentkit.toyworld.evaluator import Evaluator

@pytest.fixture(scope="module")
def tr():
    from disentkit.reports import toyworld

    return toyworld


def test_prompt_set_says_one_attribute_each_and_covers_every_value(tr):
    prompts = tr.prompt_set()
    said = {name: set() for name in scenes.FACTORS}
    for p in prompts:
        pinned = scenes.parse_caption(p)  # raises if the wording is not a toy caption
        assert len(pinned) == 2, f"{p!r} should say its kind and exactly one attribute"
        for name, value in pinned.items():
            said[name].add(value)
    for name in ("kind", "color", "texture", "expression", "background"):
        assert said[name] == set(scenes.FACTORS[name]), name
    assert said["rendering"] == {"sketch"}  # "a photo of" pins nothing, so only the sketch can be asked for


def test_map_pairs_differ_in_their_factor_only(tr):
    for pair in tr.MAP_PAIRS:
        c0, c1 = scenes.parse_caption(pair.c0), scenes.parse_caption(pair.c1)
        assert c0 == {"kind": pair.kind}
        assert c1 == {"kind": pair.kind, pair.factor: pair.target}
    assert tr.MAP_PAIRS[0].c1 == "a photo of a circle, red"
    assert tr.MAP_PAIRS[3].c1 == "a sketch of a star"


def test_switch_steps_always_include_the_pure_c0_reference(tr):
    assert tr.ReportConfig().switch_steps == list(range(51))
    assert tr.ReportConfig.quick().switch_steps == list(range(0, 51, 5))
    assert tr.ReportConfig(steps=12, switch_every=5).switch_steps == [0, 5, 10, 12]


def test_best_switch_steps_reads_the_curves(tr):
    # style falls and IoU rises with k: style >= 0.8 up to k = 20, IoU >= 0.8 from k = 10 on (with a dip at 30).
    ks = np.arange(0, 51, 10)
    style = np.array([0.95, 0.9, 0.85, 0.5, 0.2, 0.1])
    iou = np.array([0.3, 0.85, 0.95, 0.7, 0.95, 1.0])
    table = pd.DataFrame({"pair": "p", "k": ks, "style_prob": style, "style_hit": style, "mask_iou": iou,
                          "shift_px": 0.0, "kind_kept": 1.0})  # fmt: skip
    row = tr.best_switch_steps(table, steps=50).iloc[0]
    assert row["best_k"] == 20  # the latest k still reaching the style
    assert row["content_k"] == 40  # the dip at 30 means content is only settled from 40 on
    assert row["product_k"] == 20  # 0.85 * 0.95 is the largest product
    assert row["style_c0"] == pytest.approx(0.1) and row["style_c1"] == pytest.approx(0.95)
    assert not row["window"]  # settled (40) only after the last switch that reaches the style (20)

    c0_alone = table.assign(style_prob=np.where(ks == 50, 0.9, 0.3))  # only the reference itself "reaches" it
    assert pd.isna(tr.best_switch_steps(c0_alone, steps=50).iloc[0]["best_k"])

    never = table.assign(style_prob=0.3)
    row = tr.best_switch_steps(never, steps=50).iloc[0]
    assert pd.isna(row["best_k"]) and not row["window"]


@pytest.fixture(scope="module")
def tiny_report(tr, sd1_pipe, tmp_path_factory):
    """The whole report on the tiny pipeline: 3 steps, 2 prompts x 2 samples, 2 pairs x 2 seeds x k in 0..3."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    clip, stats = tr.load_report_clip(save_tiny_clip(folder))
    cfg = tr.ReportConfig(
        steps=3, samples_per_prompt=2, clip_scenes=4, speed_repeats=1, map_seeds=2, max_batch=8,
        prompts=["a photo of a circle, red", "a photo of a face, smiling"], pairs=tr.MAP_PAIRS[:2],
    )  # fmt: skip
    out = tmp_path_factory.mktemp("report")
    meta = tr.report_meta("tiny-sd1", folder, stats, None, quick=True)
    report = tr.run_report(tr.Runner(sd1_pipe, Evaluator.load()), clip, cfg, out, meta)
    return report, out, cfg, stats


def test_report_writes_every_output(tiny_report):
    report, out, _, _ = tiny_report
    for name in ("report.json", "report.md", "readme_section.md", "prompt_following.csv",
                 "prompt_following_per_prompt.csv", "clip_zero_shot.csv", "map.csv", "map_runs.csv", "map_summary.csv",
                 "map_style.png", "map_content_iou.png", "map_curves.png", "map_examples.png", "prompt_examples.png"):
        assert (out / name).stat().st_size > 0, name  # fmt: skip
    json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in report.json"))
    md = (out / "report.md").read_text()
    assert "## What toyworld shows" in md and "QUICK" in md
    assert set(report["timings_s"]) == {"prompt_following", "clip_zero_shot", "speed", "map", "total"}


def test_prompt_following_table(tiny_report):
    _, out, _, _ = tiny_report
    per_prompt = pd.read_csv(out / "prompt_following_per_prompt.csv")
    assert list(per_prompt.columns) == ["prompt", "factor", "target", "n", "accuracy", "target_prob"]
    assert set(zip(per_prompt["prompt"], per_prompt["factor"])) == {
        ("a photo of a circle, red", "kind"), ("a photo of a circle, red", "color"),
        ("a photo of a face, smiling", "kind"), ("a photo of a face, smiling", "expression"),
    }  # fmt: skip
    assert (per_prompt["n"] == 2).all()
    assert per_prompt[["accuracy", "target_prob"]].apply(lambda c: c.between(0, 1).all()).all()
    per_factor = pd.read_csv(out / "prompt_following.csv")
    assert list(per_factor["factor"]) == ["kind", "color", "expression"]  # FACTORS order
    assert per_factor.set_index("factor").loc["kind", "n_images"] == 4
    # each expression is judged on its own too: here the only one asked for is smiling
    smiling = per_prompt.set_index(["prompt", "factor"]).loc[("a photo of a face, smiling", "expression"), "accuracy"]
    assert per_factor.set_index("factor").loc["expression", "worst_value_accuracy"] == pytest.approx(smiling)
    assert per_factor.set_index("factor").loc["expression", "value_bar"] == pytest.approx(0.85)


def test_clip_zero_shot_table(tiny_report):
    _, out, _, stats = tiny_report
    zs = pd.read_csv(out / "clip_zero_shot.csv")
    assert list(zs["factor"]) == list(scenes.FACTORS)
    assert zs["accuracy"].between(0, 1).all() and (zs["n"] == 4).all()
    assert zs.set_index("factor").loc["rendering", "chance"] == pytest.approx(0.5)
    assert "[-1, 1]" in stats  # the tiny CLIP folder has no preprocessor config, like the toy CLIP's


def test_speed_entry(tiny_report):
    speed = tiny_report[0]["speed"]
    assert speed["wall_s_median"] > 0 and speed["cpu_s_median"] >= 0 and speed["torch_threads"] >= 1
    assert speed["seconds"] == speed[f"{speed['judged_on']}_s_median"]


def test_map_tables(tiny_report):
    report, out, cfg, _ = tiny_report
    runs = pd.read_csv(out / "map_runs.csv")
    assert len(runs) == 2 * 4 * 2  # pairs x switch steps (0..3) x seeds
    for col in ("mask_iou", "style_prob", "style_hit", "kind_kept", "shift_frac"):
        assert runs[col].astype(float).between(0, 1).all(), col
    ref = runs[runs["k"] == cfg.steps]  # the pure-c0 image against itself
    assert (ref["mask_iou"] == 1).all() and ref["kind_kept"].all()
    assert (ref["shift_px"].fillna(0) == 0).all()  # NaN only where the evaluator finds no object at all
    table = pd.read_csv(out / "map.csv")
    assert list(table.columns) == ["pair", "k", "n", "style_prob", "style_hit", "mask_iou", "shift_px", "shift_frac",
                                   "kind_kept"]  # fmt: skip
    assert len(table) == 2 * 4 and (table["n"] == 2).all()
    summary = pd.read_csv(out / "map_summary.csv")
    assert list(summary["pair"]) == ["colour", "texture"]
    assert summary["content_k"].isin(cfg.switch_steps).all()
    assert summary["best_k"].dropna().isin(cfg.switch_steps).all()
    assert report["map"]["unet_rows"] < report["map"]["unshared_rows"]  # the c0 prefix was shared
    windows = pd.read_csv(out / "map_windows.csv")
    assert list(windows["pair"]) == ["colour", "texture"] and (windows["seeds"] == 2).all()
    assert (windows["lacking"] <= windows["seeds"]).all()
    assert not windows["window"].any()  # 2 seeds are never enough for a window, whatever the images show
    assert "**Windows**" in (out / "report.md").read_text()


def test_clip_on_generated_images_table(tiny_report):
    report, out, _, _ = tiny_report
    table = pd.read_csv(out / "clip_on_generated.csv")
    assert list(table["factor"]) == list(scenes.FACTORS)
    assert table["agreement"].dropna().between(0, 1).all()
    assert table.set_index("factor").loc["color", "n"] == 4  # every generated image (2 prompts x 2 samples)
    assert [r["factor"] for r in report["clip_on_generated"]] == list(scenes.FACTORS)
    assert "CLIP on generated images" in (out / "report.md").read_text()


def test_render_rewrites_the_words_from_report_json(tr, tiny_report):
    _, out, _, _ = tiny_report
    (out / "report.md").write_text("stale")
    tr.main(["--render", str(out / "report.json")])
    assert "## What toyworld shows" in (out / "report.md").read_text()


def test_speed_text_names_the_compiled_time_when_measured(tr):
    eager = {"judged_on": "wall", "wall_s_median": 1.2, "cpu_s_median": 2.3, "torch_threads": 2}
    compiled = {"wall_s_median": 0.9, "cpu_s_median": 1.7, "first_call_wall_s": 48.0, "passed": True}
    cfg = {"steps": 50, "speed_repeats": 5}
    text = tr.speed_text(eager, cfg)
    assert "1.20 s" in text and "**over**" in text and "compile" not in text
    text = tr.speed_text(eager | {"compiled": compiled}, cfg)
    assert "0.90 s: within the bar" in text and "48 s" in text


def test_parts_measure_only_what_is_asked_and_merge_into_one_report(tr, sd1_pipe, tmp_path):
    """The sampling parts on one machine (say a GPU), the speed bar on another, then one report of both."""
    folder = tmp_path / "clip"
    folder.mkdir()
    clip, stats = tr.load_report_clip(save_tiny_clip(folder))
    cfg = tr.ReportConfig(steps=3, samples_per_prompt=2, clip_scenes=4, speed_repeats=1, map_seeds=2, max_batch=8,
                          prompts=["a photo of a circle, red"], pairs=tr.MAP_PAIRS[:1])  # fmt: skip
    meta = tr.report_meta("tiny-sd1", folder, stats, None, quick=True)
    runner = tr.Runner(sd1_pipe, Evaluator.load())
    speed = tr.run_report(runner, clip, cfg, tmp_path / "speed", meta, parts=("speed",))
    sampled = tr.run_report(runner, clip, cfg, tmp_path / "sampled", meta | {"device": "cuda"},
                            parts=("prompts", "map"))  # fmt: skip
    assert speed["parts"] == ["speed"] and "map" not in speed and "prompt_following" not in speed
    assert set(sampled["timings_s"]) == {"prompt_following", "map", "total"} and "speed" not in sampled
    assert not (tmp_path / "speed" / "map.csv").exists() and (tmp_path / "sampled" / "map.csv").exists()
    speed_md = (tmp_path / "speed" / "readme_section.md").read_text()
    assert "**Speed.**" in speed_md and "It follows prompts" not in speed_md
    assert "sampled on cuda" in (tmp_path / "sampled" / "readme_section.md").read_text()

    report = tr.main(["--render", str(tmp_path / "speed" / "report.json"), str(tmp_path / "sampled" / "report.json"),
                      "--out", str(tmp_path / "merged")])  # fmt: skip
    assert report["parts"] == ["speed", "prompts", "map"]
    assert report["speed"] == speed["speed"] and report["map"] == sampled["map"]
    assert report["sources"]["map"]["device"] == "cuda" and report["sources"]["speed"]["device"] == "cpu"
    assert report["timings_s"]["total"] == pytest.approx(speed["timings_s"]["speed"] + sampled["timings_s"]["total"])
    md = (tmp_path / "merged" / "readme_section.md").read_text()
    assert "**Speed.**" in md and "It follows prompts" in md and "The switch step" in md and "map on cuda" in md
    assert json.loads((tmp_path / "merged" / "report.json").read_text())["parts"] == report["parts"]

    assert report["workers"] == 1 and "Map runtime on cuda" in (tmp_path / "merged" / "report.md").read_text()
    again = tr.merge_reports([report, speed])  # a merged report merges again, keeping where each part was measured
    assert again["sources"]["map"]["device"] == "cuda"

    other = dict(sampled, model="another", model_info={"unet_sha256": "0" * 64})
    with pytest.raises(ValueError, match="different models"):
        tr.merge_reports([speed, other])
    fewer_steps = dict(sampled, config=dict(sampled["config"], steps=25))
    with pytest.raises(ValueError, match="steps, guidance"):
        tr.merge_reports([speed, fewer_steps])


def test_speed_is_refused_off_the_cpu(tr, capsys):
    with pytest.raises(SystemExit):
        tr.main(["--device", "cuda", "--parts", "speed", "map"])
    assert "speed bar is about this CPU" in capsys.readouterr().err
