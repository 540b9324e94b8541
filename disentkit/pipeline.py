"""Load a Stable Diffusion-family pipeline (SD 1.x, SD 2.x, SDXL) or the bundled toyworld model.

We load through diffusers' own ``DiffusionPipeline.from_pretrained``, so any folder that diffusers can read works,
and we only add what our method needs: a frozen model (no gradients for weights, ever), an explicit device, and
errors that say how to fix a bad path, an offline hub id or a missing GPU.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import warnings
from pathlib import Path
from typing import Iterator

import torch
from diffusers import DiffusionPipeline

from .errors import DeviceUnavailableError, ModelNotFoundError

TOYWORLD = "toyworld"


def toyworld_dir() -> Path:
    """Folder of the bundled toyworld weights (a diffusers pipeline folder and a CLIP folder)."""
    return Path(__file__).resolve().parent / "toyworld" / "weights"


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``device`` into a ``torch.device``; raise :class:`DeviceUnavailableError` if it is not there."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceUnavailableError(f"{device!r} is not a device name; use 'cpu', 'cuda', 'cuda:1' or 'mps'.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={str(device)!r} was asked for, but torch sees no CUDA GPU on this machine "
            "(torch.cuda.is_available() is False). Use device='cpu', or install a CUDA build of torch on a GPU machine."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"device={str(device)!r} was asked for, but only {torch.cuda.device_count()} CUDA device(s) exist."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError("device='mps' was asked for, but this machine has no Apple GPU; use 'cpu'.")
    return dev


def _looks_like_path(model: str) -> bool:
    # A hub id is "owner/name"; anything with a leading ./ ~ / or more than one separator is meant as a folder.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model


def freeze(pipe: DiffusionPipeline) -> DiffusionPipeline:
    """Put every torch module of ``pipe`` in eval mode with ``requires_grad=False``.

    The method only ever learns the mixing weights; a frozen model means autograd never builds or stores
    gradients for the ~1B weights (the reference implementation's main memory waste).
    """
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            component.requires_grad_(False)
    return pipe


def load_pipeline(
    model: str | os.PathLike = TOYWORLD,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    local_files_only: bool = False,
    **from_pretrained_kwargs,
) -> DiffusionPipeline:
    """Load a frozen text-to-image pipeline onto ``device``.

    Args:
        model: ``"toyworld"`` (the bundled miniature model, the default), a local diffusers pipeline folder, or a
            Hugging Face hub id such as ``"CompVis/stable-diffusion-v1-4"`` (needs network or a filled cache).
        device: where the model runs; nothing is moved behind your back later.
        dtype: weights dtype; ``None`` means float32 (use ``torch.float16`` on GPUs to halve memory).
        local_files_only: for hub ids, only look in the local cache.
        from_pretrained_kwargs: passed on to ``DiffusionPipeline.from_pretrained`` (e.g. ``variant="fp16"``).
    """
    dev = resolve_device(device)
    dtype = dtype or torch.float32
    name = os.fspath(model)
    with warnings.catch_warnings():
        # Newer diffusers rename `torch_dtype` to `dtype`; the old name works across every version we support.
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = _from_pretrained(name, dtype, local_files_only, from_pretrained_kwargs)
    pipe.set_progress_bar_config(disable=True)  # our own loops show progress; diffusers' bars would nest
    return freeze(pipe).to(dev)


def _from_pretrained(name: str, dtype: torch.dtype, local_files_only: bool, kwargs: dict) -> DiffusionPipeline:
    """Resolve ``name`` (toyworld, a folder, or a hub id) and load it, or raise a :class:`ModelNotFoundError`."""
    if name == TOYWORLD:
        source = toyworld_dir() / "pipeline"
        if not (source / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"the bundled toyworld weights are missing from this install ({source}). "
                "Train and export them with `python -m disentkit.toyworld.train --out runs/toyworld`, "
                "or reinstall disentkit from a release that ships them."
            )
        return DiffusionPipeline.from_pretrained(source, torch_dtype=dtype, **kwargs)
    if Path(name).expanduser().exists():
        folder = Path(name).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{folder} exists but is not a diffusers pipeline folder (no model_index.json in it). "
                "Point load_pipeline at the folder that `pipe.save_pretrained(...)` wrote."
            )
        return DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, **kwargs)
    if _looks_like_path(name):
        raise ModelNotFoundError(f"model folder {name!r} does not exist; check the path (it is not a hub id either).")
    try:
        return DiffusionPipeline.from_pretrained(name, torch_dtype=dtype, local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError) as err:  # huggingface_hub's offline/not-found errors derive from these
        raise ModelNotFoundError(
            f"{name!r} is not a local folder, and loading it as a Hugging Face hub id failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            f"If this machine is offline, download it once where there is network "
            f"(`hf download {name}`) and copy the cache, or pass the local folder instead."
        ) from err


def is_sdxl(pipe: DiffusionPipeline) -> bool:
    """True for SDXL-style pipelines (two text encoders, pooled text embeddings and size/crop time ids)."""
    return getattr(pipe, "text_encoder_2", None) is not None or "XL" in type(pipe).__name__


@functools.lru_cache(maxsize=2)
def _compiled(unet: torch.nn.Module) -> torch.nn.Module:
    # Cached so that repeated calls do not recompile; at most two UNets are kept alive by the cache.
    return torch.compile(unet)


class _PipelineView:
    """A pipeline seen with another UNet: every other attribute is the pipeline's own."""

    def __init__(self, pipe: DiffusionPipeline, unet: torch.nn.Module):
        self._pipe, self.unet = pipe, unet

    def __getattr__(self, name: str):
        return getattr(self._pipe, name)


def with_compiled_unet(pipe: DiffusionPipeline) -> _PipelineView:
    """``pipe`` with its UNet run through ``torch.compile`` (compiled on first use, once per UNet); the user's
    pipeline keeps its own eager UNet. Same images; faster once compiled, which takes a while (about a minute
    for the toy UNet on a CPU), so it pays off for long sweeps and repeated sampling."""
    return _PipelineView(pipe, _compiled(pipe.unet))


def pipeline_device(pipe: DiffusionPipeline) -> torch.device:
    return pipe.unet.device


def pipeline_dtype(pipe: DiffusionPipeline) -> torch.dtype:
    return pipe.unet.dtype


@contextlib.contextmanager
def vae_in_safe_precision(pipe: DiffusionPipeline) -> Iterator[torch.nn.Module]:
    """``with vae_in_safe_precision(pipe) as vae:`` the VAE to encode or decode with.

    SDXL's VAE overflows in half precision (NaN images; its config says so with ``force_upcast``). As diffusers'
    SDXL pipelines do (and only those: SD 1.x/2.x decode in float16), such a VAE runs in float32 with autocast off;
    a float16 one as a frozen float32 copy for the call, so the pipeline's module never changes behind the caller's
    back and a gradient through the decode (optimize) sees the weights it was computed with. Every other VAE is
    yielded as it is."""
    vae = pipe.vae
    if not (hasattr(pipe, "text_encoder_2") and getattr(vae.config, "force_upcast", False)):
        yield vae
        return
    with torch.autocast(vae.device.type, enabled=False):
        yield copy.deepcopy(vae).float().requires_grad_(False) if vae.dtype == torch.float16 else vae


def latent_shape(pipe: DiffusionPipeline, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(channels, h, w) of the latent for an image of ``height`` x ``width`` pixels (default: the model's size)."""
    factor = pipe.vae_scale_factor
    default = pipe.unet.config.sample_size * factor
    height, width = height or default, width or default
    if height % factor or width % factor:
        raise ValueError(f"height and width must be multiples of {factor} for this model, got {height}x{width}.")
    return (pipe.unet.config.in_channels, height // factor, width // factor)
