"""invert(): a real image -> a NoiseTape, so ``sample()`` reproduces the image and can then edit it.

Two methods, both under the neutral prompt c0 (the paper edits real images this way, Sec. 5):

- ``"ddim"``: DDIM inversion (Song et al. 2021; Mokady et al. 2023). Run the deterministic DDIM update backwards
  from the clean latent to x_T with diffusers' ``DDIMInverseScheduler``. The tape holds x_T only (eta = 0).
  Reconstruction is approximate: each backward step evaluates the model at the wrong noise level, and the errors
  add up (more with guidance > 1).
- ``"exact"``: an edit-friendly DDPM-style inversion (Huberman-Spiegelglas et al. 2024). Draw the forward
  trajectory x_t = sqrt(a_t) z0 + sqrt(1 - a_t) n_t with *independent* noise n_t at every step, then, for each
  DDIM (eta = 1) step, solve for the per-step noise that lands exactly on the next recorded x_t. Sampling with
  that tape and lambda = 0 reproduces the image up to float rounding; the tape's noise also carries the image's
  details, which keeps them through an edit.

The DDIM eta = 1 update is ``x_prev = mu(x_t, eps) + std_t * noise`` (DDIM eq. 12 with sigma_t of eq. 16), linear in
the noise; we read ``mu`` and ``std_t`` off diffusers' own ``DDIMScheduler.step`` (with noise 0 and noise 1), so the
solved noise replays through the very same arithmetic that ``sample()`` runs.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .conditioning import encode, mix
from .errors import InvalidImageError, InversionError
from .noise import NoiseTape
from .pipeline import (
    check_image_size,
    default_image_size,
    nearest_multiple,
    pipeline_device,
    pipeline_dtype,
    quiet_loading,
    vae_in_safe_precision,
)
from .samplers import make_scheduler
from .sampling import guided_output, sdxl_time_ids

METHODS = ("ddim", "exact")
FITS = ("resize", "crop", "pad")
# Without an explicit size, an image larger than this many times the model's default pixel count is scaled down to
# that count (aspect ratio kept): a 4000x3000 photo would need ~45x SD 1.x's memory and time per step.
MAX_AREA_FACTOR = 4


# ---- images in ---------------------------------------------------------------------------------------------------
def load_image(image, size: tuple[int, int] | None = None, fit: str = "resize") -> torch.Tensor:
    """Read an image into pixels (1, 3, H, W) in [0, 1], float32.

    ``image``: a file path, a PIL image, a numpy array (H, W[, 3 or 4]) of uint8 or floats in [0, 1], or a torch
    tensor (3, H, W) / (1, 3, H, W) of floats in [0, 1] or uint8. If ``size`` = (H, W) is given and differs, the
    image is brought to it by :func:`fit_image` (``fit``: "resize", "crop" or "pad").
    """
    if fit not in FITS:
        raise InvalidImageError(f"fit must be one of {FITS}, got {fit!r}.")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (FileNotFoundError, IsADirectoryError, UnidentifiedImageError, OSError) as err:
            raise InvalidImageError(f"cannot read an image from {path} ({type(err).__name__}: {err}).") from err
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        pixels = _from_numpy(image)
    elif isinstance(image, torch.Tensor):
        pixels = image.detach().cpu()
        pixels = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()
        pixels = pixels[None] if pixels.ndim == 3 else pixels
        if pixels.ndim != 4 or pixels.shape[:2] != (1, 3):
            raise InvalidImageError(f"an image tensor must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}.")
    else:
        raise InvalidImageError(
            f"expected an image (path, PIL image, numpy array or tensor), got {type(image).__name__}."
        )
    if not torch.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise InvalidImageError("image values must be finite and in [0, 1] (floats) or 0..255 (uint8).")
    return pixels if size is None else fit_image(pixels, size, fit)


def fit_image(pixels: torch.Tensor, size: tuple[int, int], fit: str = "resize") -> torch.Tensor:
    """Bring pixels (1, 3, H, W) to ``size`` = (height, width).

    ``fit``: ``"resize"`` scales to exactly ``size`` (warns when that changes the aspect ratio by more than 2%,
    naming the other two); ``"crop"`` scales to cover ``size`` and cuts the centre out; ``"pad"`` scales to fit
    inside it and adds black borders. Scaling is antialiased bicubic."""
    if fit not in FITS:
        raise InvalidImageError(f"fit must be one of {FITS}, got {fit!r}.")
    (h, w), (H, W) = pixels.shape[-2:], tuple(int(n) for n in size)
    if (h, w) == (H, W):
        return pixels
    if fit == "resize":
        change = (W / H) / (w / h)
        if abs(change - 1) > 0.02:
            warnings.warn(
                f"resizing a {w}x{h} px image to {W}x{H} changes its aspect ratio by {100 * (change - 1):+.0f}%; "
                "pass fit='crop' or fit='pad' to keep it, or a size of the image's own proportions.",
                stacklevel=3,
            )
        return _scale(pixels, H, W)
    scale = max(H / h, W / w) if fit == "crop" else min(H / h, W / w)
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    scaled = _scale(pixels, sh, sw)
    if fit == "crop":
        top, left = (sh - H) // 2, (sw - W) // 2
        return scaled[..., top : top + H, left : left + W]
    top, left = (H - sh) // 2, (W - sw) // 2
    return F.pad(scaled, (left, W - sw - left, top, H - sh - top), value=0.0)


def _scale(pixels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == (h, w):
        return pixels
    out = F.interpolate(pixels, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0, 1)  # bicubic overshoots at edges


def image_size_for(
    pipe, image_hw: tuple[int, int], height: int | None = None, width: int | None = None
) -> tuple[int, int]:
    """The size (height, width) in pixels at which an image of ``image_hw`` is encoded.

    Both given: that size (checked). One given: the other from the image's aspect ratio. Neither: the image's own
    size, each side rounded to the nearest multiple of the VAE's factor (so its aspect ratio is kept to within half
    a factor), scaled down first to the model's default pixel count if it has more than :data:`MAX_AREA_FACTOR`
    times that (with a warning)."""
    h, w = image_hw
    factor = pipe.vae_scale_factor
    if height and width:
        return check_image_size(pipe, height, width)
    if height:
        return check_image_size(pipe, height, nearest_multiple(height * w / h, factor))
    if width:
        return check_image_size(pipe, nearest_multiple(width * h / w, factor), width)
    dh, dw = default_image_size(pipe)
    if h * w > MAX_AREA_FACTOR * dh * dw:
        scale = (dh * dw / (h * w)) ** 0.5
        size = (nearest_multiple(h * scale, factor), nearest_multiple(w * scale, factor))
        warnings.warn(
            f"a {w}x{h} px image has over {MAX_AREA_FACTOR}x the pixels this model makes by default ({dw}x{dh}); "
            f"encoding it at {size[1]}x{size[0]} (same aspect ratio). Pass height/width to choose the size.",
            stacklevel=3,
        )
        return size
    return nearest_multiple(h, factor), nearest_multiple(w, factor)


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise InvalidImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}.")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    else:
        raise InvalidImageError(f"an image array must hold uint8 or floats, got {a.dtype}.")
    return torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1)[None]


def model_image_size(pipe) -> tuple[int, int]:
    """(H, W) in pixels of the images ``pipe`` makes by default."""
    return default_image_size(pipe)


def prepare_image(
    pipe, image, height: int | None = None, width: int | None = None, fit: str = "resize"
) -> torch.Tensor:
    """The pixels (1, 3, H, W) in [0, 1] that :func:`encode_image` encodes: ``image`` read by :func:`load_image` and
    brought to :func:`image_size_for` (its own proportions unless ``height`` and ``width`` both say otherwise)."""
    pixels = load_image(image, fit=fit)
    return fit_image(pixels, image_size_for(pipe, tuple(pixels.shape[-2:]), height, width), fit)


@torch.no_grad()
def encode_image(pipe, image, height: int | None = None, width: int | None = None, fit: str = "resize") -> torch.Tensor:
    """VAE-encode an image (anything :func:`load_image` reads) to latents (1, C, h, w) on the model's device.

    The image keeps its size and aspect ratio (each side rounded to a multiple of the VAE's factor) unless
    ``height``/``width`` are given: see :func:`prepare_image` and :func:`fit_image` (``fit``). Uses the mean of the
    VAE's posterior (deterministic), scaled as :func:`disentkit.sampling.decode` expects. SDXL's VAE, which
    overflows in half precision, encodes in float32 (as in diffusers' SDXL pipelines).
    """
    pixels = prepare_image(pipe, image, height, width, fit)
    with vae_in_safe_precision(pipe) as vae:
        x = (pixels * 2 - 1).to(pipeline_device(pipe), vae.dtype)
        z = vae.encode(x).latent_dist.mean
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:  # the inverse of decode()'s per-channel normalisation
        shape = (1, -1, 1, 1)
        mean = torch.tensor(mean, device=z.device, dtype=z.dtype).view(shape)
        std = torch.tensor(std, device=z.device, dtype=z.dtype).view(shape)
        return ((z - mean) * vae.config.scaling_factor / std).to(pipeline_dtype(pipe))
    return (z * vae.config.scaling_factor).to(pipeline_dtype(pipe))


# ---- inversion -------------------------------------------------------------------------------------------------
@torch.no_grad()
def invert(
    pipe,
    image,
    prompt: str,
    steps: int = 50,
    scheduler: str = "ddim",
    method: str = "ddim",
    guidance: float = 1.0,
    *,
    height: int | None = None,
    width: int | None = None,
    fit: str = "resize",
    seed: int = 0,
    progress: bool = True,
) -> NoiseTape:
    """Invert ``image`` under ``prompt`` (the neutral prompt c0) into a :class:`NoiseTape`.

    ``sample(pipe, encode(pipe, prompt, c1), MixSchedule.constant(steps, 0.0), tape, guidance=guidance)`` then
    gives the image back (exactly for ``method="exact"``, approximately for ``"ddim"``); other schedules edit it.

    Args:
        pipe: a pipeline from :func:`disentkit.load_pipeline`.
        image: a path, PIL image, numpy array or tensor. It keeps its own size and aspect ratio (sides rounded to
            the nearest multiple of the VAE's factor); the tape, and every image sampled from it, has that size.
        prompt: the neutral prompt c0 describing the image.
        steps: sampling steps N the tape is for.
        scheduler: the sampler; inversion supports ``"ddim"``.
        method: ``"ddim"`` (deterministic DDIM inversion, eta 0 tape) or ``"exact"`` (eta 1 tape whose per-step
            noise is solved to hit a forward trajectory exactly).
        guidance: classifier-free guidance used for inversion; sample with the same value to reconstruct.
        height, width, fit: another size to invert at, and how to get there ("resize", "crop" or "pad"); see
            :func:`prepare_image`.
        seed: seed of the forward-trajectory noise (``"exact"`` only).
    """
    if scheduler != "ddim":
        raise InversionError(f"invert supports scheduler='ddim' only, got {scheduler!r}.")
    if method not in METHODS:
        raise InversionError(f"unknown inversion method {method!r}; choose one of {METHODS}.")
    z0 = encode_image(pipe, image, height, width, fit)  # (1, C, h, w)
    cond = encode(pipe, prompt, prompt)
    zero = torch.zeros(1, cond.tokens, device=cond.c0.device)
    c0 = mix(cond.c0, cond.c1, zero)  # = c0, computed as sample() computes it, so "exact" replays bit for bit
    pooled0 = None if cond.pooled0 is None else mix(cond.pooled0, cond.pooled1, zero.mean(dim=1))
    time_ids = sdxl_time_ids(pipe, cond, z0.shape[-2:], 1)

    def model(x, t):
        return guided_output(pipe, x, t, c0, cond.uncond, guidance, pooled0, cond.pooled_uncond, time_ids)

    if method == "ddim":
        tape = _ddim_inversion(pipe, z0, model, steps, progress)
    else:
        tape = _exact_inversion(pipe, z0, model, steps, seed, progress)
    # sample() warns if asked to replay it under another guidance, and runs an exact tape's rows one at a time
    return replace(tape, guidance=float(guidance), exact=method == "exact")


def _ddim_inversion(pipe, z0, model, steps: int, progress: bool) -> NoiseTape:
    # diffusers' inverse DDIM walks the sampler's timesteps in reverse: from the clean level to the first
    # (noisiest) timestep of an N-step DDIM run, so the result is that run's x_T.
    sampler = make_scheduler(pipe, "ddim")
    with quiet_loading():  # every SD config carries PNDM's `skip_prk_steps`, which diffusers reports here
        inverse = DDIMInverseScheduler.from_config(sampler.config)
    inverse.set_timesteps(steps, device=z0.device)
    x = z0
    for t in tqdm(inverse.timesteps, desc="DDIM inversion", disable=not progress, leave=False):
        x = inverse.step(model(x, t), t, x, return_dict=False)[0]
    x_T = (x / sampler.init_noise_sigma).float().cpu()
    return NoiseTape(x_T, None, "ddim", steps, 0.0)


def _exact_inversion(pipe, z0, model, steps: int, seed: int, progress: bool) -> NoiseTape:
    sampler = make_scheduler(pipe, "ddim")
    sampler.set_timesteps(steps, device=z0.device)
    acp = sampler.alphas_cumprod.to(z0.device, torch.float64)

    # The forward trajectory to hit: x_t for every sampling timestep, each with its own independent noise, and
    # the clean latent itself as the target of the last step.
    gen = torch.Generator("cpu").manual_seed(seed)
    targets = []
    for t in sampler.timesteps:
        a = acp[int(t)]
        n = torch.randn(z0.shape, generator=gen, dtype=torch.float32).to(z0.device, torch.float64)
        targets.append((a.sqrt() * z0.double() + (1 - a).sqrt() * n).to(z0.dtype))
    targets.append(z0)

    x = targets[0]
    noises = []
    for j, t in enumerate(tqdm(sampler.timesteps, desc="exact inversion", disable=not progress, leave=False)):
        out = model(sampler.scale_model_input(x, t), t)
        # x_prev = mu + std * noise: read mu (noise 0) and std (noise 1 minus noise 0) off diffusers' own step.
        mu = sampler.step(out, t, x, eta=1.0, variance_noise=torch.zeros_like(x), return_dict=False)[0]
        std = sampler.step(out, t, x, eta=1.0, variance_noise=torch.ones_like(x), return_dict=False)[0] - mu
        noise = torch.where(std > 0, (targets[j + 1] - mu) / std.clamp_min(1e-12), torch.zeros_like(x))
        noises.append(noise.float().cpu())
        # Continue from where the replay will be (mu + std * noise, rounded as sample() rounds it), not from the
        # target, so float rounding cannot build up between inversion and replay.
        x = sampler.step(out, t, x, eta=1.0, variance_noise=noise, return_dict=False)[0]
    x_T = (targets[0] / sampler.init_noise_sigma).float().cpu()
    step_noise = torch.stack(noises)  # (N, 1, C, h, w)
    return NoiseTape(x_T, step_noise, "ddim", steps, 1.0)
