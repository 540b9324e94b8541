"""Every curated notebook runs, and writes what it says it writes, with values that make sense.

The notebooks run through papermill (as `python -m disentkit.notebooks` runs them) with small parameters: a few
steps, one or two seeds, `scale` small. They run on the bundled toyworld model when its weights are installed, else
on a tiny random-weight pipeline saved to disk (and a tiny CLIP for the learning notebooks); the checks below hold
for both. A notebook that fails is reported with the cell that raised and its exception.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import nbformat
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import disentkit as dk
from disentkit import notebooks as runner
from disentkit.pipeline import toyworld_dir

STEPS = 3
NOTEBOOKS = [p.stem for p in runner.find_notebooks()]
HAVE_TOYWORLD = (toyworld_dir() / "pipeline" / "model_index.json").is_file()
HAVE_EVALUATOR = (toyworld_dir() / "evaluator" / "model.safetensors").is_file()
ATTRIBUTES_09 = ["smiling", "at night"]  # on the tiny model with the evaluator: two toy attributes


def test_every_notebook_is_here():
    expected = ["01_tour", "02_fixed_noise", "03_switch_sweep", "04_when_does_it_appear", "05_soft_mixing",
                "06_learning_lambda", "07_transfer", "08_edit_your_image", "09_measuring_disentanglement",
                "10_paper_pairs"]  # fmt: skip
    assert NOTEBOOKS == expected


# ---- the committed files -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean_and_parametrised(name):
    nb = nbformat.read(runner.NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for k, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {k} was committed with outputs; run notebooks/_build.py"
        assert cell.execution_count is None, f"{name}: code cell {k} has an execution count"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", []), f"{name}: the first code cell must be tagged 'parameters'"
    for knob in ("model", "device", "steps", "seeds", "height", "width", "scale", "out_dir"):
        assert f"\n{knob} = " in "\n" + first.source, f"{name}: parameter {knob!r} missing from the parameters cell"
    assert nb.cells[0].cell_type == "markdown", f"{name}: a notebook starts by saying what it shows"


def test_notebooks_match_their_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_notebooks", runner.NOTEBOOK_DIR / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.build(check=True) == 0, "notebooks/*.ipynb differ from notebooks/_build.py; run it"


# ---- running them ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_setup(tmp_path_factory):
    """(model, clip, use_evaluator): toyworld when installed, else a tiny saved pipeline and a tiny CLIP."""
    if HAVE_TOYWORLD:
        return "toyworld", None, None
    from disentkit.losses import save_tiny_clip
    from disentkit.testing import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny_models")
    model = save_tiny_pipeline("sd1", root / "sd1", seed=0)
    clip = save_tiny_clip(root / "clip", seed=0)
    # The evaluator reads any image; on the tiny model its numbers mean nothing, but its cells get exercised.
    return str(model), str(clip), True if HAVE_EVALUATOR else False


@pytest.fixture(scope="module")
def executed(model_setup, tmp_path_factory):
    """Run every notebook once (two at a time: each kernel is its own process) and return {name: NotebookRun}."""
    model, clip, use_evaluator = model_setup
    out = tmp_path_factory.mktemp("notebooks")
    schedule = dk.MixSchedule.switch(STEPS, 1, after=1.1).with_meta(steps=STEPS)
    schedule_path = schedule.save(out / "given_schedule.json")
    common = {"model": model, "steps": STEPS, "seeds": [0], "scale": 0.1, "use_evaluator": use_evaluator}
    if use_evaluator:
        # The evaluator judges toyworld captions; give the tiny model toy prompts so its cells have a question.
        common.update(c0="a photo of a face", c1="a photo of a face, smiling")
    extra = {
        "01_tour": {"clip": clip},
        "06_learning_lambda": {"clip": clip, "iters": 10, "floors": 10.0},
        "07_transfer": {"clip": clip, "seeds": [10, 11], "schedule_path": str(schedule_path)},
        "09_measuring_disentanglement": {"attributes": ATTRIBUTES_09} if use_evaluator else {},
    }
    # One torch thread per kernel: two kernels share the two cores instead of fighting over them.
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {
                name: pool.submit(runner.run_notebook, runner.NOTEBOOK_DIR / f"{name}.ipynb", out,
                                  {**common, **extra.get(name, {})}, False, 600)
                for name in NOTEBOOKS
            }  # fmt: skip
            return {name: f.result() for name, f in futures.items()}
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


def _ok(executed, name) -> runner.NotebookRun:
    run = executed[name]
    assert run.ok, f"notebook {name} failed at {run.error} (executed copy: {run.executed})"
    return run


def _png(run, filename) -> Image.Image:
    path = run.out_dir / filename
    assert path.is_file(), f"{run.name} did not write {filename}; it wrote {run.files}"
    image = Image.open(path)
    assert image.format == "PNG" and min(image.size) > 32
    return image


def _csv(run, filename) -> pd.DataFrame:
    path = run.out_dir / filename
    assert path.is_file(), f"{run.name} did not write {filename}; it wrote {run.files}"
    return pd.read_csv(path)


def _learned(run, filename="learned_schedule.json") -> dk.MixSchedule:
    schedule = dk.MixSchedule.load(run.out_dir / filename)
    assert schedule.steps == STEPS and np.isfinite(schedule.weights.numpy()).all()
    return schedule



@pytest.mark.slow
def test_01_tour(executed):
    run = _ok(executed, "01_tour")
    for name in ("fixed_noise.png", "edit.png", "learned.png", "lambda.png"):
        _png(run, name)
    schedule = _learned(run)
    assert schedule.label == "learned" and len(schedule.meta["prompts"]) == 2


@pytest.mark.slow
def test_02_fixed_noise_replays_exactly(executed):
    run = _ok(executed, "02_fixed_noise")
    replay = _csv(run, "replay.csv")
    assert sorted(replay["eta"]) == [0.0, 1.0]
    assert (replay[["again", "loaded"]] == 0).all().all(), f"a replay differed:\n{replay}"
    _png(run, "seeds_by_prompt.png")
    _png(run, "step_noise.png")


@pytest.mark.slow
def test_03_switch_sweep_metrics(executed):
    run = _ok(executed, "03_switch_sweep")
    m = _csv(run, "switch_metrics.csv")
    assert m["switch"].min() == 0 and m["switch"].max() == STEPS and m["switch"].nunique() >= 3
    # k = N is the pure c0 image and k = 0 the pure c1 image: their distances to themselves are exactly zero
    assert (m.loc[m["switch"] == STEPS, "dist_to_c0"] == 0).all()
    assert (m.loc[m["switch"] == 0, "dist_to_c1"] == 0).all()
    assert m[["dist_to_c0", "dist_to_c1"]].stack().between(0, 1).all()
    for col in ("content_kept", "style_reached"):
        if col in m:
            assert m[col].between(0, 1).all()
    if HAVE_EVALUATOR:
        assert "style_reached" in m
        _png(run, "evaluator_curves.png")
    _png(run, "switch_grid.png")
    _png(run, "switch_curves.png")
    # the slider explorer was displayed as a widget
    nb = nbformat.read(run.executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


@pytest.mark.slow
def test_04_trajectory_parting(executed):
    run = _ok(executed, "04_when_does_it_appear")
    p = _csv(run, "parting.csv")
    assert p["step"].tolist() == list(range(STEPS))
    assert (p["x0_gap"] >= 0).all()
    assert p["relative"].iloc[-1] == pytest.approx(1.0)  # relative to the last step's gap
    _png(run, "trajectory.png")
    _png(run, "parting.png")


@pytest.mark.slow
def test_05_soft_mixing(executed):
    run = _ok(executed, "05_soft_mixing")
    for name in ("schedules.png", "soft_grid.png", "per_token.png", "editor_preview.png"):
        _png(run, name)
    nb = nbformat.read(run.executed, as_version=4)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in last.outputs)


@pytest.mark.slow
def test_06_learning_lambda(executed):
    run = _ok(executed, "06_learning_lambda")
    history = _csv(run, "history.csv")
    iters = max(1, round(10 * 0.1))
    assert history["iteration"].tolist() == list(range(iters + 1))  # one row per iteration, plus the result
    assert np.isfinite(history["loss"]).all()
    # floors=10: each term got a per-seed floor at its start value, silent on the start itself
    assert history.loc[0, ["dir_floor", "perc_floor"]].tolist() == pytest.approx([0, 0], abs=1e-5)
    learned = _learned(run)
    np.testing.assert_allclose(learned.weights.numpy(), history[[f"lambda_{i}" for i in range(STEPS)]].iloc[-1], rtol=1e-5)
    for name in ("loss.png", "lambda.png", "images.png"):
        _png(run, name)


@pytest.mark.slow
def test_07_transfer(executed):
    run = _ok(executed, "07_transfer")
    metrics = _csv(run, "transfer_metrics.csv")
    assert metrics["seed"].tolist() == [10, 11]
    if "perceptual" in metrics:
        assert (metrics["perceptual"] >= 0).all()
    _png(run, "transfer_grid.png")


@pytest.mark.slow
def test_08_inversion_reconstructs(executed):
    run = _ok(executed, "08_edit_your_image")
    rec = _csv(run, "reconstruction.csv").set_index("method")
    assert set(rec.index) == {"ddim", "exact"}
    # exact inversion gives back what the VAE can represent (the round trip), up to float rounding
    assert rec.loc["exact", "mae_to_vae_roundtrip"] < 0.01, f"exact inversion did not reconstruct:\n{rec}"
    assert rec.loc["ddim", "mae_to_vae_roundtrip"] >= rec.loc["exact", "mae_to_vae_roundtrip"] - 1e-6
    assert rec["mae_to_input"].between(0, 1).all()
    _png(run, "input.png")
    _png(run, "edit.png")


@pytest.mark.slow
def test_09_attribute_by_step(executed, model_setup):
    run = _ok(executed, "09_measuring_disentanglement")
    runs = _csv(run, "attribute_by_step.csv")
    model, _, use_evaluator = model_setup
    attributes = runner.default_attributes(model) if HAVE_TOYWORLD or not use_evaluator else ATTRIBUTES_09
    assert sorted(runs["attribute"].unique()) == sorted(attributes)
    per_attribute = runs.groupby("attribute")["switch"].nunique()
    assert (per_attribute >= 3).all()
    assert (runs.loc[runs["switch"] == STEPS, "dist_to_c0"] == 0).all()
    if "style_reached" in runs:
        assert runs["style_reached"].between(0, 1).all() and runs["content_kept"].between(0, 1).all()
    _png(run, "style_heatmap.png")
    _png(run, "content_heatmap.png")


@pytest.mark.slow
def test_10_paper_pairs(executed):
    run = _ok(executed, "10_paper_pairs")
    table = _csv(run, "pairs.csv")
    expected = runner.paper_pairs("toyworld" if HAVE_TOYWORLD else "tiny").head(len(table))
    assert len(table) >= 2
    assert table["c1"].tolist() == expected["c1"].tolist()
    assert table["switch"].tolist() == [round(k * STEPS / 50) for k in expected["c0_steps"]]
    assert (table[["dist_edit_to_c0", "dist_edit_to_c1"]] >= 0).all().all()
    _png(run, "pairs_grid.png")


# ---- the runner itself ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_runner_exports_html(executed, tmp_path):
    run = executed["04_when_does_it_appear"]
    page = runner.export_html(run.executed, tmp_path / "page.html").read_text()
    assert "<html" in page and "data:image/png;base64" in page  # figures are embedded, the page stands alone


def test_runner_reports_the_failing_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("y = 2"),
        nbformat.v4.new_code_cell("x / 0"),
    ])  # fmt: skip
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "src" / "01_broken.ipynb"
    src.parent.mkdir()
    nbformat.write(nb, src)
    run = runner.run_notebook(src, tmp_path / "out", {"out_dir": str(tmp_path / "o")}, html=True)
    assert not run.ok and run.failed_cell is not None
    assert "ZeroDivisionError" in run.error and f"cell {run.failed_cell}" in run.error
    assert run.html is not None and "ZeroDivisionError" in run.html.read_text()  # the page shows the traceback


def test_runner_cli_parses_parameters(monkeypatch, tmp_path):
    seen = {}
    def fake_run_all(out, params, only, folder, html):
        seen.update(params=params, only=only)
        return []

    monkeypatch.setattr(runner, "run_all", fake_run_all)
    assert runner.main(["--out", str(tmp_path), "--quick", "--only", "03", "-p", "steps=7", "-p", "c0=a photo of a cat",
                        "--model", "toyworld"]) == 0  # fmt: skip
    assert seen["params"]["steps"] == 7 and seen["params"]["seeds"] == [0] and seen["params"]["model"] == "toyworld"
    assert seen["params"]["c0"] == "a photo of a cat" and seen["only"] == ["03"]
    with pytest.raises(SystemExit):
        runner.main(["--only", "99"])
