"""Load a Stable Diffusion-family pipeline (SD 1.x, SD 2.x, SDXL) or the bundled toyworld model.

We load through diffusers' own ``DiffusionPipeline.from_pretrained``, so any folder that diffusers can read works,
and we only add what our method needs: a frozen model (no gradients for weights, ever), an explicit device, and
errors that say how to fix a bad path, an offline hub id or a missing GPU. Hub ids are looked up in the local cache
first, so an offline machine with a filled cache never waits for the network, and one without fails at once.

A model is identified by what it is, not where it was loaded from: :func:`model_fingerprint` summarises its
weights (names, shapes, and per-component sums that do not depend on dtype or device) and the configuration values
that change its behaviour, so a schedule learned on it is accepted on the same weights from any folder or hub id.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import math
import os
import re
import socket
import warnings
import weakref
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import torch
from diffusers import DiffusionPipeline

from .errors import DeviceUnavailableError, ImageSizeError, ModelNotFoundError

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


# ---- quiet loading ---------------------------------------------------------------------------------------------
# Messages diffusers and transformers print on every load of a hub model that are not about anything the user can or
# should change: configs that carry keys of a sibling scheduler (every SD repository's `skip_prk_steps`), the
# tokenizer files the repositories were written with, NumPy 2's notice about libraries' old `__array__` signatures,
# and which image backend transformers picked. Anything else still shows.
KNOWN_NOISE = (
    r"The config attributes \{.*\} were passed to \w+, but are not expected and will be ignored",
    r"`\w*ImageProcessor` requires torchvision \(not installed\); falling back to",
    r"__array__ implementation doesn't accept a copy keyword",
    r"Ignoring clean_up_tokenization_spaces=True for BPE tokenizer",  # SDXL's tokenizer configs (transformers 5)
    r"`clean_up_tokenization_spaces` was not set",  # the SD 1.x/2.x ones (transformers 4.4x)
    r"Keyword arguments \{'safety_checker': None\} are not expected by",  # a pipeline without one: nothing to turn off
    r"`torch_dtype` is deprecated",  # newer diffusers rename it `dtype`; the old name works in every version we support
)
_NOISE = re.compile("|".join(KNOWN_NOISE))


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _NOISE.search(record.getMessage())


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Within the block, diffusers' and transformers' loading progress bars are off and their messages in
    :data:`KNOWN_NOISE` are dropped; every other warning and log record passes. Both libraries' settings are as
    they were afterwards. (Loading a tiny model takes milliseconds; a bar per component would be most of the output.)"""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    noise = _DropKnownNoise()
    # A logger's own filters see only the records logged on it, so the filter goes on every logger of both libraries
    # (and on their handlers, for loggers created inside the block).
    ours = ("diffusers", "transformers")
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in ours]
    handlers = [h for n in ours for h in logging.getLogger(n).handlers]
    for lib in libraries:
        lib.disable_progress_bar()
    for target in loggers + handlers:
        target.addFilter(noise)
    try:
        with warnings.catch_warnings():
            for pattern in KNOWN_NOISE:
                warnings.filterwarnings("ignore", message=f".*(?:{pattern})")
            yield
    finally:
        for target in loggers + handlers:
            target.removeFilter(noise)
        for lib in libraries:
            lib.enable_progress_bar()


# ---- finding a model ---------------------------------------------------------------------------------------------
def hub_is_offline() -> bool:
    """True when the hub is told to stay offline (``HF_HUB_OFFLINE=1`` or the older ``TRANSFORMERS_OFFLINE``)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint answers a TCP connection within ``timeout`` seconds (no request is sent).

    Behind an HTTP(S) proxy a direct connection says nothing, so it is assumed reachable and the libraries try."""
    if hub_is_offline():
        return False
    if any(os.environ.get(v) or os.environ.get(v.lower()) for v in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:  # no DNS, no route, refused, timed out
        return False


def locate(name: str | os.PathLike, *, what: str = "model", fix: str = "pass a local folder instead",
           probe: str = "config.json") -> str:
    """Where to load ``name`` from without waiting on the network: a local folder as it is, a cached hub id as its
    local snapshot folder, an uncached hub id as itself if the hub can be reached. Otherwise (offline, or the hub
    unreachable) raise :class:`ModelNotFoundError` at once, saying ``fix`` (e.g. "pass --clip FOLDER").

    ``probe`` is a file every such repository has (``config.json`` for transformers models, ``model_index.json``
    for pipelines)."""
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists():
        return str(path)
    if _looks_like_path(text):
        raise ModelNotFoundError(f"{what} folder {text!r} does not exist; check the path, or {fix}.")
    snapshot = _cached_snapshot(text, probe)
    if snapshot is not None:
        return snapshot
    if not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_is_offline() else "the Hugging Face hub cannot be reached from here"
        raise ModelNotFoundError(
            f"the {what} {text!r} is not in the local Hugging Face cache and {why}; {fix}, or download it once "
            f"where there is network (`hf download {text}`) and copy the cache."
        )
    return text


def _cached_snapshot(hub_id: str, probe: str) -> str | None:
    """The local snapshot folder of a fully cached hub repository (its ``probe`` file is there), else None."""
    try:
        from huggingface_hub import snapshot_download, try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(hub_id, probe), str):
            return None
        return snapshot_download(hub_id, local_files_only=True)
    except Exception:  # not a valid repo id, or not cached: the caller decides what that means
        return None


def _hub_id_of(path: str) -> str | None:
    """``owner/name`` for a folder inside the hub cache (``.../models--owner--name/snapshots/<revision>``)."""
    match = re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]", path)
    return f"{match[1]}/{match[2]}" if match else None


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
            Hugging Face hub id such as ``"CompVis/stable-diffusion-v1-4"``. A hub id is read from the local cache
            when it is there (no network request at all); otherwise it is downloaded, and when the hub cannot be
            reached (or ``HF_HUB_OFFLINE=1``) a :class:`ModelNotFoundError` says so at once.
        device: where the model runs; nothing is moved behind your back later.
        dtype: weights dtype; ``None`` means float32 (use ``torch.float16`` on GPUs to halve memory).
        local_files_only: for hub ids, only look in the local cache.
        from_pretrained_kwargs: passed on to ``DiffusionPipeline.from_pretrained`` (e.g. ``variant="fp16"``).
            ``safety_checker=None`` loads an SD 1.x pipeline without its safety checker: :func:`disentkit.sample`
            then returns every image unfiltered (``SampleResult.nsfw`` is None). With the checker, flagged images
            come back black and flagged, as from diffusers' own pipeline.

    Loading bars and the known, harmless messages of :func:`quiet_loading` are not shown; other warnings are.
    """
    dev = resolve_device(device)
    dtype = dtype or torch.float32
    name = os.fspath(model)
    with quiet_loading():
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
    cache_error: Exception | None = None
    if not kwargs.get("force_download"):
        try:
            # The cache first: a cached model loads without a single request (no retries without network). A newer
            # revision on the hub is not looked for; pass force_download=True (or revision=...) to fetch it.
            return DiffusionPipeline.from_pretrained(name, torch_dtype=dtype, local_files_only=True, **kwargs)
        except (OSError, ValueError) as err:
            cache_error = err
    if local_files_only or not hub_reachable():
        why = "local_files_only=True" if local_files_only else (
            "HF_HUB_OFFLINE is set" if hub_is_offline() else "the Hugging Face hub cannot be reached from here")
        raise ModelNotFoundError(
            f"{name!r} is not a local folder, nor in the local Hugging Face cache, and {why}"
            f"{_first_line(cache_error)}. "
            f"Download it once where there is network (`hf download {name}`) and copy the cache, or pass the local "
            "folder instead."
        ) from cache_error
    try:
        return DiffusionPipeline.from_pretrained(name, torch_dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:  # huggingface_hub's offline/not-found errors derive from these
        raise ModelNotFoundError(
            f"{name!r} is not a local folder, and loading it as a Hugging Face hub id failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            f"If this machine is offline, download it once where there is network "
            f"(`hf download {name}`) and copy the cache, or pass the local folder instead."
        ) from err


def _first_line(err: Exception | None) -> str:
    return "" if err is None else f" ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"


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


def default_image_size(pipe: DiffusionPipeline) -> tuple[int, int]:
    """(height, width) in pixels of the images ``pipe`` makes when no size is given (512 for SD 1.x, 768 for SD 2.1,
    1024 for SDXL: the UNet's ``sample_size`` times the VAE's factor)."""
    side = pipe.unet.config.sample_size
    h, w = (side, side) if isinstance(side, int) else tuple(side)
    return h * pipe.vae_scale_factor, w * pipe.vae_scale_factor


def check_image_size(pipe: DiffusionPipeline, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(height, width) in pixels, defaults filled in from :func:`default_image_size`; raise :class:`ImageSizeError`
    unless both are positive multiples of the VAE's factor (8 for every SD model)."""
    default_h, default_w = default_image_size(pipe)
    height, width = height or default_h, width or default_w
    factor = pipe.vae_scale_factor
    if height < factor or width < factor or height % factor or width % factor:
        raise ImageSizeError(
            f"height and width must be positive multiples of {factor} (the VAE's factor) for this model, got "
            f"{height}x{width}; the nearest are {nearest_multiple(height, factor)}x{nearest_multiple(width, factor)}."
        )
    return height, width


def nearest_multiple(n: float, factor: int) -> int:
    """The multiple of ``factor`` nearest to ``n`` (at least ``factor``)."""
    return max(factor, int(round(n / factor)) * factor)


def latent_shape(pipe: DiffusionPipeline, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(channels, h, w) of the latent for an image of ``height`` x ``width`` pixels (default: the model's size)."""
    height, width = check_image_size(pipe, height, width)
    factor = pipe.vae_scale_factor
    return (pipe.unet.config.in_channels, height // factor, width // factor)


def image_size_of_latents(pipe: DiffusionPipeline, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) in pixels of the image a latent of (h, w) decodes to."""
    return tuple(int(n) * pipe.vae_scale_factor for n in latent_hw)


# ---- what a model is --------------------------------------------------------------------------------------------
def model_id(pipe) -> str:
    """A readable name of the model ``pipe`` was loaded from: "toyworld", a hub id (also for a folder inside the hub
    cache), a folder path, or "" if unknown. A label and a hint where to load it from; what identifies the model is
    :func:`model_fingerprint`."""
    name = getattr(pipe, "name_or_path", None)
    if not name:
        return ""
    path = Path(name).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_relative_to(toyworld_dir()):
            return TOYWORLD
        return _hub_id_of(str(path)) or str(path)
    return str(name)


# Configuration values that change what a given set of weights does with a schedule (the others are architecture,
# which the weights' names and shapes already pin down).
_FINGERPRINT_CONFIG = {
    "scheduler": ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type"),
    "vae": ("scaling_factor", "shift_factor"),
}
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_fingerprint(pipe) -> dict:
    """What the model is, independent of where it was loaded from, its dtype and its device.

    Returns a JSON-able dict: ``structure`` (a hash of every weight's component, name and shape), ``config`` (the
    scheduler's training noise schedule and prediction type, the VAE's latent scaling), and ``weights``: for each
    component (UNet, VAE, text encoders), [number of weights, their sum, their sum of squares]. The sums move with
    any training, and only by float rounding with a dtype or device change; :func:`same_model` compares them with
    that tolerance. The safety checker and feature extractor are not part of the model (loading without them gives
    the same fingerprint). Computed once per pipeline (again if its weights change in place).
    """
    modules = {n: m for n, m in sorted(pipe.components.items()) if isinstance(m, torch.nn.Module)
               and n not in ("safety_checker", "feature_extractor", "image_encoder")}  # fmt: skip
    params = [p for m in modules.values() for p in m.parameters()]
    version = (tuple(id(p) for p in params[:1]), sum(p._version for p in params))  # in-place updates bump _version
    cached = _FINGERPRINTS.get(pipe)
    if cached is not None and cached[0] == version:
        return copy.deepcopy(cached[1])
    structure = hashlib.sha256()
    weights = {}
    with torch.no_grad():
        for name, module in modules.items():
            count, total, squares = 0, None, None
            for pname, p in module.named_parameters():
                structure.update(f"{name}.{pname}:{tuple(p.shape)};".encode())
                s1 = p.sum(dtype=torch.float32)
                s2 = torch.linalg.vector_norm(p, dtype=torch.float32).square()
                total, squares = (s1, s2) if total is None else (total + s1, squares + s2)
                count += p.numel()
            weights[name] = [count, 0.0 if total is None else float(total), 0.0 if squares is None else float(squares)]
    config = {}
    for component, keys in _FINGERPRINT_CONFIG.items():
        cfg = getattr(getattr(pipe, component, None), "config", None)
        if cfg is not None:
            config.update({f"{component}.{k}": _plain(cfg.get(k)) for k in keys if cfg.get(k) is not None})
    result = {"structure": structure.hexdigest()[:16], "config": config, "weights": weights}
    try:
        _FINGERPRINTS[pipe] = (version, copy.deepcopy(result))
    except TypeError:  # an object that cannot be weakly referenced: computed every time
        pass
    return result


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def same_model(a: dict, b: dict, rtol: float = 1e-5) -> bool:
    """Whether two :func:`model_fingerprint` results describe the same weights (up to dtype/device rounding)."""
    if a.get("structure") != b.get("structure") or set(a.get("weights", {})) != set(b.get("weights", {})):
        return False
    ca, cb = a.get("config", {}), b.get("config", {})
    if ca.keys() != cb.keys() or any(
        ca[k] != cb[k] and not (isinstance(ca[k], float) and math.isclose(ca[k], cb[k], rel_tol=1e-6)) for k in ca
    ):
        return False
    for name, (n, s1, s2) in a["weights"].items():
        m, t1, t2 = b["weights"][name]
        # Rounding to float16 or bfloat16 moves each weight by <= 2^-9 of itself, in random directions: the sum of
        # squares by ~2^-8 / sqrt(n) relatively, the sum by ~2^-9 sqrt(sum of squares). Four times that, plus
        # ``rtol`` for float32 sums taken in another order on another device; any training moves both far more.
        tol = rtol + 4 * 2**-8 / math.sqrt(max(n, 1))
        squares_differ = abs(s2 - t2) > tol * max(abs(s2), abs(t2))
        if n != m or squares_differ or abs(s1 - t1) > tol * math.sqrt(max(n, 1) * max(s2, t2)):
            return False
    return True


def provenance(pipe, tape=None) -> dict:
    """What a schedule made on ``pipe`` records about its model and image size: ``model`` (:func:`model_id`),
    ``model_fingerprint`` (:func:`model_fingerprint`) and, given the noise ``tape`` it was made with, ``height`` and
    ``width`` in pixels. :func:`disentkit.transfer.fit_schedule` checks them."""
    meta = {"model": model_id(pipe), "model_fingerprint": model_fingerprint(pipe)}
    if tape is not None:
        meta["height"], meta["width"] = image_size_of_latents(pipe, tape.latent_shape[1:])
    return meta
