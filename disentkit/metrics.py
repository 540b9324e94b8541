"""Metrics that judge an image of a switch sweep on any model: did the style arrive, did the content stay?

Plain batched functions, one value per image, run on the device of the network they are given. Images are pixels
``(R, 3, H, W)`` in [0, 1] (``SampleResult.pixels``); a ``reference`` is the pure-c0 image of the same seed, either
``(R, 3, H, W)`` or one ``(1, 3, H, W)`` image broadcast over the batch.

Style reached (higher = more of c1's style):

- :func:`target_probability` ("clip_prob"): CLIP's zero-shot probability of c1 among alternatives (the attribute's
  other values where they can be derived, else c0), in [0, 1];
- :func:`directional_similarity` ("clip_dir"): cosine between the image's move in CLIP space (from the reference)
  and the text's move from c0 to c1, in [-1, 1] (the paper's L_dir is 1 minus this);
- :func:`text_similarity` ("clip_text"): cosine between the image and c1's text in CLIP space, in [-1, 1].

Content kept (lower = closer to the reference, 0 = the same image):

- :func:`structure_distance` ("struct_clip", "struct_dino"): root mean squared difference of the patch tokens'
  cosine self-similarity matrices (the layout: which patches resemble which), in [0, 2]; any CLIP vision tower, or a DINO /
  DINOv2 / ViT backbone loaded with :func:`load_backbone` (PIE-Bench's structure distance);
- :func:`lpips_distance` ("lpips"): LPIPS (Zhang et al. 2018), needs the optional ``lpips`` package, >= 0;
- :func:`pixel_distance` ("pixel"): root mean squared pixel difference, in [0, 1];
- :func:`latent_distance` ("latent"): root mean squared difference of the final latents, >= 0, unitless.

:class:`Scorer` loads the networks a list of metric names needs once and returns a DataFrame with one column per
metric; :data:`METRICS` says, for every name, its kind, direction and range. On toyworld these are proxies whose
agreement with the evaluator's ground truth is measured by ``benchmarks/metrics_report.py`` (``docs/metrics.md``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .errors import MissingDependencyError, ModelNotFoundError, OptionError, UnknownMetricError
from .losses import CLIP_MEAN, CLIP_STD, Clip, CLIPPromptLoss, CLIPStructureLoss, load_clip
from .pipeline import locate, resolve_device

STILL = 1e-3  # an image whose unit CLIP embedding moved less than this from the reference's has not moved
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINO / DINOv2 / ViT statistics, used when a folder has no processor config
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---- what each metric is ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricInfo:
    """What a metric column means. ``kind``: "style" (higher = more of c1) or "content" (lower = content kept);
    ``range``: the values it can take; ``needs``: "clip", "backbone" (a DINO-like model) or "lpips" (the package)."""

    name: str
    kind: str
    higher_is: str  # what a higher value means, in words
    range: tuple[float, float]
    needs: str | None
    description: str

    @property
    def higher_is_better(self) -> bool:
        """For style metrics higher is more style; for content distances lower is more content kept."""
        return self.kind == "style"


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in [
        MetricInfo("clip_prob", "style", "more style", (0.0, 1.0), "clip",
                   "CLIP zero-shot P(c1) among c1 and the attribute's other values (else c0)"),
        MetricInfo("clip_dir", "style", "more style", (-1.0, 1.0), "clip",
                   "cosine of the image's CLIP move from the pure-c0 image with the text move c0 -> c1"),
        MetricInfo("clip_text", "style", "more style", (-1.0, 1.0), "clip", "CLIP cosine of the image with c1's text"),
        MetricInfo("struct_clip", "content", "more content lost", (0.0, 2.0), "clip",
                   "self-similarity structure distance to the pure-c0 image, CLIP patch tokens (every block)"),
        MetricInfo("struct_dino", "content", "more content lost", (0.0, 2.0), "backbone",
                   "self-similarity structure distance to the pure-c0 image, a DINO/DINOv2/ViT backbone's last block"),
        MetricInfo("lpips", "content", "more content lost", (0.0, float("inf")), "lpips",
                   "LPIPS (AlexNet) to the pure-c0 image"),
        MetricInfo("pixel", "content", "more content lost", (0.0, 1.0), None,
                   "root mean squared pixel difference to the pure-c0 image"),
        MetricInfo("latent", "content", "more content lost", (0.0, float("inf")), None,
                   "root mean squared difference of the final latents to the pure-c0 image's"),
    ]
}  # fmt: skip
# Bumped whenever a metric's definition changes, so a map folder holding older numbers is not resumed into a new one.
METRICS_VERSION = 3
DEFAULT_METRICS = ("clip_prob", "clip_dir", "clip_text", "struct_clip", "pixel", "latent")  # all offline and cheap


def check_metrics(names: str | Sequence[str]) -> list[str]:
    """The metric names as a list, or :class:`UnknownMetricError` naming the known ones. "a,b" is split."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(dict.fromkeys(names))  # order kept, duplicates dropped
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise UnknownMetricError(
            f"unknown metric(s) {unknown or names!r}; choose from {list(METRICS)} (e.g. "
            f"metrics={list(DEFAULT_METRICS)!r}, or --metrics {','.join(DEFAULT_METRICS)})."
        )
    return names


# ---- style --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def target_probability(clip: Clip, images: torch.Tensor, c1: str, alternatives: Sequence[str]) -> torch.Tensor:
    """CLIP's zero-shot probability (R,) in [0, 1] that each image shows ``c1`` rather than one of
    ``alternatives`` (softmax over the prompts, logits scaled by CLIP's ``logit_scale``). Higher = more style.
    With k alternatives, 1/(k+1) is CLIP's "cannot tell"."""
    return torch.exp(-CLIPPromptLoss(clip, c1, alternatives)(images)).float().cpu()


@torch.no_grad()
def directional_similarity(clip: Clip, images: torch.Tensor, reference: torch.Tensor, c0: str, c1: str) -> torch.Tensor:
    """``cos(E_img(image) - E_img(reference), E_txt(c1) - E_txt(c0))`` (R,) in [-1, 1]: did the image move in CLIP
    space the way the text moves? Higher = more style. The same number as 1 -
    :class:`~disentkit.losses.DirectionalCLIPLoss`, except that an image that did not move (the reference itself, up to float rounding) reads 0: no move has no direction.
    """
    t0, t1 = clip.encode_texts([c0, c1])
    move = clip.encode_images(images) - clip.encode_images(reference if reference.ndim == 4 else reference[None])  # (R, E)
    cos = F.cosine_similarity(move, (t1 - t0)[None], dim=-1, eps=1e-8)
    return torch.where(move.norm(dim=-1) < STILL, torch.zeros_like(cos), cos).float().cpu()


@torch.no_grad()
def text_similarity(clip: Clip, images: torch.Tensor, text: str) -> torch.Tensor:
    """Cosine (R,) in [-1, 1] between each image's and ``text``'s CLIP embeddings (the "CLIP score" / 100)."""
    return (clip.encode_images(images) @ clip.encode_texts([text]).T)[:, 0].float().cpu()


# ---- content --------------------------------------------------------------------------------------------------
@torch.no_grad()
def structure_distance(
    backbone: Clip, images: torch.Tensor, reference: torch.Tensor, layers: Sequence[int] | None = None
) -> torch.Tensor:
    """Self-similarity structure distance (R,) in [0, 2]: the root of the mean (over ``layers``) squared
    difference of the patch tokens' cosine self-similarity matrices of image and reference, i.e. the square root of
    :class:`~disentkit.losses.CLIPStructureLoss`. A root mean square like :func:`pixel_distance`, so that it grows in
    proportion to the change and "halfway" means the same for every content distance (:func:`disentkit.find_windows`
    compares rescaled curves). Recolouring keeps it low, moving or reshaping the object raises it. ``backbone``: a
    CLIP from :func:`~disentkit.load_clip` (layers default: every block) or a :class:`VisionBackbone` (default: its
    ``layers``). Lower = content kept; 0 = the same layout."""
    if layers is None and isinstance(backbone, VisionBackbone):
        layers = backbone.layers
    squared = CLIPStructureLoss(backbone, layers)(images, _batched(reference, len(images)))
    return squared.clamp_min(0).sqrt().float().cpu()


def pixel_distance(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Root mean squared pixel difference (R,) in [0, 1] (pixels in [0, 1]). Lower = content kept; it also counts
    every change of style, so it rises with any edit."""
    diff = images.float() - _batched(reference, len(images)).float().to(images.device)
    return diff.pow(2).flatten(1).mean(1).sqrt().cpu()


def latent_distance(latents: torch.Tensor, reference_latents: torch.Tensor) -> torch.Tensor:
    """Root mean squared difference (R,) of final latents ``(R, C, h, w)`` to the reference's; the cheapest content
    distance (no decode, no network). Unitless, >= 0 (SD latents are scaled to about unit variance)."""
    return pixel_distance(latents, reference_latents)


class LPIPS:
    """LPIPS (Zhang et al. 2018) from the optional ``lpips`` package, loaded once; ``lpips`` fetches its AlexNet/
    VGG weights through torchvision, so they must be installed or reachable."""

    def __init__(self, net: str = "alex", device: str | torch.device = "cpu"):
        try:
            import lpips  # noqa: PLC0415  (optional dependency)
        except ImportError as err:
            raise MissingDependencyError(
                "the 'lpips' metric needs the optional `lpips` package (pip install lpips, which needs torchvision); "
                "without it use 'struct_clip' or 'pixel' as the content metric."
            ) from err
        self.net = lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False).to(resolve_device(device))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        dev = next(self.net.parameters()).device
        ref = _batched(reference, len(images)).to(dev)
        return self.net(images.to(dev) * 2 - 1, ref * 2 - 1).flatten().float().cpu()  # lpips takes [-1, 1]


def lpips_distance(images: torch.Tensor, reference: torch.Tensor, model: LPIPS | None = None) -> torch.Tensor:
    """LPIPS (R,) >= 0 to the reference; lower = content kept. Pass a loaded :class:`LPIPS` to reuse it."""
    return (model or LPIPS(device=images.device))(images, reference)


def _batched(reference: torch.Tensor, n: int) -> torch.Tensor:
    if reference.ndim == 3:
        reference = reference[None]
    return reference.expand(n, *reference.shape[1:]) if len(reference) == 1 else reference


# ---- loading any backbone ------------------------------------------------------------------------------------
@dataclass
class VisionBackbone(Clip):
    """A frozen vision transformer from transformers' ``AutoModel`` (DINO, DINOv2, ViT, a CLIP vision tower): the
    :class:`~disentkit.losses.Clip` preprocessing with the backbone's own size and statistics, and its hidden
    states. ``layers``: which hidden states :func:`structure_distance` compares (default: the last block)."""

    layers: tuple[int, ...] = ()

    def image_forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]:
        """Pooled output (or None) and the hidden states (each (R, 1 + patches, D): the class token, then patches)."""
        out = self.model(pixel_values=self.preprocess(pixels), output_hidden_states=True)
        registers = int(getattr(self.model.config, "num_register_tokens", 0) or 0)  # DINOv2 with registers
        hidden = tuple(torch.cat([h[:, :1], h[:, 1 + registers :]], dim=1) for h in out.hidden_states)
        return getattr(out, "pooler_output", None), hidden


def load_backbone(
    path_or_id: str | os.PathLike, device: str | torch.device = "cpu", flag: str = "backbone="
) -> VisionBackbone:
    """Load any transformers vision backbone (a folder or a hub id; DINO ``facebook/dino-vitb16``, DINOv2
    ``facebook/dinov2-base``, a ViT, or a CLIPModel whose vision tower is used), frozen, on ``device``.

    The input size and mean/std come from the folder's ``preprocessor_config.json`` (its crop size), else the
    model config's ``image_size`` and ImageNet's statistics. An offline hub id that is not cached fails at once
    with :class:`ModelNotFoundError` naming ``flag`` (how the caller passes a folder instead)."""
    from transformers import AutoModel  # imported here: transformers is slow to import

    name = os.fspath(path_or_id)
    source = check_available(name, "vision backbone", flag)
    try:
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"cannot load a vision backbone from {name!r} ({type(err).__name__}: {_first_line(err)}); pass a folder "
            f"written by save_pretrained (e.g. facebook/dinov2-small saved where there is network) with {flag}."
        ) from err
    if hasattr(model, "vision_model"):  # a whole CLIPModel (or SigLIP): its image tower
        model = model.vision_model
    config = getattr(model, "config", None)
    model.eval().requires_grad_(False).to(resolve_device(device))
    size, mean, std = _backbone_stats(source, config)
    n = int(getattr(config, "num_hidden_layers", 1))
    return VisionBackbone(model, None, size, mean, std, name, layers=(n,))


def _backbone_stats(name: str, config) -> tuple[int, tuple, tuple]:
    clip_like = "clip" in type(config).__name__.lower()
    mean, std = (CLIP_MEAN, CLIP_STD) if clip_like else (IMAGENET_MEAN, IMAGENET_STD)
    size = int(getattr(config, "image_size", 224))
    path = Path(name) / "preprocessor_config.json"
    if not path.is_file():
        cached = _cached_file(name, "preprocessor_config.json")
        path = Path(cached) if cached else path
    if path.is_file():
        data = json.loads(path.read_text())
        mean, std = tuple(data.get("image_mean", mean)), tuple(data.get("image_std", std))
        crop = data.get("crop_size") or data.get("size")
        if isinstance(crop, dict):
            crop = crop.get("height") or crop.get("shortest_edge")
        size = int(crop or size)
    return size, tuple(map(float, mean)), tuple(map(float, std))


def check_available(name: str, what: str, flag: str) -> str:
    """Where to load ``name`` from (:func:`disentkit.pipeline.locate`): a folder, a cached hub id's snapshot, or a
    hub id the hub can serve; otherwise :class:`ModelNotFoundError` at once, naming ``flag``. Without this,
    transformers retries an unreachable hub for half a minute before it gives up."""
    return locate(name, what=what, fix=f"pass a local folder with {flag}")


def _cached_file(name: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, filename)
        return found if isinstance(found, str) else None
    except Exception:  # not a valid repo id, or no hub library: nothing cached
        return None


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else ""


def load_metric_clip(
    path_or_id: str | os.PathLike | None, device: str | torch.device = "cpu", flag: str = "clip="
) -> Clip:
    """:func:`~disentkit.load_clip`, failing at once (naming ``flag``) for a hub id that cannot be had offline."""
    if path_or_id is not None:
        path_or_id = check_available(os.fspath(path_or_id), "CLIP model", flag)  # a cached id: its local snapshot
    try:
        return load_clip(path_or_id, device)
    except ModelNotFoundError as err:
        raise ModelNotFoundError(f"{err} The CLIP metrics need it: pass another with {flag}.") from err


# ---- what c1 is weighed against -------------------------------------------------------------------------------
def toy_target(c0: str, c1: str) -> tuple[str, str] | None:
    """The toyworld factor and value that c1 adds to c0 ("a photo of a face" -> "a photo of a face, smiling":
    ("expression", "smiling")), or None when the prompts are not toyworld captions that differ in one factor."""
    from .toyworld.scenes import parse_caption

    try:
        p0, p1 = parse_caption(c0), parse_caption(c1)
    except ValueError:
        return None
    changed = {k: v for k, v in p1.items() if p0.get(k) != v}
    if len(changed) != 1 or any(k not in p1 for k in p0):
        return None
    return next(iter(changed.items()))


def alternatives(c0: str, c1: str, target: tuple[str, str] | None = None) -> list[str]:
    """What c1 is weighed against by :func:`target_probability`: where the attribute is known (``target``, or
    derived from toyworld captions by :func:`toy_target`), c1 with the attribute's other values ("a photo of a
    circle, red" -> "..., green", "..., blue", ...; "a sketch of a star" -> "a photo of a star"); otherwise ``[c0]``.

    c0 is left out when the other values are known because it is true of the edited image as well ("a photo of a
    circle" describes a red circle): among the values it takes a share of the probability whatever the image shows.
    On rendered toy scenes that show the target, the mean P(c1) is 0.97-0.99 against the other values and 0.2-0.4
    with c0 added (``benchmarks/metrics_report.py`` measures it)."""
    target = target or toy_target(c0, c1)
    others: list[str] = []
    if target is not None:
        from .toyworld.scenes import FACTORS, factor_captions, scene_for_caption

        factor, value = target
        try:
            scene = scene_for_caption(c1, np.random.default_rng(0))
            captions = factor_captions(replace(scene, **{factor: value}), factor)
            if captions[FACTORS[factor].index(value)] == c1:  # c1 says the factor and nothing else
                others = captions
        except (ValueError, KeyError, TypeError):
            others = []  # not a toyworld caption: c0 alone
    return [a for a in dict.fromkeys(others or [c0]) if a != c1] or [c0]


# ---- many metrics at once ------------------------------------------------------------------------------------
class Scorer:
    """Loads the networks that ``metrics`` need once and scores batches: ``scorer(images, reference, c0, c1)`` ->
    DataFrame with one column per metric, one row per image.

    Args:
        metrics: names from :data:`METRICS`.
        clip: a loaded :class:`~disentkit.losses.Clip`, or a folder / hub id (``None``: the bundled toy CLIP).
        backbone: for "struct_dino": a loaded :class:`VisionBackbone`, or a folder / hub id.
        device: where the networks run (the pipeline's device).
    """

    def __init__(
        self,
        metrics: Sequence[str] = DEFAULT_METRICS,
        clip: Clip | str | os.PathLike | None = None,
        backbone: VisionBackbone | str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        flags: dict[str, str] | None = None,
    ):
        self.metrics = check_metrics(metrics)
        flags = {"clip": "clip=", "backbone": "backbone=", **(flags or {})}  # how the caller names them, for errors
        needs = {METRICS[m].needs for m in self.metrics}
        if "backbone" in needs and backbone is None:
            raise ModelNotFoundError(
                f"metric 'struct_dino' needs a vision backbone: pass {flags['backbone']} (a DINO/DINOv2 folder, or a "
                "cached hub id such as facebook/dinov2-small), or use 'struct_clip'."
            )
        self.lpips = LPIPS(device=device) if "lpips" in needs else None  # first: a missing package fails before CLIP loads
        self.clip = None
        if "clip" in needs:
            self.clip = clip if isinstance(clip, Clip) else load_metric_clip(clip, device, flags["clip"])
        self.backbone = None
        if "backbone" in needs:
            self.backbone = backbone if isinstance(backbone, Clip) else load_backbone(backbone, device, flags["backbone"])
        self.clip_name = getattr(self.clip, "name", None)
        self.backbone_name = getattr(self.backbone, "name", None)

    def __call__(
        self,
        images: torch.Tensor,
        reference: torch.Tensor,
        c0: str,
        c1: str,
        others: Sequence[str] | None = None,
        latents: torch.Tensor | None = None,
        reference_latents: torch.Tensor | None = None,
    ) -> pd.DataFrame:
        """Every metric for ``images`` (R, 3, H, W) against ``reference`` (the pure-c0 image(s)); ``others``
        default to :func:`alternatives` (c0, c1); ``latents`` are needed for "latent"."""
        cols: dict[str, np.ndarray] = {}
        for name in self.metrics:
            if name == "clip_prob":
                alts = list(others) if others is not None else alternatives(c0, c1)
                v = target_probability(self.clip, images, c1, alts)
            elif name == "clip_dir":
                v = directional_similarity(self.clip, images, reference, c0, c1)
            elif name == "clip_text":
                v = text_similarity(self.clip, images, c1)
            elif name == "struct_clip":
                v = structure_distance(self.clip, images, reference)
            elif name == "struct_dino":
                v = structure_distance(self.backbone, images, reference)
            elif name == "lpips":
                v = self.lpips(images, reference)
            elif name == "pixel":
                v = pixel_distance(images, reference)
            else:  # latent
                if latents is None or reference_latents is None:
                    raise OptionError("metric 'latent' needs latents= and reference_latents= (SampleResult.latents).")
                v = latent_distance(latents, reference_latents)
            cols[name] = v.double().numpy()
        return pd.DataFrame(cols)
