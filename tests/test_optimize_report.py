"""The learned-schedule report (disentkit.reports.learned_schedules, run by benchmarks/optimize_report.py): its
verdicts say what they claim, and one pair runs end to end on the tiny random pipeline (the numbers are meaningless
there; the shapes, keys and ranges are what is checked)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from disentkit.losses import load_clip, save_tiny_clip
from disentkit.toyworld.evaluator import Evaluator

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "optimize_report.py"


@pytest.fixture(scope="module")
def opt_report():
    from disentkit.reports import learned_schedules

    return learned_schedules


def _side(reached, iou, score):
    return {"reached": reached, "iou": iou, "score": score, "style": reached}


def _summary(switch, learned, gain, needed=None):
    """A split's summary as pair_report writes it; needed = (seeds, switch's share, learned's share) or None."""
    out = {"switch": switch, "learned": learned, "gain": gain}
    if needed is not None:
        n, sw, le = needed
        out["needed"] = {"seeds": n, "switch": sw, "learned": le, "switch_iou": 0.8, "learned_iou": 0.8}
    return out


def test_edit_success_counts_only_the_seeds_that_need_the_edit(opt_report):
    import numpy as np

    c0 = {"reached": np.array([1.0, 0.0, 0.0, 0.0])}  # seed 0 already shows the target unedited
    edit = {"reached": np.array([0.0, 1.0, 1.0, 0.0]), "iou": np.array([0.1, 0.9, 0.8, 0.7])}
    out = opt_report.edit_success({"learned": edit}, c0)
    assert out["seeds"] == 3 and out["learned"] == pytest.approx(2 / 3) and out["learned_iou"] == pytest.approx(0.8)
    nobody = opt_report.edit_success({"learned": edit}, {"reached": np.ones(4)})
    assert nobody["seeds"] == 0 and nobody["learned"] is None


def test_verdicts(opt_report):
    switch = _side(0.5, 0.80, 0.40)
    better = _summary(switch, _side(0.75, 0.80, 0.60), 0.20, needed=(12, 0.5, 0.75))
    unseen = _summary(switch, _side(0.7, 0.8, 0.525), 0.125, needed=(14, 0.5, 0.6375))  # 85% of 0.75
    v = opt_report.verdicts(better, unseen)
    assert v["beats_switch"] and v["edit_transfers"] and v["edit_share"] == pytest.approx(0.85)
    assert v["edit_gain_train"] == pytest.approx(0.75) and v["edit_gain_unseen"] == pytest.approx(0.6375)
    # The stricter reading: the margin over the switch (0.125 of 0.20 = 62%) is not kept.
    assert v["margin_share"] == pytest.approx(0.625) and not v["margin_transfers"]
    weaker = _summary(switch, _side(0.6, 0.8, 0.475), 0.075, needed=(14, 0.5, 0.5625))  # 75% of 0.75 < 80%
    assert not opt_report.verdicts(better, weaker)["edit_transfers"]
    # More style bought with content is not a win.
    drifted = _summary(switch, _side(1.0, 0.79, 0.79), 0.39, needed=(12, 0.5, 1.0))
    assert not opt_report.verdicts(drifted, unseen)["beats_switch"]
    # A tie is "at least as often"; its edit gain is the switch's, and there is no margin to judge.
    tie = _summary(switch, switch, 0.0, needed=(12, 0.5, 0.5))
    v = opt_report.verdicts(tie, _summary(switch, switch, 0.0, needed=(14, 0.5, 0.5)))
    assert v["beats_switch"] and v["margin_transfers"] is None and v["margin_share"] is None
    assert v["edit_share"] == pytest.approx(1.0) and v["edit_transfers"]
    # An edit that gives no needing seed the target has no share to judge; neither has a split where none needs it.
    assert opt_report.verdicts(_summary(switch, switch, 0.2, needed=(12, 0.0, 0.0)), unseen)["edit_share"] is None
    assert opt_report.verdicts(better, _summary(switch, switch, 0.0, needed=(0, None, None)))["edit_share"] is None
    # Reports written before the c0 baseline was measured still render: no edit verdict.
    assert opt_report.verdicts(_summary(switch, switch, 0.2), unseen)["edit_transfers"] is None


@pytest.mark.parametrize(
    "objective, optimizer, from_switch, content, guard",
    [("prompt", "adam", False, "perc", 0.0), ("paper", "adam", False, None, None),
     ("prompt", "tensorwise-adam", True, "struct", None)],
)
def test_one_pair_end_to_end(opt_report, sd1_pipe, tmp_path, objective, optimizer, from_switch, content, guard):
    clip = load_clip(save_tiny_clip(tmp_path / "clip"))
    cfg = dict(steps=3, iters=1, switches=[1, 2], train=[42, 43], unseen=[1000, 1001], more=[3000, 3001, 3002],
               scenes=1)  # fmt: skip
    c0, c1, target = opt_report.PAIRS[1]
    recipe = opt_report.Recipe(objective, beta=0.05, optimizer=optimizer, learn_from_switch=from_switch, content=content,
                               guard=guard)
    row = opt_report.pair_report(sd1_pipe, clip, Evaluator.load(), c0, c1, target, cfg, recipe)
    assert row["optimizer"] == optimizer
    floors = {"prompt_floor": recipe.guard, f"{content}_floor": recipe.guard * 0.05} if recipe.guard else {}
    assert {k: v for k, v in row["loss_terms"].items() if k.endswith("_floor")} == pytest.approx(floors)
    assert row["learn_steps"] == (list(range(row["best_switch"], 3)) if from_switch else "all")
    assert set(row["style_alignment"]) == {"dir", "prompt"}
    assert all(math.isnan(v) or -1 <= v <= 1 for v in row["style_alignment"].values())  # NaN: a constant judge
    assert row["kept_iteration"] in (0, 1) and row["loss_kept"] <= row["loss_first"]
    assert row["best_switch"] in (1, 2) and set(row["switch_scores"]) == {1, 2}
    for side in ("c0", "switch", "learned"):
        for split in ("train", "unseen"):
            values = row[split][side]
            assert 0 <= values["reached"] <= 1 and 0 <= values["iou"] <= 1 and 0 <= values["score"] <= 1
    assert len(row["lambdas"]) == 3
    assert set(row["verdict"]) == {"reaches_as_often", "keeps_iou", "beats_switch", "margin_share", "margin_transfers",
                                   "edit_gain_train", "edit_gain_unseen", "edit_share", "edit_transfers"}
    assert row["train"]["c0"]["iou"] == pytest.approx(1.0)  # the unedited image against itself
    for split in ("train", "unseen"):
        needed = row[split]["needed"]
        assert 0 <= needed["seeds"] <= 2 and set(needed) >= {"switch", "learned", "switch_iou", "learned_iou"}
    # the more unseen seeds: all three sides judged, the c0 images against themselves
    more = row["more"]
    assert set(more) == {"c0", "switch", "learned", "needed"} and more["c0"]["iou"] == pytest.approx(1.0)
    assert 0 <= more["needed"]["seeds"] <= 3 and 0 <= more["learned"]["reached"] <= 1
    md = opt_report.markdown({"settings": cfg, **asdict(recipe), "pairs": [row], "device": "cpu", "seconds": 1.0,
                              "inversion": {"steps": 3, "rows": [], "summary": {}},
                              "memory": [{"grad_checkpoint": True, "steps": 3, "error": "x\nskipped"}]})
    assert "best switch" in md and "of 1 pairs" in md and "rank correlation" in md and "edit gain" in md
    assert "3 more unseen seeds" in md and "| kept on the 3 |" in md
    expected = {"perc": "L_prompt + 0.05 L_perc", None: "L_dir + 0.05 L_perc", "struct": "L_prompt + 0.05 L_struct"}
    assert expected[content] in md
    assert ("tensor-wise Adam" in md) == (optimizer == "tensorwise-adam")
    assert ("only the steps from the best switch on" in md) == from_switch
    assert ("per-image floors at the start's values" in md) == bool(recipe.guard)
    assert f"only 1 of the {len(opt_report.PAIRS)} pairs measured" in md and "Both tests pass for" in md
    # A report of some parts only renders those parts.
    some = opt_report.markdown({"settings": cfg, **asdict(recipe), "pairs": [row], "device": "cpu", "seconds": 1.0,
                                "inversion": None, "memory": None})
    assert "best switch" in some and "Inversion" not in some and "Memory" not in some
    none = opt_report.markdown({"settings": cfg, **asdict(recipe), "pairs": [], "device": "cpu", "seconds": 1.0,
                                "inversion": None, "memory": [{"grad_checkpoint": True, "steps": 3, "error": "x"}]})
    assert "best switch" not in none and "rank correlation" not in none and "Memory" in none


@pytest.mark.parametrize("floors_at", ["start", "switch"])
def test_boosted_start_and_where_the_floors_are(opt_report, sd1_pipe, tmp_path, monkeypatch, floors_at):
    """--boost V S: the optimiser starts above the best switch from step S on. --floors-at start lets optimize()
    place the floors at its own rendering of that start (silent at iteration 0); --floors-at switch places them at
    the best switch's images, which the boosted start may already be behind on."""
    from disentkit.losses import Hinge

    seen, real_optimize = {}, opt_report.optimize

    def spy(pipe, cond, init, tape, **kwargs):  # what pair_report hands the optimiser
        seen.update(init=init.weights.tolist(), floors=kwargs["floors"], losses=kwargs["losses"])
        return real_optimize(pipe, cond, init, tape, **kwargs)

    monkeypatch.setattr(opt_report, "optimize", spy)
    clip = load_clip(save_tiny_clip(tmp_path / "clip"))
    cfg = dict(steps=4, iters=1, switches=[1], train=[42, 43], unseen=[1000], scenes=1)
    recipe = opt_report.Recipe(beta=0.05, boost=1.5, boost_from=2, floors_at=floors_at, guard=10.0)
    c0, c1, target = opt_report.PAIRS[1]
    row = opt_report.pair_report(sd1_pipe, clip, Evaluator.load(), c0, c1, target, cfg, recipe)
    assert row["best_switch"] == 1 and seen["init"] == pytest.approx([0, 1, 1.5, 1.5])
    assert {k: v for k, v in row["loss_terms"].items() if k.endswith("_floor")} == pytest.approx(
        {"prompt_floor": 10.0, "struct_floor": 0.5})
    if floors_at == "start":  # optimize() adds them itself
        assert seen["floors"] == 10.0 and not any(k.endswith("_floor") for k in seen["losses"])
    else:  # given to optimize() ready-made, at the best switch's images
        assert seen["floors"] == 0.0 and isinstance(seen["losses"]["prompt_floor"][1], Hinge)
    md = opt_report.markdown({"settings": cfg, **asdict(recipe), "pairs": [row], "device": "cpu", "seconds": 1.0,
                              "inversion": None, "memory": None})  # fmt: skip
    where = "the best switch" if floors_at == "switch" else "the start"
    assert f"per-image floors at {where}'s values" in md and "the start's weight 1.5 from step 2 on" in md


def test_recipe_refuses_floors_it_cannot_place(opt_report):
    with pytest.raises(ValueError, match="floors_at"):
        opt_report.Recipe(floors_at="end")
    with pytest.raises(ValueError, match="guard weight > 0"):
        opt_report.Recipe(floors_at="switch", guard=0.0)
    with pytest.raises(ValueError, match="boost_from is a step"):
        opt_report.start_schedule(20, 10, boost=1.5, boost_from=20)  # --quick has 20 steps: step 20 is past the end


def test_start_schedule(opt_report):
    plain = opt_report.start_schedule(6, 2)
    assert plain.weights.tolist() == [0, 0, 1, 1, 1, 1]
    boosted = opt_report.start_schedule(6, 2, late=1.2, boost=1.5, boost_from=4)
    assert boosted.weights.tolist() == pytest.approx([0, 0, 1.2, 1.2, 1.5, 1.5])
    early = opt_report.start_schedule(6, 3, boost=2.0, boost_from=1)  # a boost never starts before the switch
    assert early.weights.tolist() == [0, 0, 0, 2, 2, 2]


def test_wilson_interval(opt_report):
    lo, hi = opt_report.wilson(0, 8)
    assert lo == 0 and 0.3 < hi < 0.35  # none of 8: still up to about a third
    lo, hi = opt_report.wilson(8, 8)
    assert 0.65 < lo < 0.7 and hi == pytest.approx(1.0)
    lo, hi = opt_report.wilson(4, 8)
    assert lo < 0.5 < hi and hi - lo > 0.5  # half of 8: the interval spans more than 50 points
    narrow = opt_report.wilson(24, 48)
    assert narrow[1] - narrow[0] < hi - lo  # more seeds, a narrower interval
    assert opt_report.wilson(0, 0) is None


def test_recipe_defaults_are_the_measured_best_and_the_paper_keeps_its_own(opt_report):
    best = opt_report.Recipe()
    assert (best.objective, best.content, best.beta, best.optimizer, best.learn_from_switch, best.guard) == (
        "prompt", "struct", 50.0, "tensorwise-adam", True, opt_report.GUARD_WEIGHT)
    paper = opt_report.Recipe("paper", 0.05)
    assert paper.content == "perc" and paper.guard == 0


def test_recipe_refuses_prompt_options_for_the_paper_objective(opt_report):
    with pytest.raises(ValueError, match="prompt objective only"):
        opt_report.Recipe("paper", beta=0.05, enough="start-each")
    with pytest.raises(ValueError, match="prompt objective only"):
        opt_report.Recipe("paper", beta=0.05, content="struct")
    with pytest.raises(ValueError, match="prompt objective only"):
        opt_report.Recipe("paper", beta=0.05, guard=10.0)


def test_content_terms_report(opt_report, tmp_path):
    clip = load_clip(save_tiny_clip(tmp_path / "clip"))
    report = opt_report.content_terms_report(clip, scenes=2)
    assert [r["change"] for r in report["rows"]] == list(opt_report.CHANGES)
    assert all(r["perc"] > 0 and r["struct"] > 0 for r in report["rows"])  # every change changes the image
    md = "\n".join(opt_report.content_terms_markdown(report))
    assert "| recolour (red) | style |" in md and "| moved 6 px | content |" in md


def _old_report(opt_report, needed_unseen_seeds=None):
    """A report as written before the per-seed edit was measured (no c0 side, no "needed"), or with one."""
    switch, learned = _side(0.5, 0.8, 0.4), _side(0.5, 0.85, 0.42)
    pair = {"c0": "a", "c1": "a, red", "best_switch": 2, "loss_first": 1.0, "loss_kept": 0.9, "kept_iteration": 3,
            "train": _summary(switch, learned, 0.02), "unseen": _summary(switch, learned, 0.01)}  # fmt: skip
    if needed_unseen_seeds is not None:
        pair["train"] = _summary(switch, learned, 0.02, needed=(4, 0.5, 0.5))
        pair["unseen"] = _summary(switch, learned, 0.01, needed=(needed_unseen_seeds, None, None))
    settings = dict(steps=3, iters=3, switches=[1, 2], train=[42], unseen=[1000], scenes=1)
    return {"settings": settings, **asdict(opt_report.Recipe()), "pairs": [pair], "device": "cpu", "seconds": 1.0,
            "inversion": None, "memory": None}  # fmt: skip


def test_both_tests_are_counted_per_pair_and_the_failures_named(opt_report):
    switch = _side(0.5, 0.80, 0.40)
    train = _summary(switch, _side(0.75, 0.80, 0.60), 0.20, needed=(12, 0.5, 0.75))
    kept = _summary(switch, _side(0.7, 0.8, 0.525), 0.125, needed=(14, 0.5, 0.6375))  # 85% of the training gain
    lost = _summary(switch, _side(0.6, 0.8, 0.475), 0.075, needed=(14, 0.5, 0.5))  # 67%
    drifted = _summary(switch, _side(1.0, 0.79, 0.79), 0.39, needed=(12, 0.5, 1.0))  # more style, less content
    tie = _summary(switch, switch, 0.0, needed=(12, 0.5, 0.5))  # the optimiser kept its start: the switch itself
    tie_lost = _summary(switch, switch, 0.0, needed=(14, 0.3, 0.3))  # ... whose edit does not transfer (60%)
    unjudged = _summary(switch, _side(0.75, 0.80, 0.60), 0.20)  # a report without the per-seed edit
    pairs = []
    for c1, tr, un, kept_at in (("a, red", train, kept, 3), ("a, blue", train, lost, 3), ("a, green", drifted, kept, 3),
                                ("a, tie", tie, tie, 0), ("a, stuck", tie, tie_lost, 0),
                                ("a, old", unjudged, unjudged, 3)):  # fmt: skip
        pairs.append({"c0": "a", "c1": c1, "best_switch": 2, "loss_first": 1.0, "loss_kept": 0.9,
                      "kept_iteration": kept_at, "train": tr, "unseen": un, "verdict": opt_report.verdicts(tr, un)})
    report = {"settings": dict(steps=3, iters=3, switches=[1, 2], train=[42], unseen=[1000], scenes=1),
              **asdict(opt_report.Recipe()), "pairs": pairs}  # fmt: skip
    text = "\n".join(opt_report.pairs_markdown(report))
    assert "**Both tests pass for 2 of 6 pairs** (bar: at least 5; only 6 of the" in text
    # only the passing tie is counted as one, and only there is the learned schedule the switch itself
    assert "On 1 of them the optimiser kept its start (a, tie): the learned schedule is the best switch itself" in text
    assert ("Not for: a, blue (edit kept 67%); a, green (below the best switch on the training seeds, edit kept 64%); "
            "a, stuck (edit kept 60%); a, old (no edit verdict).") in text
    # the switch alone: it transfers where its own share does (all but "stuck"; "old" has no share to judge)
    assert "the best switch alone passes both tests for 4 of 5 pairs" in text
    assert "at least the best switch for **5 of 6 pairs** (2 of them only because" in text
    assert "**2 of 5** pairs with an edit gain" in text
    # a boosted start is not the best switch: a kept start is then not the switch itself
    boosted = "\n".join(opt_report.pairs_markdown({**report, "boost": 1.5}))
    assert "kept its start (a, tie)." in boosted and "the best switch itself" not in boosted
    lines = "\n".join(opt_report.pairs_markdown({**report, "pairs": pairs[:1]}))
    assert "kept its start" not in lines and "Not for" not in lines


def test_alternatives_are_the_target_factors_other_values(opt_report):
    from disentkit.toyworld.scenes import FACTORS, parse_caption

    for _, c1, (factor, value) in opt_report.PAIRS:
        others = opt_report.alternatives(c1, (factor, value))
        said = {parse_caption(c).get(factor, "photo" if factor == "rendering" else None) for c in others}
        assert said == set(FACTORS[factor]) - {value} and len(others) == len(said)
        for c in others:  # the same object, nothing else said
            assert {k: v for k, v in parse_caption(c).items() if k != factor} == {"kind": parse_caption(c1)["kind"]}
    # c1 must say the target and nothing else, or the target would be among the "others"
    for c1, target in (("a photo of a circle", ("background", "night")), ("a photo of a circle, red", ("color", "blue")),
                       ("a photo of a circle, red, striped", ("texture", "striped")),
                       ("a sketch of a circle, red", ("color", "red"))):  # fmt: skip
        with pytest.raises(ValueError, match="is not a caption that says"):
            opt_report.alternatives(c1, target)
    with pytest.raises(ValueError, match="not one of"):
        opt_report.alternatives("a photo of a circle, red", ("color", "nonsense"))


def test_apply_schedules_judges_each_schedule_against_the_c0_image(opt_report, sd1_pipe):
    import numpy as np

    import disentkit as dk

    cond = dk.encode(sd1_pipe, "a photo of a circle", "a photo of a circle, red")
    same, other = dk.MixSchedule.constant(3, 0.0), dk.MixSchedule.constant(3, 1.0)
    out = opt_report.apply_schedules(sd1_pipe, Evaluator.load(), cond, same, other, [1000, 1001], ("color", "red"))
    assert set(out) == {"c0", "switch", "learned"}
    assert np.allclose(out["c0"]["iou"], 1.0) and np.allclose(out["switch"]["iou"], 1.0)  # pure c0 is the reference
    assert np.array_equal(out["switch"]["style"], out["c0"]["style"])
    assert not np.array_equal(out["learned"]["style"], out["c0"]["style"])  # c1 throughout: other images


def test_pairs_cover_every_style_factor_twice(opt_report):
    from collections import Counter

    assert len(opt_report.PAIRS) >= opt_report.MIN_PAIRS
    assert Counter(t[0] for _, _, t in opt_report.PAIRS) == dict.fromkeys(
        ("expression", "color", "texture", "background", "rendering"), 2)
    assert opt_report.PAIRS[0][1] == "a photo of a face, smiling"  # the paper's edit comes first


def test_render_rejudges_old_reports_and_says_what_it_cannot_judge(opt_report, tmp_path, capsys):
    import json

    path = tmp_path / "old.json"
    path.write_text(json.dumps(_old_report(opt_report)))
    opt_report.render(path)
    md = path.with_suffix(".md").read_text()
    assert "n/a (this report has no per-seed edit)" in md and "n/a (no pair has an edit verdict)" in md
    assert json.loads(path.read_text())["pairs"][0]["verdict"]["margin_share"] == pytest.approx(0.5)
    path.write_text(json.dumps(_old_report(opt_report, needed_unseen_seeds=0)))  # every unseen c0 has the target
    assert "n/a (no unseen seed needs the edit)" in opt_report.render(path)
    assert "n/a (no unseen seed needs the edit)" in path.with_suffix(".md").read_text()


def test_the_script_renders_a_kept_report_from_the_command_line(opt_report, tmp_path):
    """benchmarks/optimize_report.py is a thin command line over the module: --render runs from any folder."""
    import json

    path = tmp_path / "old.json"
    path.write_text(json.dumps(_old_report(opt_report)))
    done = subprocess.run([sys.executable, str(SCRIPT), "--render", str(path)], capture_output=True, text=True,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert path.with_suffix(".md").read_text() in done.stdout


def test_peak_memory_sees_what_a_block_allocates():
    import torch

    from disentkit.memory import RSS, PeakMemory

    with PeakMemory("cpu") as mem:
        block = torch.ones(16 * 2**20)  # 64 MiB, touched
        del block
    assert mem.extra == mem.peak - mem.before and mem.as_dict()["extra_mib"] == mem.extra / 2**20
    if mem.method == RSS:  # Linux lets the peak be reset: the block's own peak, freed or not
        assert mem.extra >= 60 * 2**20


def test_the_memory_part_measures_one_iteration_on_the_bundled_model(opt_report):
    import torch

    from disentkit.pipeline import toyworld_dir

    threads = torch.get_num_threads()
    try:
        row = opt_report.memory_child(toyworld_dir(), 3, True, "cpu", threads)
    finally:
        torch.set_num_threads(threads)
    assert row["grad_checkpoint"] is True and row["steps"] == 3 and row["seconds"] >= 0
    assert row["peak_rss_mib"] >= row["rss_before_iteration_mib"] and row["iteration_extra_peak_mib"] >= 0
