"""The toyworld evaluator: a small supervised CNN that reads a toyworld image and says what is in it.

Why it exists: toolkit metrics such as "content kept" and "style reached" must not be judged by the same toy CLIP
that the lambda optimisation pushes on (an optimiser can fool the network it is graded by). Because we render the
toy scenes ourselves we know the truth for every render, so we train an independent classifier on renders and use
it as the judge of generated and edited images.

One network, two kinds of output for a 64x64 RGB image:
  - one classification head per scene factor (kind, color, texture, expression, background, rendering);
    expression only exists for faces, so its loss is masked for other kinds;
  - a per-pixel logit for "this pixel belongs to the object" (the object mask), at 64x64.

Usage:
    ev = Evaluator.load()                      # bundled weights (disentkit/toyworld/weights/evaluator/)
    df = ev(images)                            # one row per image: labels, probabilities, mask
    kept = ev.content_kept(edited, reference)  # IoU, centroid shift, kind agreement
    p = ev.style_reached(edited, "background", "snow")   # (B,) probabilities

Images may be a PIL image or list of them, uint8 numpy (B,H,W,3) / (H,W,3), or float torch (B,3,H,W) / (3,H,W) in
[0, 1]; other sizes are resized to 64x64. Retrain the bundled weights with
`python -m disentkit.toyworld.evaluator_train`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from disentkit.errors import InvalidImageError, MaskInputError, ModelNotFoundError, UnknownFactorError

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "evaluator"

# The factor vocabulary is stored in the weights' config, so inference never imports the scene generator; this is
# only the default for a freshly built network (it mirrors toyworld.scenes.FACTORS, which training checks).
DEFAULT_FACTORS: dict[str, tuple[str, ...]] = {
    "kind": ("circle", "square", "triangle", "star", "face"),
    "color": ("red", "green", "blue", "yellow", "purple", "orange"),
    "texture": ("plain", "striped", "dotted"),
    "expression": ("neutral", "smiling", "frowning"),
    "background": ("day", "night", "snow", "sunset"),
    "rendering": ("photo", "sketch"),
}


# ----------------------------------------------------------------------------------------------------------------
# model


@dataclass
class EvaluatorConfig:
    image_size: int = 64
    # encoder widths at 32, 16 and 8 pixels (a 64x64 input); the network never convolves at full resolution except
    # in the tiny mask refiner, because that is where CPU time goes
    channels: tuple[int, ...] = (24, 48, 96)
    refine_channels: int = 8  # full-resolution mask refiner: sub-pixel decoder features + the RGB image
    head_hidden: int = 256
    dropout: float = 0.1
    factors: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_FACTORS))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["factors"] = {k: list(v) for k, v in self.factors.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EvaluatorConfig":
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        d["factors"] = {k: tuple(v) for k, v in d["factors"].items()}
        return cls(**d)


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv + BatchNorm + SiLU; padding keeps the size (or halves it with stride 2)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - stride) // 2 if stride > 1 else k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.SiLU(),
    )


def _upsample_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=False)


class EvaluatorNet(nn.Module):
    """A small U-Net: the encoder feeds the factor heads, the decoder (with skips) feeds the mask logit."""

    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        self.config = config
        c0, c1, c2 = config.channels
        r = config.refine_channels
        # a 4x4 stride-2 stem loses nothing a 3x3 at full resolution would see (stripes and dots have a 6 px period)
        self.stem = nn.Sequential(conv_bn(3, c0, k=4, stride=2), conv_bn(c0, c0))  # (B,c0,32,32)
        self.enc1 = nn.Sequential(conv_bn(c0, c1, k=4, stride=2), conv_bn(c1, c1))  # (B,c1,16,16)
        self.enc2 = nn.Sequential(conv_bn(c1, c2, k=4, stride=2), conv_bn(c2, c2))  # (B,c2,8,8)
        # the decoder adds (not concatenates) the upsampled deeper features to the skip: half the convolution cost
        self.lat1, self.dec1 = nn.Conv2d(c2, c1, 1), conv_bn(c1, c1)  # (B,c1,16,16)
        self.lat0, self.dec0 = nn.Conv2d(c1, c0, 1), conv_bn(c0, c0)  # (B,c0,32,32)
        # sub-pixel upsampling: 4*r channels at 32x32 become r channels at 64x64, then a small conv that also sees the
        # image puts the mask border on the right pixel
        self.to_full = nn.Sequential(nn.Conv2d(c0, 4 * r, 1), nn.PixelShuffle(2))  # (B,r,64,64)
        self.refine = nn.Sequential(nn.Conv2d(r + 3, r, 3, padding=1), nn.SiLU(), nn.Conv2d(r, 1, 1))
        # pooled features: global average, global max, and an average inside the (predicted) object mask, which lets
        # the object factors look at the object and not at the sky around it
        self.trunk = nn.Sequential(nn.Linear(3 * c2, config.head_hidden), nn.SiLU(), nn.Dropout(config.dropout))
        self.heads = nn.ModuleDict({f: nn.Linear(config.head_hidden, len(v)) for f, v in config.factors.items()})

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """x: (B,3,64,64) in [0,1]. Returns ({factor: logits (B, n_values)}, mask logits (B,64,64))."""
        h = x * 2 - 1
        s0 = self.stem(h)  # (B,c0,32,32)
        s1 = self.enc1(s0)  # (B,c1,16,16)
        bottleneck = self.enc2(s1)  # (B,c2,8,8)
        d1 = self.dec1(_upsample_like(self.lat1(bottleneck), s1) + s1)  # (B,c1,16,16)
        d0 = self.dec0(_upsample_like(self.lat0(d1), s0) + s0)  # (B,c0,32,32)
        mask_logits = self.refine(torch.cat([self.to_full(d0), h], 1))[:, 0]  # (B,64,64)

        # object-weighted pooling with the network's own soft mask, downsampled to the bottleneck grid
        w = F.adaptive_avg_pool2d(torch.sigmoid(mask_logits)[:, None], bottleneck.shape[-2:])  # (B,1,8,8)
        obj = (bottleneck * w).sum((2, 3)) / (w.sum((2, 3)) + 1e-3)  # (B,c2)
        pooled = torch.cat([bottleneck.mean((2, 3)), bottleneck.amax((2, 3)), obj], dim=1)  # (B,3*c2)
        z = self.trunk(pooled)
        return {f: head(z) for f, head in self.heads.items()}, mask_logits


# ----------------------------------------------------------------------------------------------------------------
# inputs


def as_image_batch(images: Any, size: int = 64) -> torch.Tensor:
    """Turn images into a float32 tensor (B,3,size,size) in [0,1] on the CPU (or the input tensor's device).

    Accepts a PIL image or a list of them, uint8 numpy (B,H,W,3) or (H,W,3), float numpy in [0,1] of those shapes,
    float torch (B,3,H,W) or (3,H,W) in [0,1], uint8 torch of those shapes. Other sizes are resized (bilinear,
    antialiased); non-square images are stretched to a square.
    """
    if isinstance(images, Image.Image):
        images = np.asarray(images.convert("RGB"))  # (H,W,3) uint8; RGBA/greyscale become RGB
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise InvalidImageError("got an empty list of images; pass at least one image")
        return torch.cat([as_image_batch(im, size) for im in images], dim=0)

    if isinstance(images, np.ndarray) and not (images.ndim in (3, 4) and images.shape[-1] == 3):
        raise InvalidImageError(
            f"numpy images must be channels-last RGB, (H,W,3) or (B,H,W,3); got shape {images.shape}"
        )
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise InvalidImageError(f"numpy images must be uint8 or float in [0,1]; got dtype {images.dtype}")
        # a copy: arrays from PIL are read-only, and torch warns about wrapping those
        x = _to_unit_float(torch.from_numpy(np.array(images)), "numpy array")
        x = x[None] if x.ndim == 3 else x
        x = x.permute(0, 3, 1, 2)  # (B,H,W,3) -> (B,3,H,W)
    elif isinstance(images, torch.Tensor):
        if not (images.ndim in (3, 4) and images.shape[-3] == 3):
            raise InvalidImageError(
                f"torch images must be channels-first RGB, (3,H,W) or (B,3,H,W), in [0,1]; got shape "
                f"{tuple(images.shape)}"
                + (" (channels-last? use x.permute(0, 3, 1, 2))" if images.shape[-1] == 3 else "")
            )
        x = _to_unit_float(images.detach(), "torch tensor")
        x = x[None] if x.ndim == 3 else x
    else:
        raise InvalidImageError(
            f"cannot read images from a {type(images).__name__}; pass a PIL image or list of them, a uint8 numpy "
            "array (B,H,W,3), or a float torch tensor (B,3,H,W) in [0,1]"
        )
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x.contiguous()


def _to_unit_float(x: torch.Tensor, what: str) -> torch.Tensor:
    """uint8 -> /255; floats are checked to lie in [0,1] (a common mistake is passing [-1,1] decoder output)."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == torch.bool or not torch.is_floating_point(x):
        raise InvalidImageError(f"{what} images must be uint8 or float in [0,1]; got dtype {x.dtype}")
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InvalidImageError(
            f"float {what} images must lie in [0,1]; got values in [{lo:.3f}, {hi:.3f}]"
            + (" (VAE output in [-1,1]? use (x + 1) / 2)" if lo < 0 else "")
        )
    return x.clamp(0, 1)


def _as_mask_batch(m: Any, name: str) -> torch.Tensor:
    """(H,W) or (B,H,W) bool-like numpy/torch -> bool tensor (B,H,W) on the CPU."""
    if isinstance(m, np.ndarray):
        m = torch.from_numpy(np.ascontiguousarray(m))
    if not isinstance(m, torch.Tensor):
        raise MaskInputError(f"{name} must be a boolean numpy array or torch tensor; got {type(m).__name__}")
    if m.ndim not in (2, 3):
        raise MaskInputError(f"{name} must have shape (H,W) or (B,H,W); got {tuple(m.shape)}")
    m = m.detach().cpu()
    m = m > 0.5 if torch.is_floating_point(m) else m.bool()
    return m[None] if m.ndim == 2 else m


# ----------------------------------------------------------------------------------------------------------------
# mask geometry (pure functions)


def mask_iou(a: Any, b: Any) -> torch.Tensor:
    """Intersection over union of two boolean masks (H,W) or (B,H,W) -> float tensor (B,).

    Two empty masks are identical and get IoU 1.0.
    """
    a, b = _as_mask_batch(a, "a"), _as_mask_batch(b, "b")
    if a.shape != b.shape:
        raise MaskInputError(f"mask shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}; resize one to the other")
    inter = (a & b).sum((1, 2)).float()
    union = (a | b).sum((1, 2)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_centroid(m: Any) -> torch.Tensor:
    """Centre of mass (x, y) in pixels of boolean masks (H,W) or (B,H,W) -> (B,2); NaN for an empty mask.

    Pixel i has its centre at coordinate i (so a single pixel at column 3, row 5 has centroid (3, 5)).
    """
    m = _as_mask_batch(m, "mask").float()  # (B,H,W)
    H, W = m.shape[-2:]
    area = m.sum((1, 2))
    ys = torch.arange(H, dtype=torch.float32)
    xs = torch.arange(W, dtype=torch.float32)
    cx = (m.sum(1) * xs).sum(1) / area  # sum over rows -> (B,W), weighted by column index
    cy = (m.sum(2) * ys).sum(1) / area  # sum over columns -> (B,H), weighted by row index
    return torch.stack([cx, cy], dim=1)  # 0/0 gives NaN for empty masks, on purpose


def centroid_shift(a: Any, b: Any) -> pd.DataFrame:
    """How far the object's centre of mass moved from mask a to mask b (same shapes, (H,W) or (B,H,W)).

    Returns one row per mask with dx_px, dy_px (b minus a, pixels; y grows downwards), shift_px (Euclidean,
    pixels) and shift_frac (the shift with dx measured in image widths and dy in image heights, so 0.1 means a
    tenth of the image side). NaN where either mask is empty.
    """
    a, b = _as_mask_batch(a, "a"), _as_mask_batch(b, "b")
    if a.shape != b.shape:
        raise MaskInputError(f"mask shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}; resize one to the other")
    H, W = a.shape[-2:]
    d = mask_centroid(b) - mask_centroid(a)  # (B,2)
    dx, dy = d[:, 0].numpy().astype(np.float64), d[:, 1].numpy().astype(np.float64)
    return pd.DataFrame(
        {"dx_px": dx, "dy_px": dy, "shift_px": np.hypot(dx, dy), "shift_frac": np.hypot(dx / W, dy / H)}
    )


# ----------------------------------------------------------------------------------------------------------------
# the evaluator


class Evaluator:
    """The trained network plus the factor vocabulary; returns plain data (DataFrames, tensors)."""

    def __init__(self, net: EvaluatorNet, meta: dict[str, Any] | None = None):
        self.net = net.eval()
        self.config = net.config
        self.factors = net.config.factors
        self.meta = meta or {}  # training settings and measured accuracy, as saved next to the weights

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> "Evaluator":
        self.net.to(device)
        return self

    # -- persistence --------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> "Evaluator":
        """Load weights from a folder holding model.safetensors + config.json (default: the bundled weights)."""
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        if not (path / "model.safetensors").exists() or not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"no evaluator weights in {path} (expected model.safetensors and config.json); train them with "
                "`python -m disentkit.toyworld.evaluator_train`"
            )
        meta = json.loads((path / "config.json").read_text())
        net = EvaluatorNet(EvaluatorConfig.from_json(meta["model"]))
        state = load_file(path / "model.safetensors")
        # weights may be stored in fp16 to keep the package small; compute in fp32
        state = {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()}
        net.load_state_dict(state)
        return cls(net.to(device), meta={k: v for k, v in meta.items() if k != "model"})

    def save(self, path: str | Path, half: bool = True, extra: dict[str, Any] | None = None) -> Path:
        """Write model.safetensors (fp16 if half) and config.json (architecture, vocabulary, meta) to a folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        if half:
            state = {k: v.half() if torch.is_floating_point(v) else v for k, v in state.items()}
        save_file(state, path / "model.safetensors")
        meta = {"model": self.config.to_json(), **self.meta, **(extra or {})}
        (path / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        return path

    # -- inference ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, images: Any, batch_size: int = 256) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Raw outputs: ({factor: probabilities (B, n_values)}, mask probabilities (B,64,64)), on the CPU.

        Images are moved to the evaluator's device for the forward pass.
        """
        x = as_image_batch(images, self.config.image_size)
        probs: dict[str, list[torch.Tensor]] = {f: [] for f in self.factors}
        masks = []
        for i in range(0, len(x), batch_size):
            logits, mask_logits = self.net(x[i : i + batch_size].to(self.device))
            for f in self.factors:
                probs[f].append(logits[f].softmax(-1).float().cpu())
            masks.append(torch.sigmoid(mask_logits).float().cpu())
        return {f: torch.cat(p) for f, p in probs.items()}, torch.cat(masks)

    def __call__(self, images: Any) -> pd.DataFrame:
        """One row per image: `<factor>` (predicted value), `<factor>_prob`, `p_<factor>_<value>` for every value,
        `mask_area` (fraction of the image) and `mask` (a 64x64 boolean numpy array).

        Expression only exists for faces: where the predicted kind is not "face", `expression` is None and
        `expression_prob` NaN (the `p_expression_*` columns keep the head's raw output).
        """
        probs, mask_p = self.predict(images)
        cols: dict[str, Any] = {}
        for f, values in self.factors.items():
            p = probs[f].numpy()
            best = p.argmax(1)
            cols[f] = [values[i] for i in best]
            cols[f"{f}_prob"] = p.max(1).astype(np.float64)
        if "expression" in self.factors and "kind" in self.factors:
            not_face = np.array([k != "face" for k in cols["kind"]])
            # object dtype, so a missing expression stays None (as in Scene.labels()) instead of becoming NaN
            expression = [None if nf else e for nf, e in zip(not_face, cols["expression"])]
            cols["expression"] = pd.Series(expression, dtype=object)
            cols["expression_prob"] = np.where(not_face, np.nan, cols["expression_prob"])
        for f, values in self.factors.items():
            for j, v in enumerate(values):
                cols[f"p_{f}_{v}"] = probs[f][:, j].numpy().astype(np.float64)
        masks = (mask_p > 0.5).numpy()
        cols["mask_area"] = masks.mean((1, 2)).astype(np.float64)
        cols["mask"] = list(masks)
        return pd.DataFrame(cols)

    def mask(self, images: Any, threshold: float = 0.5) -> torch.Tensor:
        """Predicted object masks, bool tensor (B,64,64)."""
        return self.predict(images)[1] > threshold

    def style_reached(self, images: Any, factor: str, value: str) -> torch.Tensor:
        """Probability (B,) that each image shows `factor == value`, e.g. ("background", "snow")."""
        if factor not in self.factors:
            raise UnknownFactorError(f"unknown factor {factor!r}; the evaluator knows {list(self.factors)}")
        if value not in self.factors[factor]:
            raise UnknownFactorError(f"unknown value {value!r} for {factor!r}; choose one of {list(self.factors[factor])}")
        probs, _ = self.predict(images)
        return probs[factor][:, self.factors[factor].index(value)]

    def content_kept(self, edited: Any, reference: Any) -> pd.DataFrame:
        """Did an edit keep the content? One row per (edited, reference) pair, same batch size.

        Columns: mask_iou (predicted object masks), dx_px, dy_px, shift_px, shift_frac (centroid moves from the
        reference to the edited image; pixels at 64x64, and fractions of the side), kind_edited, kind_reference,
        kind_agree.
        """
        p_e, m_e = self.predict(edited)
        p_r, m_r = self.predict(reference)
        if len(m_e) != len(m_r):
            raise InvalidImageError(f"got {len(m_e)} edited images but {len(m_r)} references; pass them in pairs")
        m_e, m_r = m_e > 0.5, m_r > 0.5
        kinds = self.factors["kind"]
        k_e = [kinds[i] for i in p_e["kind"].argmax(1)]
        k_r = [kinds[i] for i in p_r["kind"].argmax(1)]
        df = pd.DataFrame({"mask_iou": mask_iou(m_e, m_r).numpy().astype(np.float64)})
        df = pd.concat([df, centroid_shift(m_r, m_e)], axis=1)
        df["kind_edited"], df["kind_reference"] = k_e, k_r
        df["kind_agree"] = [a == b for a, b in zip(k_e, k_r)]
        return df


def labels_to_targets(
    labels: Sequence[dict[str, Any]], factors: dict[str, tuple[str, ...]]
) -> dict[str, torch.Tensor]:
    """Scene.labels() dicts -> {factor: long tensor (B,)}; a missing/None value (expression of a non-face) is -1."""
    out = {}
    for f, values in factors.items():
        out[f] = torch.tensor([values.index(l[f]) if l.get(f) is not None else -1 for l in labels], dtype=torch.long)
    return out
