"""benchmarks/optimize_report.py: its verdicts say what the issue asks, and one pair runs end to end on the tiny
random pipeline (the numbers are meaningless there; the shapes, keys and ranges are what is checked)."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from disentkit.losses import load_clip, save_tiny_clip
from disentkit.toyworld.evaluator import Evaluator

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "optimize_report.py"


@pytest.fixture(scope="module")
def opt_report():
    spec = importlib.util.spec_from_file_location("optimize_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _side(reached, iou, score):
    return {"reached": reached, "iou": iou, "score": score, "style": reached}


def test_verdicts(opt_report):
    switch = _side(0.5, 0.80, 0.40)
    better = {"switch": switch, "learned": _side(0.75, 0.80, 0.60), "gain": 0.20}
    v = opt_report.verdicts(better, unseen_gain=0.17)
    assert v["beats_switch"] and v["transfers"] and v["transfer_share"] == pytest.approx(0.85)
    assert not opt_report.verdicts(better, unseen_gain=0.15)["transfers"]  # 75% < 80%
    # More style bought with content is not a win.
    drifted = {"switch": switch, "learned": _side(1.0, 0.79, 0.79), "gain": 0.39}
    assert not opt_report.verdicts(drifted, 0.39)["beats_switch"]
    # A tie is "at least as often", but there is no gain whose transfer could be judged.
    tie = {"switch": switch, "learned": switch, "gain": 0.0}
    v = opt_report.verdicts(tie, unseen_gain=-0.01)
    assert v["beats_switch"] and v["transfers"] is None and v["transfer_share"] is None
    # So is a gain too small to measure a share of.
    tiny = {"switch": switch, "learned": _side(0.5, 0.801, 0.4004), "gain": 0.0004}
    assert opt_report.verdicts(tiny, unseen_gain=0.05)["transfer_share"] is None


@pytest.mark.parametrize(
    "objective, optimizer, from_switch, content",
    [("prompt", "adam", False, "perc"), ("paper", "adam", False, None), ("prompt", "tensorwise-adam", True, "struct")],
)
def test_one_pair_end_to_end(opt_report, sd1_pipe, tmp_path, objective, optimizer, from_switch, content):
    clip = load_clip(save_tiny_clip(tmp_path / "clip"))
    cfg = dict(steps=3, iters=1, switches=[1, 2], train=[42, 43], unseen=[1000, 1001], scenes=1)
    c0, c1, target = opt_report.PAIRS[1]
    recipe = opt_report.Recipe(objective, beta=0.05, optimizer=optimizer, learn_from_switch=from_switch, content=content)
    row = opt_report.pair_report(sd1_pipe, clip, Evaluator.load(), c0, c1, target, cfg, recipe)
    assert row["optimizer"] == optimizer
    assert row["learn_steps"] == (list(range(row["best_switch"], 3)) if from_switch else "all")
    assert set(row["style_alignment"]) == {"dir", "prompt"}
    assert all(math.isnan(v) or -1 <= v <= 1 for v in row["style_alignment"].values())  # NaN: a constant judge
    assert row["kept_iteration"] in (0, 1) and row["loss_kept"] <= row["loss_first"]
    assert row["best_switch"] in (1, 2) and set(row["switch_scores"]) == {1, 2}
    for side in ("switch", "learned"):
        for split in ("train", "unseen"):
            values = row[split][side]
            assert 0 <= values["reached"] <= 1 and 0 <= values["iou"] <= 1 and 0 <= values["score"] <= 1
    assert len(row["lambdas"]) == 3
    assert set(row["verdict"]) == {"reaches_as_often", "keeps_iou", "beats_switch", "transfer_share", "transfers"}
    md = opt_report.markdown({"settings": cfg, **asdict(recipe), "pairs": [row], "device": "cpu", "seconds": 1.0,
                              "inversion": {"steps": 3, "rows": [], "summary": {}},
                              "memory": [{"grad_checkpoint": True, "steps": 3, "error": "x\nskipped"}]})
    assert "best switch" in md and "of 1 pairs" in md and "rank correlation" in md
    expected = {"perc": "L_prompt + 0.05 L_perc", None: "L_dir + 0.05 L_perc", "struct": "L_prompt + 0.05 L_struct"}
    assert expected[content] in md
    assert ("tensor-wise Adam" in md) == (optimizer == "tensorwise-adam")
    assert ("only the steps from the best switch on" in md) == from_switch
    assert "bar: all 5" not in md and "only 1 of the 5 pairs measured" in md
    # A report of some parts only renders those parts.
    some = opt_report.markdown({"settings": cfg, **asdict(recipe), "pairs": [row], "device": "cpu", "seconds": 1.0,
                                "inversion": None, "memory": None})
    assert "best switch" in some and "Inversion" not in some and "Memory" not in some
    none = opt_report.markdown({"settings": cfg, **asdict(recipe), "pairs": [], "device": "cpu", "seconds": 1.0,
                                "inversion": None, "memory": [{"grad_checkpoint": True, "steps": 3, "error": "x"}]})
    assert "best switch" not in none and "rank correlation" not in none and "Memory" in none


def test_recipe_defaults_are_the_measured_best_and_the_paper_keeps_its_own(opt_report):
    best = opt_report.Recipe()
    assert (best.objective, best.content, best.beta, best.optimizer, best.learn_from_switch) == (
        "prompt", "struct", 50.0, "tensorwise-adam", True)
    assert opt_report.Recipe("paper", 0.05).content == "perc"


def test_recipe_refuses_prompt_options_for_the_paper_objective(opt_report):
    with pytest.raises(ValueError, match="prompt objective only"):
        opt_report.Recipe("paper", beta=0.05, enough="start-each")
    with pytest.raises(ValueError, match="prompt objective only"):
        opt_report.Recipe("paper", beta=0.05, content="struct")


def test_content_terms_report(opt_report, tmp_path):
    clip = load_clip(save_tiny_clip(tmp_path / "clip"))
    report = opt_report.content_terms_report(clip, scenes=2)
    assert [r["change"] for r in report["rows"]] == list(opt_report.CHANGES)
    assert all(r["perc"] > 0 and r["struct"] > 0 for r in report["rows"])  # every change changes the image
    md = "\n".join(opt_report.content_terms_markdown(report))
    assert "| recolour (red) | style |" in md and "| moved 6 px | content |" in md
