"""The toyworld evaluator: the bundled weights read fresh renders correctly, and the mask geometry is exact."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from disentkit.errors import DisentkitError, InvalidImageError
from disentkit.toyworld.evaluator import (
    Evaluator,
    MaskInputError,
    as_image_batch,
    centroid_shift,
    mask_centroid,
    mask_iou,
)
from disentkit.toyworld.evaluator_train import HELDOUT_SEED, TRAIN_SEED, VAL_SEED, render_scenes, score

TEST_SEED = 4242  # neither the training pool, the validation set nor the report's held-out set
assert TEST_SEED not in (TRAIN_SEED, VAL_SEED, HELDOUT_SEED)


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator.load()


@pytest.fixture(scope="module")
def renders():
    return render_scenes(64, TEST_SEED)


# --- the bundled weights ------------------------------------------------------------------------------------------


def test_bundled_evaluator_reads_fresh_renders(evaluator, renders):
    images, masks, labels = renders
    s = score(evaluator, images, masks, labels)
    low = {k: v for k, v in s.items() if k.startswith("acc_") and v < 0.9}
    assert not low, f"accuracy below 90% on fresh renders: {low}"
    assert s["mask_iou"] > 0.85


def test_dataframe_has_labels_probabilities_and_masks(evaluator, renders):
    images, masks, labels = renders
    df = evaluator(images[:8])
    assert len(df) == 8
    for f, values in evaluator.factors.items():
        p = df[[f"p_{f}_{v}" for v in values]].to_numpy()
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
        assert f in df and f"{f}_prob" in df
    # expression only exists for faces
    assert all((e is None) == (k != "face") for e, k in zip(df["expression"], df["kind"]))
    assert df["mask"][0].shape == (64, 64) and df["mask"][0].dtype == bool
    assert evaluator.mask(images[:8]).shape == (8, 64, 64)


def test_input_formats_agree(evaluator, renders):
    images = renders[0][:2]
    as_numpy = evaluator.predict(images)[0]["kind"]
    as_pil = evaluator.predict([Image.fromarray(im) for im in images])[0]["kind"]
    as_torch = evaluator.predict(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)[0]["kind"]
    torch.testing.assert_close(as_pil, as_numpy)
    torch.testing.assert_close(as_torch, as_numpy)
    # a larger image is resized to 64x64 and still read the same way
    big = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    big = torch.nn.functional.interpolate(big, scale_factor=2, mode="nearest")  # (2,3,128,128)
    assert (evaluator.predict(big)[0]["kind"].argmax(1) == as_numpy.argmax(1)).all()


def test_content_kept_and_style_reached(evaluator, renders):
    images = renders[0][:4]
    kept = evaluator.content_kept(images, images)
    assert (kept["mask_iou"] == 1).all() and (kept["shift_px"] == 0).all() and kept["kind_agree"].all()
    p = evaluator.style_reached(images, "background", "snow")
    assert p.shape == (4,) and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(KeyError, match="choose one of"):
        evaluator.style_reached(images, "background", "rain")


def test_save_load_roundtrip(evaluator, renders, tmp_path):
    evaluator.save(tmp_path / "ev")
    again = Evaluator.load(tmp_path / "ev")
    torch.testing.assert_close(again.predict(renders[0][:4])[0]["color"], evaluator.predict(renders[0][:4])[0]["color"])


# --- input errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "cat.png",
        42,
        [],
        np.zeros((2, 64, 64, 4), np.uint8),  # RGBA numpy
        np.zeros((2, 64, 64, 3), np.int64),
        torch.zeros(2, 64, 64, 3),  # channels-last torch
        torch.full((1, 3, 64, 64), -1.0),  # [-1,1] VAE output
    ],
)
def test_non_images_raise_a_typed_error(bad):
    with pytest.raises(InvalidImageError):
        as_image_batch(bad)
    assert issubclass(InvalidImageError, DisentkitError)


# --- mask geometry on hand-made masks -----------------------------------------------------------------------------


def _box(y0, y1, x0, x1, size=8):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_iou_exact():
    a = _box(0, 2, 0, 4)  # 8 pixels
    b = _box(0, 2, 2, 6)  # 8 pixels, 4 shared
    assert mask_iou(a, b).item() == pytest.approx(4 / 12)
    assert mask_iou(a, a).item() == 1.0
    assert mask_iou(a, _box(4, 6, 4, 6)).item() == 0.0
    empty = np.zeros((8, 8), bool)
    assert mask_iou(empty, empty).item() == 1.0  # identical (empty) masks
    batch = mask_iou(np.stack([a, a]), np.stack([a, b]))
    assert batch.tolist() == pytest.approx([1.0, 1 / 3])
    with pytest.raises(MaskInputError):
        mask_iou(a, np.zeros((4, 4), bool))


def test_centroid_shift_exact():
    a = _box(0, 2, 0, 2)  # pixels (0..1, 0..1): centroid (x, y) = (0.5, 0.5)
    b = _box(3, 5, 4, 6)  # centroid (4.5, 3.5)
    assert mask_centroid(a)[0].tolist() == [0.5, 0.5]
    df = centroid_shift(a, b)
    assert isinstance(df, pd.DataFrame) and len(df) == 1
    row = df.iloc[0]
    assert (row.dx_px, row.dy_px) == (4.0, 3.0)
    assert row.shift_px == pytest.approx(5.0)
    assert row.shift_frac == pytest.approx(5.0 / 8)
    assert np.isnan(centroid_shift(a, np.zeros((8, 8), bool)).shift_px[0])
