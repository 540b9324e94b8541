"""The metrics compute what their docstrings say, one value per image: the formulas against hand computations with a
tiny random CLIP, zero for the reference itself, reference broadcasting, the alternatives derived from toyworld
captions, any vision backbone from a folder, and typed errors for an unknown metric, a missing package or an
offline hub id."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch
import torch.nn.functional as F

from disentkit import metrics as M
from disentkit.errors import MissingDependencyError, ModelNotFoundError, UnknownMetricError
from disentkit.losses import CLIPStructureLoss, DirectionalCLIPLoss, tiny_clip


@pytest.fixture(scope="module")
def clip():
    return tiny_clip(seed=0)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 3, 32, 32, generator=g)  # row 0 plays the reference


def test_target_probability_is_clips_softmax(clip, images):
    c1, alts = "a photo of a face, smiling", ["a photo of a face", "a photo of a face, frowning"]
    p = M.target_probability(clip, images, c1, alts)
    with torch.no_grad():
        logits = clip.model.logit_scale.exp() * clip.encode_images(images) @ clip.encode_texts([c1, *alts]).T
    assert p.shape == (5,)
    torch.testing.assert_close(p, logits.softmax(-1)[:, 0])
    assert ((p >= 0) & (p <= 1)).all()


def test_directional_similarity_is_one_minus_the_loss_and_zero_for_the_reference(clip, images):
    ref = images[:1]
    d = M.directional_similarity(clip, images, ref, "a photo of a face", "a photo of a face, smiling")
    loss = DirectionalCLIPLoss(clip, "a photo of a face", "a photo of a face, smiling")(images, ref)
    torch.testing.assert_close(d[1:], 1 - loss[1:])
    assert d[0] == 0  # the reference did not move: no direction
    assert ((d >= -1) & (d <= 1)).all()


def test_text_similarity_is_the_cosine(clip, images):
    s = M.text_similarity(clip, images, "a photo of a star")
    with torch.no_grad():
        want = F.cosine_similarity(clip.encode_images(images), clip.encode_texts(["a photo of a star"]), dim=-1)
    torch.testing.assert_close(s, want)


def test_content_distances_are_zero_for_the_reference_and_broadcast_it(clip, images):
    ref = images[:1]
    for fn in (lambda x, r: M.structure_distance(clip, x, r), M.pixel_distance):
        d = fn(images, ref)
        assert d.shape == (5,) and d[0] == 0 and (d[1:] > 0).all()
        torch.testing.assert_close(d, fn(images, ref.expand_as(images)))
    want = CLIPStructureLoss(clip)(images, ref.expand_as(images)).sqrt()  # the root of the loss: an RMS
    torch.testing.assert_close(M.structure_distance(clip, images, ref), want)
    rmse = (images - ref).pow(2).flatten(1).mean(1).sqrt()
    torch.testing.assert_close(M.pixel_distance(images, ref), rmse)
    torch.testing.assert_close(M.latent_distance(images, ref), rmse)


def test_structure_distance_counts_layout_not_order(clip, images):
    """Swapping the batch order swaps the values: each image is judged on its own."""
    ref = images[:1]
    d = M.structure_distance(clip, images, ref)
    torch.testing.assert_close(M.structure_distance(clip, images.flip(0), ref), d.flip(0))


def test_alternatives_from_toyworld_captions():
    assert M.toy_target("a photo of a face", "a photo of a face, smiling") == ("expression", "smiling")
    assert M.toy_target("a photo of a square", "a sketch of a square") == ("rendering", "sketch")
    assert M.toy_target("a photo of a circle", "a photo of a circle, at night") == ("background", "night")
    assert M.toy_target("A photo of person", "A photo of person, smiling") is None  # not a toyworld caption
    alts = M.alternatives("a photo of a circle", "a photo of a circle, red")
    assert alts == ["a photo of a circle, green", "a photo of a circle, blue", "a photo of a circle, yellow",
                    "a photo of a circle, purple", "a photo of a circle, orange"]  # fmt: skip
    assert "a photo of a circle" not in alts  # c0 is true of a red circle too
    assert M.alternatives("a photo of a face", "a photo of a face, smiling") == [
        "a photo of a face, neutral", "a photo of a face, frowning"]  # fmt: skip
    assert M.alternatives("a photo of a circle", "a photo of a circle, at night", ("background", "night")) == [
        "a photo of a circle, in daylight", "a photo of a circle, in the snow", "a photo of a circle, at sunset"]
    assert M.alternatives("a photo of a star", "a sketch of a star") == ["a photo of a star"]  # c0 is the other value
    assert M.alternatives("A photo of person", "A photo of person, smiling") == ["A photo of person"]


def test_unknown_metric_names_the_known_ones():
    assert M.check_metrics("clip_prob, pixel") == ["clip_prob", "pixel"]
    with pytest.raises(UnknownMetricError, match="struct_clip"):
        M.check_metrics(["clip_prob", "ssim"])
    with pytest.raises(ValueError):  # the builtin it refines
        M.check_metrics([])


def test_every_metric_says_its_direction_and_range():
    for name, info in M.METRICS.items():
        assert info.kind in ("style", "content") and info.range[0] < info.range[1], name
        assert info.higher_is_better == (info.kind == "style")


@pytest.mark.skipif(importlib.util.find_spec("lpips") is not None, reason="lpips is installed here")
def test_lpips_without_the_package_is_a_typed_error(images):
    with pytest.raises(MissingDependencyError, match="pip install lpips"):
        M.lpips_distance(images, images[:1])
    with pytest.raises(MissingDependencyError):
        M.Scorer(["lpips", "clip_prob"], clip="/nonexistent/clip")  # before any CLIP is looked for


def test_any_vision_backbone_from_a_folder(tmp_path, images):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          image_size=32, patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(tmp_path / "dino")
    backbone = M.load_backbone(tmp_path / "dino")
    assert backbone.image_size == 32 and backbone.layers == (2,) and backbone.mean == M.IMAGENET_MEAN
    d = M.structure_distance(backbone, images, images[:1])
    assert d.shape == (5,) and d[0] == 0 and (d[1:] > 0).all()
    scorer = M.Scorer(["struct_dino", "pixel"], backbone=backbone)
    df = scorer(images, images[:1], "a photo of a face", "a photo of a face, smiling")
    assert list(df.columns) == ["struct_dino", "pixel"] and len(df) == 5
    torch.testing.assert_close(torch.tensor(df["struct_dino"].to_numpy()), d.double())


def test_a_clip_folder_works_as_a_backbone(tmp_path, images):
    from disentkit.losses import save_tiny_clip

    backbone = M.load_backbone(save_tiny_clip(tmp_path / "clip"))
    assert backbone.mean == M.CLIP_MEAN and backbone.layers == (2,)
    assert M.structure_distance(backbone, images, images[:1])[0] == 0


def test_offline_hub_id_fails_fast_naming_the_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="--backbone"):
        M.load_backbone("nobody/no-such-dino", flag="--backbone")
    with pytest.raises(ModelNotFoundError, match="clip="):
        M.Scorer(["clip_prob"], clip="nobody/no-such-clip")
    with pytest.raises(ModelNotFoundError, match="backbone="):
        M.Scorer(["struct_dino"])  # asked for, not given
    assert time.perf_counter() - start < 10  # no retries against an unreachable hub


def test_scorer_columns_follow_the_metrics(clip, images):
    scorer = M.Scorer(["pixel", "clip_text", "latent"], clip=clip)
    df = scorer(images, images[:1], "a photo of a face", "a photo of a face, smiling", latents=images,
                reference_latents=images[:1])  # fmt: skip
    assert list(df.columns) == ["pixel", "clip_text", "latent"] and df["pixel"].iloc[0] == 0
    with pytest.raises(ValueError, match="latents"):
        scorer(images, images[:1], "a", "b")
