"""Widget logic without a browser: callbacks change state, and the images the widgets show change with it."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import disentkit as dk
from disentkit import widgets

STEPS = 3


@pytest.fixture(scope="module")
def setup(sd1_pipe):
    cond = dk.encode(sd1_pipe, "a photo of a face", "a photo of a face, smiling")
    tape = dk.NoiseTape.from_seed(sd1_pipe, [5, 6], steps=STEPS)
    return sd1_pipe, cond, tape


def _png(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"))


def test_to_png_enlarges_pixel_exactly():
    img = Image.fromarray(np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3))
    big = _png(widgets.to_png(img, size=16))
    assert big.shape == (16, 16, 3)
    np.testing.assert_array_equal(big[::4, ::4], np.asarray(img))  # nearest: each pixel becomes a 4x4 block
    assert _png(widgets.to_png(torch.rand(3, 40, 40), size=16)).shape == (40, 40, 3)  # never shrinks


def test_switch_explorer_shows_the_image_of_each_switch_step(setup):
    pipe, cond, tape = setup
    ex = widgets.SwitchExplorer(pipe, cond, tape, seed_index=1)
    assert ex.switch_steps == list(range(STEPS + 1))
    # the cached images are exactly what sample() gives for that switch step and that seed
    ref = dk.sample(pipe, cond, dk.MixSchedule.switch(STEPS, 1), tape.select(1), progress=False).images[0]
    np.testing.assert_array_equal(np.asarray(ex.images[1]), np.asarray(ref))

    ex.set_switch(0)
    pure_c1 = ex.image.value
    assert "pure c1" in ex.caption.value
    ex.set_switch(STEPS)
    pure_c0 = ex.image.value
    assert "pure c0" in ex.caption.value and ex.switch == STEPS
    assert pure_c0 != pure_c1  # moving the slider changed the displayed image
    np.testing.assert_array_equal(_png(pure_c0)[:: 256 // 32, :: 256 // 32], np.asarray(ex.images[STEPS]))
    # the slider itself drives the same path as set_switch
    ex.slider.value = 1
    assert ex.image.value == widgets.to_png(ex.images[1]) and "switch@1" in ex.caption.value
    with pytest.raises(ValueError, match="not sampled"):
        ex.set_switch(STEPS + 5)


def test_switch_explorer_from_a_finished_result_samples_nothing(setup, monkeypatch):
    pipe, cond, tape = setup
    res = dk.sample(pipe, cond, [dk.MixSchedule.switch(STEPS, k) for k in (0, 2)], tape, progress=False)
    monkeypatch.setattr(widgets, "sample", lambda *a, **k: pytest.fail("the explorer sampled"))
    ex = widgets.SwitchExplorer(result=res, seed_index=1)
    assert ex.switch_steps == [0, 2]
    ex.set_switch(2)
    assert ex.image.value == widgets.to_png(res.image(schedule=1, seed=1))
    bad = dk.sample(pipe, cond, dk.MixSchedule.constant(STEPS, 0.5), tape, progress=False)
    with pytest.raises(ValueError, match="not a switch schedule"):
        widgets.SwitchExplorer(result=bad)


def test_switch_explorer_from_images_shows_them_as_given(monkeypatch):
    monkeypatch.setattr(widgets, "sample", lambda *a, **k: pytest.fail("the explorer sampled"))
    tiles = {k: Image.new("RGB", (24, 16), (40 * k, 0, 0)) for k in (0, 3, 5)}  # a map strip's tiles, not square
    ex = widgets.SwitchExplorer(images=tiles, steps=5)
    assert ex.switch_steps == [0, 3, 5] and ex.switch == 3
    assert ex.image.value == widgets.to_png(tiles[3]) and "c0 for steps 0..2 (3 steps), c1 for the last 2" in ex.caption.value
    ex.set_switch(5)
    assert ex.image.value == widgets.to_png(tiles[5]) and "pure c0" in ex.caption.value
    with pytest.raises(dk.errors.OptionError, match="not sampled"):
        ex.set_switch(4)
    for bad in ({"images": tiles}, {"images": {}, "steps": 5}, {"images": tiles, "steps": 4}):
        with pytest.raises(dk.errors.OptionError, match="steps="):
            widgets.SwitchExplorer(**bad)


def test_curve_from_points_interpolates_in_sampling_time():
    s = widgets.curve_from_points([0.0, 1.0], 5)
    np.testing.assert_allclose(s.weights.numpy(), [0, 0.25, 0.5, 0.75, 1.0])
    s = widgets.curve_from_points([0.0, 0.0, 1.2], 5)
    np.testing.assert_allclose(s.weights.numpy(), [0, 0, 0, 0.6, 1.2], atol=1e-6)
    with pytest.raises(ValueError):
        widgets.curve_from_points([1.0], 5)


def test_lambda_editor_redraws_the_curve_and_previews_on_click(setup):
    pipe, cond, tape = setup
    ed = widgets.LambdaEditor(pipe, cond, tape, points=(0.0, 0.0, 1.0))
    assert ed.image.value == b"" and ed.last_result is None  # nothing sampled before the button
    curve_before = ed.curve.value
    ed.set_points([0.0, 1.0, 1.2])
    assert ed.curve.value != curve_before
    np.testing.assert_allclose(ed.schedule.weights.numpy(), [0.0, 1.0, 1.2], atol=1e-6)

    result = ed.on_preview()  # what the button's click calls
    ref = dk.sample(pipe, cond, dk.MixSchedule.from_array([0.0, 1.0, 1.2]), tape.select(0), progress=False)
    np.testing.assert_array_equal(np.asarray(result.images[0]), np.asarray(ref.images[0]))
    assert ed.image.value == widgets.to_png(ref.images[0])
    first = ed.image.value
    ed.sliders[0].value = 1.0  # a slider change alone does not sample
    assert ed.image.value == first
    ed.button.click()  # the real button path
    assert ed.image.value != first
    with pytest.raises(ValueError):
        ed.set_points([0.0])


def test_compare_shows_both_images_and_their_difference():
    black, white = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (255, 255, 255))
    cmp = widgets.Compare({"black": black, "white": white, "black2": black.copy()})
    assert cmp.left.value == "black" and cmp.right.value == "black2"
    assert cmp.difference == 0.0
    cmp.select("black", "white")
    assert cmp.difference == pytest.approx(1.0)
    assert cmp.left_image.value == widgets.to_png(black) and cmp.right_image.value == widgets.to_png(white)
    with pytest.raises(KeyError):
        cmp.select("black", "grey")


def test_live_plot_collects_rows_and_draws():
    plot = widgets.LivePlot(x="iter")
    plot({"iter": 0, "loss": 1.0, "note": "a"})
    first = plot.image.value
    assert bytes(first).startswith(b"\x89PNG")
    plot(pd.Series({"iter": 1, "loss": 0.5}))
    assert list(plot.history["loss"]) == [1.0, 0.5]
    assert plot.image.value != first


def test_widgets_display_through_ipython(setup):
    cmp = widgets.Compare({"a": Image.new("RGB", (4, 4))})
    bundle = cmp._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
