"""The losses judge what they claim: the sign of the directional loss, zero distance for identical images,
differentiable CLIP preprocessing with the model's own statistics, and frozen loss networks."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from disentkit.errors import LossError, MissingDependencyError, ModelNotFoundError, OptionError
from disentkit.losses import (
    CLIP_MEAN,
    CLIPPerceptualLoss,
    CLIPPromptLoss,
    CLIPStructureLoss,
    DirectionalCLIPLoss,
    Hinge,
    LPIPSLoss,
    load_clip,
    paper_losses,
    prompt_losses,
    psnr,
    save_tiny_clip,
    tiny_clip,
    with_floors,
)


@pytest.fixture(scope="module")
def clip():
    return tiny_clip(seed=0)


class StubClip:
    """A 'CLIP' whose embeddings we know: text i -> unit vector e_i; an image -> its first 3 pixel values."""

    def encode_texts(self, texts):
        return torch.eye(3)[: len(texts)]

    def encode_images(self, pixels):
        return pixels.flatten(1)[:, :3]


def test_directional_loss_has_the_right_sign():
    loss = DirectionalCLIPLoss(StubClip(), "c0", "c1")  # text direction: e_1 - e_0
    reference = torch.zeros(1, 3, 1, 1)
    along = torch.tensor([-1.0, 1.0, 0.0]).view(1, 3, 1, 1)  # the image moved as the text did
    against = -along
    sideways = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert loss(along, reference).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(against, reference).item() == pytest.approx(2.0, abs=1e-6)
    assert loss(sideways, reference).item() == pytest.approx(1.0, abs=1e-6)


def test_prompt_loss_is_the_cross_entropy_of_clips_zero_shot_choice():
    stub = StubClip()
    stub.model = SimpleNamespace(logit_scale=torch.tensor(math.log(10.0)))  # logits = 10 x cosine
    loss = CLIPPromptLoss(stub, "smiling", ["neutral", "frowning", "smiling"])  # c1 itself is dropped from the rest
    assert loss.prompts == ["smiling", "neutral", "frowning"]
    is_target = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # embeds as text 0: the target
    is_other = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    values = loss(torch.cat([is_target, is_other]), None)
    expected_hit = -math.log(math.exp(10) / (math.exp(10) + 2))
    expected_miss = -math.log(1 / (math.exp(10) + 2))
    assert values.tolist() == pytest.approx([expected_hit, expected_miss], rel=1e-5, abs=1e-6)  # float32
    with pytest.raises(LossError, match="alternative"):
        CLIPPromptLoss(stub, "smiling", ["smiling"])


def test_prompt_losses_default_to_c0_as_the_alternative(clip):
    terms = prompt_losses(clip, "a photo of a face", "a photo of a face, smiling", beta=1.5)
    assert set(terms) == {"prompt", "perc"} and terms["perc"][0] == 1.5
    assert terms["prompt"][1].prompts == ["a photo of a face, smiling", "a photo of a face"]
    edited = torch.rand(2, 3, 32, 32, requires_grad=True)
    values = terms["prompt"][1](edited, torch.rand(2, 3, 32, 32))
    assert values.shape == (2,) and (values >= 0).all()
    values.sum().backward()
    assert edited.grad is not None and edited.grad.abs().sum() > 0


def test_prompt_losses_enough_stops_pushing_at_that_probability(clip):
    c0, c1 = "a photo of a face", "a photo of a face, smiling"
    images = torch.rand(4, 3, 32, 32)
    plain = prompt_losses(clip, c0, c1)["prompt"][1](images, None)
    enough = float(torch.exp(-plain.median()))  # about half the images are "sure enough" at this level
    hinged = prompt_losses(clip, c0, c1, enough=enough)["prompt"][1](images, None)
    torch.testing.assert_close(hinged, (plain + math.log(enough)).clamp_min(0))
    with pytest.raises(OptionError, match="probability"):
        prompt_losses(clip, c0, c1, enough=1.5)


def test_hinge_is_silent_below_its_floor_per_image():
    distance = lambda edited, reference: (edited - reference).flatten(1).abs().mean(1)  # noqa: E731
    reference = torch.zeros(3, 1, 1, 1)
    edited = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1, 1).requires_grad_(True)
    assert Hinge(distance, 0.5)(edited, reference).tolist() == pytest.approx([0.0, 0.0, 0.4])
    per_image = Hinge(distance, torch.tensor([0.0, 0.6, 0.95]))(edited, reference)
    assert per_image.tolist() == pytest.approx([0.1, 0.0, 0.0])
    per_image.sum().backward()
    assert edited.grad.flatten().tolist() == pytest.approx([1.0, 0.0, 0.0])  # only the image above its floor


def test_with_floors_adds_one_silent_floor_per_term_and_image():
    distance = lambda edited, reference: (edited - reference).flatten(1).abs().mean(1)  # noqa: E731
    brightness = lambda edited, reference: -edited.flatten(1).mean(1)  # noqa: E731
    reference = torch.zeros(2, 1, 1, 1)
    start = torch.tensor([0.2, 0.6]).view(2, 1, 1, 1)
    terms = with_floors({"content": (5.0, distance), "style": (1.0, brightness)}, start, reference, weight=10)
    assert list(terms) == ["content", "style", "content_floor", "style_floor"]
    assert [w for w, _ in terms.values()] == [5.0, 1.0, 50.0, 10.0]  # weight x the term's own weight
    for name in ("content_floor", "style_floor"):
        assert terms[name][1](start, reference).tolist() == [0.0, 0.0]  # silent where the optimisation starts
    # Image 0 moves away from the reference (worse content), image 1 towards it (better content, worse style).
    moved = torch.tensor([0.3, 0.5]).view(2, 1, 1, 1)
    assert terms["content_floor"][1](moved, reference).tolist() == pytest.approx([0.1, 0.0])
    assert terms["style_floor"][1](moved, reference).tolist() == pytest.approx([0.0, 0.1])
    with pytest.raises(LossError, match="one start image per reference image"):
        with_floors(terms, start[:1], reference)
    with pytest.raises(LossError, match="already hold content_floor"):  # floors on floors would be silent doubles
        with_floors(terms, start, reference)


def test_directional_loss_is_per_image_and_differentiable(clip):
    loss = DirectionalCLIPLoss(clip, "a photo of a face", "a photo of a face, smiling")
    reference = torch.rand(2, 3, 32, 32)
    edited = torch.rand(2, 3, 32, 32, requires_grad=True)
    values = loss(edited, reference)
    assert values.shape == (2,)
    assert ((values >= 0) & (values <= 2)).all()
    values.sum().backward()
    assert edited.grad is not None and edited.grad.abs().sum() > 0


def test_perceptual_loss_is_zero_for_the_same_image_and_grows_with_change(clip):
    loss = CLIPPerceptualLoss(clip)
    reference = torch.rand(1, 3, 32, 32)
    assert loss(reference.clone(), reference).item() == pytest.approx(0.0, abs=1e-6)
    small = loss((reference + 0.02 * torch.randn_like(reference)).clamp(0, 1), reference)
    large = loss(torch.rand(1, 3, 32, 32), reference)
    assert 0 < small.item() < large.item()
    assert all(1 <= k <= clip.model.config.vision_config.num_hidden_layers for k in loss.layers)


class PatchColourClip:
    """A 'CLIP' whose vision tokens are the mean colours of 8x8 patches (after a class token), one layer deep."""

    model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(num_hidden_layers=1)))

    def image_forward(self, pixels):
        patches = F.avg_pool2d(pixels, 8).flatten(2).transpose(1, 2)  # (R, L, 3)
        cls = torch.ones(len(pixels), 1, 3)
        return None, (patches, torch.cat([cls, patches], dim=1))


def test_structure_loss_sees_layout_not_colour():
    # A red square on a blue background, the same square recoloured (channels permuted: every token rotated the same
    # way, so which patches resemble which is unchanged), and the red square moved by one patch.
    scene = torch.zeros(1, 3, 32, 32)
    scene[:, 2] = 0.8
    scene[:, :, 8:24, 8:16] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)
    recoloured = scene[:, [1, 2, 0]]
    moved = torch.roll(scene, shifts=8, dims=3)
    clip = PatchColourClip()
    structure, perceptual = CLIPStructureLoss(clip), CLIPPerceptualLoss(clip, layers=[1])
    assert structure.layers == [1]
    assert structure(recoloured, scene).item() == pytest.approx(0.0, abs=1e-6)
    assert structure(moved, scene).item() > 0.01
    assert perceptual(recoloured, scene).item() > 0.1  # a feature distance counts the recolouring as change


def test_structure_loss_is_per_image_and_differentiable(clip):
    loss = CLIPStructureLoss(clip)
    reference = torch.rand(2, 3, 32, 32)
    assert loss(reference.clone(), reference).abs().max().item() < 1e-6
    edited = torch.rand(2, 3, 32, 32, requires_grad=True)
    values = loss(edited, reference)
    assert values.shape == (2,) and (values > 0).all()
    values.sum().backward()
    assert edited.grad is not None and edited.grad.abs().sum() > 0


def test_prompt_losses_content_term(clip):
    terms = prompt_losses(clip, "a photo of a face", "a photo of a face, smiling", beta=20.0, content="struct")
    assert set(terms) == {"prompt", "struct"} and terms["struct"][0] == 20.0
    assert isinstance(terms["struct"][1], CLIPStructureLoss)
    with pytest.raises(OptionError, match="perc' or 'struct"):
        prompt_losses(clip, "a photo of a face", "a photo of a face, smiling", content="lpips")


def test_preprocess_resizes_crops_and_normalises_differentiably(clip):
    pixels = torch.full((1, 3, 64, 96), 0.5, requires_grad=True)  # not square: short side to 32, centre crop
    x = clip.preprocess(pixels)
    assert x.shape == (1, 3, 32, 32)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(clip.std)
    assert torch.allclose(x[0, :, 5, 5], expected, atol=1e-5)
    x.sum().backward()
    assert pixels.grad is not None
    assert pixels.grad[..., :12].abs().sum() == 0  # the cropped-away left margin (16 px, less the filter) gets none


def test_load_clip_reads_the_folder_statistics_and_is_frozen(tmp_path):
    folder = save_tiny_clip(tmp_path / "clip", seed=1)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25] * 3}))
    clip = load_clip(folder)
    assert clip.mean == (0.5, 0.5, 0.5) and clip.std == (0.25, 0.25, 0.25)
    assert not any(p.requires_grad for p in clip.model.parameters())
    same = tiny_clip(seed=1)
    texts = ["a photo of a circle", "a photo of a circle, red"]
    assert torch.allclose(clip.encode_texts(texts), same.encode_texts(texts), atol=1e-6)


def test_load_clip_missing_folder_says_so(tmp_path):
    with pytest.raises(ModelNotFoundError, match="CLIP"):
        load_clip(tmp_path / "nothing-here")


def test_paper_losses_are_weighted_as_in_the_paper(clip):
    terms = paper_losses(clip, "a", "b", beta=0.03)
    assert terms["dir"][0] == 1.0 and terms["perc"][0] == 0.03


def test_paper_losses_take_lpips_or_your_own_perceptual_term(clip, monkeypatch):
    import sys
    import types

    calls = []

    class FakeLPIPS(torch.nn.Module):  # stands in for lpips.LPIPS, whose weights cannot be fetched here
        def __init__(self, net, verbose):
            super().__init__()
            self.net, self.scale = net, torch.nn.Parameter(torch.ones(()))

        def forward(self, a, b):
            calls.append((float(a.min()), float(a.max())))
            return ((a - b) * self.scale).pow(2).mean(dim=(1, 2, 3), keepdim=True)  # lpips: (R, 1, 1, 1)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    terms = paper_losses(clip, "a", "b", beta=0.03, perceptual="lpips")
    weight, lpips_loss = terms["perc"]
    assert weight == 0.03 and isinstance(lpips_loss, LPIPSLoss) and lpips_loss.net.net == "alex"
    assert not any(p.requires_grad for p in lpips_loss.net.parameters())
    edited, reference = torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    assert lpips_loss(edited, reference).tolist() == [4.0, 4.0]  # [0, 1] pixels are given to LPIPS as [-1, 1]
    assert calls == [(1.0, 1.0)]

    own = lambda edited, reference: (edited - reference).abs().mean(dim=(1, 2, 3))  # noqa: E731
    assert paper_losses(clip, "a", "b", perceptual=own)["perc"][1] is own
    with pytest.raises(OptionError, match="'clip', 'lpips'"):
        paper_losses(clip, "a", "b", perceptual="vgg")

    monkeypatch.setitem(sys.modules, "lpips", None)  # not installed: a typed error that names the way out
    with pytest.raises(MissingDependencyError, match="pip install lpips"):
        paper_losses(clip, "a", "b", perceptual="lpips")


def test_describe_loss_names_the_clip_by_where_it_came_from(tmp_path, monkeypatch):
    from disentkit.losses import describe_loss

    save_tiny_clip(tmp_path / "clips" / "mine")
    monkeypatch.chdir(tmp_path)
    relative, absolute = load_clip("clips/mine"), load_clip(tmp_path / "clips" / "mine")
    texts = ("a photo of a face", "a photo of a face, smiling")
    described = {describe_loss(DirectionalCLIPLoss(c, *texts)) for c in (relative, absolute)}
    assert described == {f"DirectionalCLIPLoss(clip={(tmp_path / 'clips' / 'mine').resolve()}, prompts={list(texts)})"}
    assert describe_loss(Hinge(CLIPPerceptualLoss(absolute, layers=[1]), 0.5)) == (
        f"Hinge(CLIPPerceptualLoss(clip={(tmp_path / 'clips' / 'mine').resolve()}, layers=[1]))")
    assert describe_loss(psnr) == "psnr()"


@pytest.mark.parametrize("size, smooth", [(64, False), (512, False), (640, False), (512, True)])
def test_preprocess_matches_clips_own_image_processor(size, smooth):
    import warnings

    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor

    from disentkit.losses import CLIP_STD, Clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers notes it falls back to PIL without torchvision
        processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                       image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3)  # fmt: skip
    blocks = np.random.default_rng(size).random((8, 10, 3))  # hard edges: where resampling kernels differ most
    nearest, bilinear = 0, 2  # PIL's resampling filters: blocky edges, or a smooth image
    image = np.array(Image.fromarray((blocks * 255).astype(np.uint8)).resize((size * 5 // 4, size),
                                                                             bilinear if smooth else nearest))
    expected = torch.from_numpy(processor(images=image, return_tensors="np")["pixel_values"])
    clip = SimpleNamespace(image_size=224, mean=CLIP_MEAN, std=CLIP_STD, device=torch.device("cpu"),
                           model=SimpleNamespace(dtype=torch.float32))  # fmt: skip
    got = Clip.preprocess(clip, torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    assert got.shape == expected.shape == (1, 3, 224, 224)
    error = (got - expected).abs()
    if size > 224:  # shrinking: the same kernel; what is left is the processor's rounding to 8 bits
        assert error.mean() < 0.006 and error.max() < 0.05, (float(error.mean()), float(error.max()))
    else:  # enlarging 64 px images (toy scenes) for a 224 px CLIP
        assert error.mean() < 0.005 and error.max() < 0.2, (float(error.mean()), float(error.max()))


def test_psnr():
    a = torch.zeros(1, 3, 4, 4)
    assert math.isinf(psnr(a, a).item())
    assert psnr(a, a + 0.1).item() == pytest.approx(20.0, abs=1e-4)  # mse 0.01 -> 20 dB
    assert torch.allclose(psnr(a, a + 0.1), -10 * torch.log10(F.mse_loss(a, a + 0.1)))


def test_preprocess_passes_gradients_through_clamped_pixels():
    from disentkit.losses import CLIP_STD, Clip

    clip = SimpleNamespace(image_size=224, mean=CLIP_MEAN, std=CLIP_STD, device=torch.device("cpu"),
                           model=SimpleNamespace(dtype=torch.float32))  # fmt: skip
    pixels = torch.zeros(1, 3, 512, 512)
    pixels[..., 200:300, 200:300] = 1.0  # a hard square: bicubic overshoots [0, 1] along its edges
    pixels.requires_grad_(True)
    out = Clip.preprocess(clip, pixels)
    assert out.min() >= (0 - max(CLIP_MEAN)) / min(CLIP_STD) - 1e-6  # the values are clamped
    out.sum().backward()
    edge = pixels.grad[..., 195:205, 240:260]
    assert edge.abs().sum() > 0 and torch.isfinite(pixels.grad).all()  # edge pixels still get a gradient
