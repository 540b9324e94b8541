"""Plots read results and draw them; these tests check they draw the right things in the right places."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import disentkit as dk
from disentkit import plotting


def _solid(rgb, size=8):
    return Image.new("RGB", (size, size), rgb)


def test_to_array_reads_every_image_kind_the_same():
    pil = _solid((255, 0, 0))
    tensor = torch.zeros(3, 8, 8)
    tensor[0] = 1.0
    uint8 = np.zeros((8, 8, 3), np.uint8)
    uint8[..., 0] = 255
    for img in (pil, tensor, uint8, uint8.astype(np.float32) / 255):
        a = plotting.to_array(img)
        assert a.shape == (8, 8, 3) and a.dtype == np.float32
        np.testing.assert_allclose(a[0, 0], [1, 0, 0])
    with pytest.raises(ValueError):
        plotting.to_array(torch.zeros(5, 8, 8))


def test_image_grid_places_images_row_major_with_labels():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    fig = plotting.image_grid([_solid(c) for c in colors], rows=2, cols=3, row_labels=["a", "b"],
                              col_labels=["x", "y", "z"], title="T")  # fmt: skip
    axes = fig.axes
    assert len(axes) == 6
    # row-major: the 4th image (yellow) is in row 1, column 0; the 6th cell is empty
    np.testing.assert_allclose(axes[3].images[0].get_array()[0, 0], [1, 1, 0])
    assert len(axes[5].images) == 0
    assert axes[0].get_ylabel() == "a" and axes[3].get_ylabel() == "b"
    assert [ax.get_title() for ax in axes[:3]] == ["x", "y", "z"]
    assert fig._suptitle.get_text() == "T"
    with pytest.raises(ValueError, match="do not fit"):
        plotting.image_grid([_solid(c) for c in colors], rows=1, cols=2)
    with pytest.raises(ValueError, match="row_labels"):
        plotting.image_grid([_solid(c) for c in colors], rows=2, cols=3, row_labels=["a"])


def test_save_grid_creates_folders_and_writes_a_png(tmp_path):
    path = plotting.save_grid(torch.rand(4, 3, 8, 8), tmp_path / "deep" / "er" / "grid.png", rows=2)
    assert path.is_file()
    assert Image.open(path).format == "PNG"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # the atomic temp file is gone


def test_save_table_round_trips(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 0.25]})
    path = plotting.save_table(df, tmp_path / "t" / "x.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), df)


def test_lambda_curves_plots_each_schedule_with_its_weights():
    a, b = dk.MixSchedule.switch(10, 4), dk.MixSchedule.ramp(10, 2, 8, lo=-0.2, hi=1.2)
    fig = plotting.lambda_curves([a, b])
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() in (a.label, b.label)]
    assert [ln.get_label() for ln in lines] == [a.label, b.label]
    np.testing.assert_allclose(lines[0].get_ydata(), a.weights.numpy())
    np.testing.assert_allclose(lines[1].get_ydata(), b.weights.numpy())
    np.testing.assert_allclose(lines[0].get_xdata(), np.arange(10))
    # the same from a DataFrame
    df = pd.concat([a.to_dataframe(), b.to_dataframe()])
    fig2 = plotting.lambda_curves(df)
    assert len([ln for ln in fig2.axes[0].get_lines() if ln.get_label() in (a.label, b.label)]) == 2


def test_heatmap_pivots_and_averages():
    df = pd.DataFrame({"attr": ["x", "x", "x", "y"], "step": [0, 0, 1, 0], "p": [0.2, 0.4, 1.0, 0.5]})
    fig = plotting.heatmap(df, "attr", "step", "p")
    data = fig.axes[0].images[0].get_array()
    assert data.shape == (2, 2)
    assert data[0, 0] == pytest.approx(0.3)  # mean of the duplicates
    assert data[0, 1] == pytest.approx(1.0) and data[1, 0] == pytest.approx(0.5)
    assert np.ma.is_masked(data[1, 1]) or np.isnan(data[1, 1])
    with pytest.raises(KeyError, match="missing"):
        plotting.heatmap(df, "attr", "missing", "p")


def test_metric_curves_mean_over_seeds_and_hue():
    df = pd.DataFrame({"k": [0, 0, 1, 1], "seed": [0, 1, 0, 1], "kept": [0.2, 0.4, 0.6, 0.8]})
    fig = plotting.metric_curves(df, "k", "kept")
    (line,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), [0.3, 0.7])
    fig = plotting.metric_curves(df, "k", ["kept"], hue="seed")
    assert len(fig.axes[0].get_lines()) == 2


def test_trajectory_strip_shape_and_labels():
    fig = plotting.trajectory_strip(torch.rand(3, 2, 3, 8, 8), [0, 4, 9], run_labels=["c0", "c1"])
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == ["step 0", "step 4", "step 9"]
    with pytest.raises(ValueError):
        plotting.trajectory_strip(torch.rand(3, 2, 3, 8, 8), [0, 4])


def test_result_grid_puts_each_run_in_its_cell(sd1_pipe):
    cond = dk.encode(sd1_pipe, "a photo of a face", "a photo of a face, smiling")
    tape = dk.NoiseTape.from_seed(sd1_pipe, [3, 7], steps=3)
    scheds = [dk.MixSchedule.switch(3, k) for k in (0, 3)]
    res = dk.sample(sd1_pipe, cond, scheds, tape, progress=False)
    fig = plotting.result_grid(res, rows="schedule", cols="seed")
    assert len(fig.axes) == 4
    assert fig.axes[0].get_ylabel() == "switch@0" and fig.axes[2].get_ylabel() == "switch@3"
    assert [ax.get_title() for ax in fig.axes[:2]] == ["seed 3", "seed 7"]
    # cell (row 1, col 0) is schedule 1, seed 0
    expected = plotting.to_array(res.image(schedule=1, seed=0))
    np.testing.assert_allclose(fig.axes[2].images[0].get_array(), expected)
    # transposed
    fig = plotting.result_grid(res, rows="seed", cols="schedule")
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), plotting.to_array(res.image(schedule=1, seed=0)))
    with pytest.raises(ValueError):
        plotting.result_grid(res, rows="seed", cols="seed")
