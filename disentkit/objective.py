"""The objective :func:`disentkit.optimize` descends: ``L(lam)`` = sample with the mix, decode, weighted losses.

    x_orig = sample(c0 only, same noise)              # once, in the constructor, without gradients
    x_edit = decode(denoise(c_i = (1 - lam[i]) c0 + lam[i] c1, same noise))
    L      = sum_k weight_k * loss_k(x_edit, x_orig)  # the paper: L_dir + beta * L_perc

Only ``lam`` may require a gradient: :func:`weights_frozen` keeps every weight of the pipeline and of the loss
networks out of autograd for the optimisation.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import types
from typing import Mapping

import torch

from .conditioning import Conditioning
from .deprecation import UNSET, renamed
from .errors import LossTypeError, PromptError
from .losses import Loss, load_clip, paper_losses
from .noise import NoiseTape
from .pipeline import pipeline_device, pipeline_dtype
from .sampling import decode, denoise


def as_loss_terms(losses, clip=None, cond: Conditioning | None = None, beta: float = 0.05, device="cpu"):
    """Normalise ``losses`` to ``{name: (weight, fn)}``.

    Accepts ``None`` (the paper's ``L_dir + beta * L_perc`` with ``clip``, a loaded :class:`~disentkit.losses.Clip`
    or a path/hub id), a dict ``{name: fn}`` or ``{name: (weight, fn)}``, a single callable, or a list of them.
    """
    if losses is None:
        if clip is None or isinstance(clip, (str, os.PathLike)):
            clip = load_clip(clip, device)
        return paper_losses(clip, cond.prompts0[0], cond.prompts1[0], beta)
    if callable(losses):
        losses = {"loss0": losses}
    elif not isinstance(losses, Mapping):
        losses = {f"loss{k}": fn for k, fn in enumerate(losses)}
    terms = {}
    for name, value in losses.items():
        weight, fn = value if isinstance(value, tuple) else (1.0, value)
        if not callable(fn):
            raise LossTypeError(f"loss {name!r} is not callable; give fn(edited, reference) -> (R,) or a scalar.")
        terms[str(name)] = (float(weight), fn)
    return terms


class Objective:
    """``L(lam)`` for one prompt pair and one noise tape: sample with the mix, decode, weighted sum of the losses.

    The pure-c0 reference image is sampled once, here, without gradients. Calling the objective under autograd
    makes the whole chain differentiable in ``lam``; under ``torch.no_grad()`` it is a plain evaluation.
    ``recompute``: recompute each UNet call and each decoder layer in the backward pass instead of keeping their
    activations (activation checkpointing: far less memory, a little more time).
    """

    def __init__(
        self,
        pipe,
        cond: Conditioning,
        tape: NoiseTape,
        terms: dict[str, tuple[float, Loss]],
        guidance: float = 7.5,
        recompute: bool = True,
        amp: bool | torch.dtype = True,
        *,
        grad_checkpoint=UNSET,
    ):
        recompute = renamed(recompute, grad_checkpoint, "grad_checkpoint", "recompute", "Objective")
        if cond.pairs != 1:
            raise PromptError(
                f"optimize learns one schedule for one prompt pair; got {cond.pairs} pairs. Pass cond.select(...)."
            )
        self.pipe, self.tape, self.terms, self.guidance = pipe, tape, terms, guidance
        self.recompute = recompute
        self.cond = cond.select(torch.zeros(tape.batch, dtype=torch.long))  # the pair, once per run
        self.autocast = autocast_for(pipe, amp)
        with torch.no_grad():
            zeros = torch.zeros(tape.batch, tape.steps, cond.tokens)
            self.reference = self.render(zeros).detach()  # (R, 3, H, W), pure c0

    def render(self, lam_runs: torch.Tensor) -> torch.Tensor:
        """Pixels (R, 3, H, W) in [0, 1] for per-run weights ``lam_runs`` (R, N, T)."""
        with self.autocast:
            z = denoise(
                self.pipe, self.cond, lam_runs, self.tape, self.guidance, recompute=self.recompute, progress=False
            )
            return _at_least_fp32(decode(self.pipe, z, recompute=self.recompute))

    def expand(self, lam: torch.Tensor) -> torch.Tensor:
        """(N,) or (N, T) weights shared by every run -> (R, N, T)."""
        R, N, T = self.tape.batch, self.tape.steps, self.cond.tokens
        return (lam[None, :, None] if lam.ndim == 1 else lam[None]).expand(R, N, T)

    def __call__(self, lam: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Returns (total loss, {term: (R,) values}, edited pixels)."""
        pixels = self.render(self.expand(lam))
        with self.autocast:
            values = {
                name: _at_least_fp32(torch.as_tensor(fn(pixels, self.reference))).reshape(-1)  # (R,) or (1,)
                for name, (_, fn) in self.terms.items()
            }
        total = sum(weight * values[name].mean() for name, (weight, _) in self.terms.items())
        return total, values, pixels


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    # Losses are summed in float32 even for fp16 models; float64 (the gradient test) stays float64.
    return x if x.dtype == torch.float64 else x.float()


def autocast_for(pipe, amp: bool | torch.dtype):
    """Mixed precision for float32 models on a GPU only (bf16 where supported); CPUs keep exact float32."""
    device = pipeline_device(pipe)
    if device.type != "cuda" or amp is False or pipeline_dtype(pipe) != torch.float32:
        return contextlib.nullcontext()
    if isinstance(amp, torch.dtype):
        return torch.autocast("cuda", dtype=amp)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


# ---- keeping every model weight out of autograd ------------------------------------------------------------------
def _modules_in(obj, depth: int = 8, seen: dict | None = None):
    """The torch modules in a pipeline, a loss term or a structure of them: dicts, lists, object attributes (a
    wrapped term's inner loss, a loss's CLIP, a loss module's plain attributes), a function's closure, a partial's
    arguments, a bound method's object. Python modules (a closure may hold ``F``) are not entered. Each object is
    walked once from the shallowest place it is reached; a module's own submodules come with its parameters."""
    seen = {} if seen is None else seen
    if depth < 0 or seen.get(id(obj), -1) >= depth:
        return
    seen[id(obj)] = depth
    if isinstance(obj, (torch.Tensor, str, bytes, int, float, bool, type, types.ModuleType)) or obj is None:
        return
    if isinstance(obj, torch.nn.Module):
        yield obj
        # Its parameters cover its submodules; a plain attribute such as a loss module's Clip may hold more.
        skip = {"_parameters", "_buffers", "_modules"}
        children = [v for k, v in vars(obj).items() if k not in skip]
    elif isinstance(obj, _pipeline_types()):
        children = list(obj.components.values())
    elif isinstance(obj, Mapping):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif isinstance(obj, functools.partial):
        children = [obj.func, *obj.args, *obj.keywords.values()]
    elif inspect.ismethod(obj):
        children = [obj.__self__, obj.__func__]
    elif inspect.isfunction(obj):
        children = [cell.cell_contents for cell in obj.__closure__ or () if _cell_filled(cell)]
    else:  # any other object: its attributes, read without running properties or __getattr__
        try:
            children = list(object.__getattribute__(obj, "__dict__").values())
        except (AttributeError, TypeError):
            children = []
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                try:
                    children.append(object.__getattribute__(obj, slot))
                except AttributeError:  # a slot never assigned
                    pass
    for child in children:
        yield from _modules_in(child, depth - 1, seen)


def _cell_filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return False
    return True


def _pipeline_types() -> tuple[type, ...]:
    from diffusers import DiffusionPipeline

    from .pipeline import _PipelineView

    return (DiffusionPipeline, _PipelineView)


@contextlib.contextmanager
def weights_frozen(*objects):
    """``requires_grad=False`` on every weight of the modules in ``objects`` for the block; the weights that had it
    on get it back afterwards, so the caller's models come out as they went in."""
    thawed = {id(p): p for obj in objects for m in _modules_in(obj) for p in m.parameters() if p.requires_grad}
    for p in thawed.values():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in thawed.values():
            p.requires_grad_(True)
