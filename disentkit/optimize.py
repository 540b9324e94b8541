"""optimize(): learn the per-step mixing weights lambda_i by gradient descent through the whole sampler.

The paper's algorithm (Wu et al., CVPR 2023, Sec. 4) in one loop:

    x_orig = sample(c0 only, same noise)                         # once, without gradients
    for it in range(iters):
        x_edit = decode(denoise(c_i = (1 - lam[i]) c0 + lam[i] c1, same noise))   # differentiable in lam
        L = L_dir(x_edit, x_orig) + beta * L_perc(x_edit, x_orig)
        L.backward(); adam.step()                                # only lam has requires_grad

Memory: the diffusion model is frozen (no weight gradients are ever built), and ``denoise(checkpoint=True)``
recomputes each UNet call in the backward pass, so an iteration keeps one latent per step instead of every
activation of every step; the decode recomputes its blocks the same way (``decode(checkpoint=True)``). Loss
networks are built once, before the loop; one decode per iteration.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
import types
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from .conditioning import Conditioning
from .errors import DisentkitError, PromptError
from .files import atomic_path
from .losses import Loss, default_clip, describe_loss, load_clip, paper_losses, with_floors
from .noise import NoiseTape
from .pipeline import pipeline_device, pipeline_dtype, toyworld_dir
from .sampling import decode, denoise, to_pil
from .schedules import MixSchedule

CHECKPOINT_FORMAT = "disentkit.optimize-checkpoint/1"
CHECKPOINT_FILE = "optimize_state.pt"


class CheckpointMismatchError(DisentkitError, ValueError):
    """A checkpoint folder holds the state of a different optimisation (other prompts, seeds, steps, losses...)."""


def reference_init(steps: int, c0_steps: int = 20, late: float = 1.0) -> MixSchedule:
    """The paper's starting point: pure c0 for the first ``c0_steps`` steps, then ``late`` (1.0, or 1.1-1.2 for
    a stronger edit) for the rest. E.g. ``reference_init(50, c0_steps=20)`` is the "smiling" reference run."""
    return MixSchedule.switch(steps, c0_steps, 0.0, late)


def model_id(pipe) -> str:
    """A stable name of the model ``pipe`` was loaded from: "toyworld", a hub id, a folder path, or "" if unknown."""
    name = getattr(pipe, "name_or_path", None)
    if not name:
        return ""
    path = Path(name).expanduser()
    if path.exists():
        path = path.resolve()
        return "toyworld" if path.is_relative_to(toyworld_dir()) else str(path)
    return str(name)


# ---- what the loop reports ---------------------------------------------------------------------------------------
@dataclass
class OptimizeStep:
    """Passed to ``callback`` after every iteration (e.g. to update a live plot in a notebook).

    ``lam`` (N,) or (N, T) are the weights that made ``edited`` (before this iteration's update); ``losses`` holds
    the total ("loss") and each term, averaged over the runs. Tensors are detached CPU copies.
    """

    iteration: int
    lam: torch.Tensor
    losses: dict[str, float]
    edited: torch.Tensor  # (R, 3, H, W) pixels in [0, 1]
    reference: torch.Tensor  # (R, 3, H, W) the pure-c0 images
    history: pd.DataFrame


@dataclass
class OptimizeResult:
    """What :func:`optimize` learned.

    Attributes:
        schedule: the learned :class:`MixSchedule`; its ``meta`` says model, prompts, scheduler, steps, guidance.
        images, pixels: the final edited images (PIL list and (R, 3, H, W) in [0, 1]) with the learned schedule.
        reference_images, reference_pixels: the pure-c0 images with the same noise (lambda = 0 everywhere).
        history: one row per iteration: ``iteration``, ``loss``, one column per loss term, ``grad_norm`` (over
            the learned steps) and ``lambda_0`` ... ``lambda_{N-1}``. The last row (``iteration == iters``) is the
            final iterate.
        best_iteration: the history row whose weights ``schedule`` holds: the lowest loss seen with
            ``keep="best"`` (0 means the start was never beaten), ``iters`` with ``keep="last"``.
    """

    schedule: MixSchedule
    images: list[Image.Image]
    pixels: torch.Tensor
    reference_images: list[Image.Image]
    reference_pixels: torch.Tensor
    history: pd.DataFrame
    meta: dict = field(default_factory=dict)
    best_iteration: int | None = None

    @property
    def image(self) -> Image.Image:
        """The first edited image."""
        return self.images[0]


# ---- the objective ---------------------------------------------------------------------------------------------
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
            raise TypeError(f"loss {name!r} is not callable; give fn(edited, reference) -> (R,) or a scalar.")
        terms[str(name)] = (float(weight), fn)
    return terms


class Objective:
    """``L(lam)`` for one prompt pair and one noise tape: sample with the mix, decode, weighted sum of the losses.

    The pure-c0 reference image is sampled once, here, without gradients. Calling the objective under autograd
    makes the whole chain differentiable in ``lam``; under ``torch.no_grad()`` it is a plain evaluation.
    """

    def __init__(
        self,
        pipe,
        cond: Conditioning,
        tape: NoiseTape,
        terms: dict[str, tuple[float, Loss]],
        guidance: float = 7.5,
        grad_checkpoint: bool = True,
        amp: bool | torch.dtype = True,
    ):
        if cond.pairs != 1:
            raise PromptError(
                f"optimize learns one schedule for one prompt pair; got {cond.pairs} pairs. Pass cond.select(...)."
            )
        self.pipe, self.tape, self.terms, self.guidance = pipe, tape, terms, guidance
        self.grad_checkpoint = grad_checkpoint
        self.cond = cond.select(torch.zeros(tape.batch, dtype=torch.long))  # the pair, once per run
        self.autocast = _autocast(pipe, amp)
        with torch.no_grad():
            zeros = torch.zeros(tape.batch, tape.steps, cond.tokens)
            self.reference = self.render(zeros).detach()  # (R, 3, H, W), pure c0

    def render(self, lam_runs: torch.Tensor) -> torch.Tensor:
        """Pixels (R, 3, H, W) in [0, 1] for per-run weights ``lam_runs`` (R, N, T)."""
        with self.autocast:
            z = denoise(
                self.pipe, self.cond, lam_runs, self.tape, self.guidance,
                checkpoint=self.grad_checkpoint, progress=False,
            )  # fmt: skip
            return _at_least_fp32(decode(self.pipe, z, checkpoint=self.grad_checkpoint))

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


def _autocast(pipe, amp: bool | torch.dtype):
    """Mixed precision for float32 models on a GPU only (bf16 where supported); CPUs keep exact float32."""
    device = pipeline_device(pipe)
    if device.type != "cuda" or amp is False or pipeline_dtype(pipe) != torch.float32:
        return contextlib.nullcontext()
    if isinstance(amp, torch.dtype):
        return torch.autocast("cuda", dtype=amp)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


# ---- the step rule ---------------------------------------------------------------------------------------------
class TensorwiseAdam(torch.optim.Optimizer):
    """Adam with one second-moment estimate per tensor instead of one per element (the block-wise idea of
    Adam-mini, Zhang et al. 2024, with the whole schedule as one block).

    Why it matters here: plain Adam divides every lambda's gradient by its own running magnitude, so its first
    step moves *every* lambda by ``lr`` whatever its gradient, and a lambda whose gradient is tiny noise (an early,
    content-deciding step the style hardly depends on) drifts as far as the ones that matter. Sharing the scale
    keeps Adam's step size (the root mean square step over the learned entries is about ``lr``) but moves each
    lambda in proportion to its gradient, so steps that barely affect the loss stay where they started.

    A param group may carry a bool ``mask`` (broadcastable to its tensors): the entries that are learned. The
    shared scale is the mean square gradient over those entries only, so freezing steps does not enlarge the step
    of the others.
    """

    def __init__(self, params, lr: float = 0.05, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, mask=None))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros((), dtype=p.dtype, device=p.device)  # one per tensor
                state["step"] += 1
                t = float(state["step"])
                square = p.grad.pow(2)
                if group["mask"] is not None:
                    square = square[torch.broadcast_to(group["mask"].to(p.device), p.shape)]
                state["exp_avg"].lerp_(p.grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).add_(square.mean(), alpha=1 - beta2)
                m_hat = state["exp_avg"] / (1 - beta1**t)
                v_hat = state["exp_avg_sq"] / (1 - beta2**t)
                p.add_(m_hat / (v_hat.sqrt() + group["eps"]), alpha=-group["lr"])
        return loss


OPTIMIZERS = {"adam": torch.optim.Adam, "tensorwise-adam": TensorwiseAdam}


class LearnStepsError(DisentkitError, ValueError):
    """``learn_steps`` names no step, a step the sampler does not have, or is not a step index, slice or mask."""


def learn_mask(learn_steps, steps: int) -> torch.Tensor | None:
    """``learn_steps`` (None, an int k = "steps k.. only", a slice, step indices or a bool mask) -> (N,) bool mask,
    or None when every step is learned."""
    if learn_steps is None:
        return None
    if isinstance(learn_steps, bool):
        raise LearnStepsError("learn_steps is a step index, a slice, a list of steps or a bool mask, not a bool.")
    try:  # any integer (int, numpy int, 0-d tensor): "steps k..N-1"
        first = operator.index(learn_steps)
    except TypeError:
        first = None
    if first is not None:
        if not 0 <= first < steps:
            raise LearnStepsError(
                f"learn_steps={first} would learn steps {first}..{steps - 1}; give a step in 0..{steps - 1}."
            )
        learn_steps = slice(first, None)
    mask = torch.zeros(steps, dtype=torch.bool)
    if isinstance(learn_steps, slice):
        mask[learn_steps] = True
    else:
        given = torch.as_tensor(learn_steps)
        if given.dtype == torch.bool:
            if given.shape != (steps,):
                raise LearnStepsError(
                    f"a bool learn_steps mask needs {steps} entries (one per step), got {tuple(given.shape)}."
                )
            mask = given.clone()
        else:
            if given.is_floating_point() or given.is_complex():
                raise LearnStepsError(f"learn_steps indices must be integers, got {given.tolist()}.")
            if given.numel() and (given.min() < 0 or given.max() >= steps):
                raise LearnStepsError(f"learn_steps indices must lie in 0..{steps - 1}, got {given.tolist()}.")
            mask[given.long()] = True
    if not mask.any():
        raise LearnStepsError(f"learn_steps={learn_steps!r} leaves no step of {steps} to learn.")
    return None if mask.all() else mask


# ---- checkpoints ----------------------------------------------------------------------------------------------
def _save_checkpoint(
    folder: Path, config: dict, iteration: int, lam, adam, scaler, history: list[dict], best: dict | None
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "iteration": iteration,  # number of Adam updates done
        "lam": lam.detach().cpu().clone(),
        "adam": adam.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history,
        "best": best,  # {"iteration", "loss", "lam"}: the lowest-loss weights seen so far
    }
    with atomic_path(folder / CHECKPOINT_FILE) as tmp:  # a crash mid-write keeps the previous checkpoint
        torch.save(state, tmp)


def _load_checkpoint(folder: Path, config: dict) -> dict | None:
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"{path} is not a disentkit optimisation checkpoint (format {state.get('format')!r})."
        )
    # Checkpoints from before these options existed were made with Adam on every step.
    state["config"].setdefault("optimizer", "adam")
    state["config"].setdefault("learn_steps", "all")
    # Before loss_terms were saved, nothing said which CLIP or prompts the terms used: such a checkpoint is trusted.
    state["config"].setdefault("loss_terms", config.get("loss_terms"))
    if state["config"] != config:
        diff = sorted(k for k in config.keys() | state["config"].keys() if config.get(k) != state["config"].get(k))
        raise CheckpointMismatchError(
            f"{path} belongs to another optimisation (differs in {diff}); use another checkpoint_dir or delete it."
        )
    return state


# ---- the loop ----------------------------------------------------------------------------------------------------
def optimize(
    pipe,
    cond: Conditioning,
    init_schedule: MixSchedule,
    tape: NoiseTape,
    losses=None,
    iters: int = 10,
    lr: float = 0.05,
    beta: float = 0.05,
    guidance: float = 7.5,
    *,
    clip=None,
    grad_checkpoint: bool = True,
    amp: bool | torch.dtype = True,
    checkpoint_dir: str | os.PathLike | None = None,
    callback: Callable[[OptimizeStep], None] | None = None,
    keep: str = "best",
    optimizer: str = "adam",
    learn_steps=None,
    floors: float = 0.0,
    progress: bool = True,
) -> OptimizeResult:
    """Learn the per-step weights of the styled prompt with Adam, starting from ``init_schedule``.

    Args:
        pipe: a pipeline from :func:`disentkit.load_pipeline` or diffusers. Its weights, and those of the loss
            networks, are kept out of autograd for the call (``requires_grad`` is given back afterwards).
        cond: one prompt pair from :func:`disentkit.encode` (c0 neutral, c1 styled).
        init_schedule: N weights (N = ``tape.steps``), e.g. :func:`reference_init`; per-token (N, T) works too.
        tape: the fixed noise; with several seeds, one shared schedule is learned on all of them (mean loss).
        losses: ``None`` for the paper's ``L_dir + beta * L_perc`` (CLIP from ``clip``), else ``{name: fn}`` or
            ``{name: (weight, fn)}`` with ``fn(edited, reference) -> (R,)`` on pixels in [0, 1].
        iters, lr: Adam iterations and learning rate (the paper: 10 and 0.05).
        beta: weight of the perceptual term in the default objective (the paper: 0.03-0.05).
        guidance: classifier-free guidance scale (the paper: 7.5).
        clip: a loaded :class:`~disentkit.losses.Clip`, a folder or hub id (default: the toy CLIP for toyworld,
            ``openai/clip-vit-base-patch32`` otherwise). Only used when ``losses`` is None.
        grad_checkpoint: recompute each UNet call, and each layer of the VAE decoder, in the backward pass (much
            less memory; about 1.5x the time on the toy model, ``benchmarks/run.py`` figure 2).
        amp: mixed precision on CUDA for float32 models (True: bf16 if supported, else fp16; or a dtype). No
            effect on CPUs.
        checkpoint_dir: save the state after every iteration (atomically) and resume from it when called again
            with the same folder and settings.
        callback: called with an :class:`OptimizeStep` after every iteration.
        keep: ``"best"`` returns the weights with the lowest loss among the start, every iterate and the final
            one (Adam with the paper's step size overshoots now and then; the loss of every iterate is computed
            anyway), ``"last"`` the final iterate, as the paper's reference code does.
        optimizer: ``"adam"`` (the paper's) or ``"tensorwise-adam"`` (:class:`TensorwiseAdam`: one step scale for
            the whole schedule, so lambdas move in proportion to their gradients and steps the loss hardly depends
            on stay put).
        learn_steps: which steps' weights are learned; the others keep their initial values. ``None``: all; an
            int ``k``: steps ``k..N-1`` (e.g. the switch step, so the c0 steps that lay out the content stay
            pure c0); or a slice, a list of step indices, or an (N,) bool mask.
        floors: > 0 adds, for every loss term, ``floors x`` its weight ``x max(0, term - term at the start)`` per
            image (:func:`~disentkit.losses.with_floors`), the start being ``init_schedule``'s own images rendered
            as the optimiser renders them (so the floors are silent at iteration 0, autocast included): steps that
            leave any image worse than the start on any term are penalised. 0: off.
        progress: show a progress bar.
    """
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', not {keep!r}.")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, not {optimizer!r}.")
    init_schedule.check_steps(tape.steps)
    mask = learn_mask(learn_steps, tape.steps)
    tape.check(pipe)
    tape.warn_if_guidance_differs(guidance)
    device = pipeline_device(pipe)
    if losses is None and clip is None:
        clip = default_clip(pipe)
    terms = as_loss_terms(losses, clip, cond, beta, device)
    # Weights stay out of autograd even for a pipeline or loss network not loaded frozen (diffusers' from_pretrained
    # leaves requires_grad on): otherwise every iteration would build gradients for ~1B weights.
    with _weights_frozen(pipe, terms):
        objective = Objective(pipe, cond, tape, terms, guidance, grad_checkpoint, amp)
        if floors:
            if not floors > 0:
                raise ValueError(f"floors is a weight >= 0 (e.g. 10), got {floors}.")
            with torch.no_grad():  # the start's images and losses, through the very path (and precision) of iteration 0
                start_pixels = objective.render(objective.expand(init_schedule.weights.to(device)))
                with objective.autocast:
                    terms = objective.terms = with_floors(terms, start_pixels, objective.reference, floors)

        # The only tensor that ever requires a gradient.
        lam = init_schedule.weights.clone().to(device).requires_grad_(True)
        adam = OPTIMIZERS[optimizer]([lam], lr=lr)
        if mask is not None:  # steps not learned get no gradient, so no optimiser ever moves them
            learned = mask.to(device) if lam.ndim == 1 else mask.to(device)[:, None]
            lam.register_hook(lambda g: g.masked_fill(~learned, 0.0))
            if isinstance(adam, TensorwiseAdam):  # the shared scale averages over the learned steps only
                adam.param_groups[0]["mask"] = learned
        # The backward runs in float16 under fp16 autocast and for a float16 model (SDXL in half precision, say): its
        # gradients underflow without loss scaling.
        fp16 = (isinstance(objective.autocast, torch.autocast) and objective.autocast.fast_dtype == torch.float16) or (
            device.type == "cuda" and pipeline_dtype(pipe) == torch.float16
        )
        scaler = torch.amp.GradScaler("cuda") if fp16 else None

        meta = {
            "model": model_id(pipe),
            "prompts": [cond.prompts0[0], cond.prompts1[0]],
            "scheduler": tape.scheduler,
            "steps": tape.steps,
            "eta": tape.eta,
            "guidance": float(guidance),
            "seeds": list(tape.seeds),
            "iters": int(iters),
            "lr": float(lr),
            "optimizer": optimizer,
            "learn_steps": mask.nonzero().flatten().tolist() if mask is not None else "all",
            "losses": {name: weight for name, (weight, _) in terms.items()},
            "loss_terms": {name: describe_loss(fn) for name, (_, fn) in terms.items()},
            "init": {"label": init_schedule.label, "weights": init_schedule.weights.tolist()},
        }
        history: list[dict] = []
        start = 0
        best: dict | None = None  # the lowest-loss weights seen: {"iteration", "loss", "lam"}
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        config = {k: v for k, v in meta.items() if k != "iters"}  # a longer run may resume a shorter one
        if folder is not None and (state := _load_checkpoint(folder, config)) is not None:
            if state["iteration"] > iters:
                raise CheckpointMismatchError(
                    f"{folder} already holds {state['iteration']} iterations, more than iters={iters}; "
                    "ask for more or use another folder."
                )
            with torch.no_grad():
                lam.copy_(state["lam"].to(device))
            adam.load_state_dict(state["adam"])
            if scaler is not None and state["scaler"] is not None:
                scaler.load_state_dict(state["scaler"])
            history, start = list(state["history"]), state["iteration"]
            best = state.get("best")

        bar = tqdm(range(start, iters), desc="optimizing lambdas", disable=not progress, initial=start, total=iters)
        for it in bar:
            adam.zero_grad(set_to_none=True)
            total, values, pixels = objective(lam)
            (scaler.scale(total) if scaler else total).backward()
            grad = lam.grad if scaler is None else lam.grad / scaler.get_scale()
            row = _history_row(it, total, values, lam, grad)
            history.append(row)
            lam_used = lam.detach().cpu().clone()  # the weights that made these images, before the update
            if best is None or row["loss"] < best["loss"]:
                best = {"iteration": it, "loss": row["loss"], "lam": lam_used}
            if scaler is not None:
                scaler.step(adam)
                scaler.update()
            else:
                adam.step()
            if folder is not None:
                _save_checkpoint(folder, config, it + 1, lam, adam, scaler, history, best)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if callback is not None:
                losses_now = {k: row[k] for k in ["loss", *terms]}
                edited, reference = pixels.detach().cpu(), objective.reference.cpu()
                callback(OptimizeStep(it, lam_used, losses_now, edited, reference, pd.DataFrame(history)))

        # Evaluate the final weights once more: the last history row, and the images to return if they are kept.
        with torch.no_grad():
            total, values, pixels = objective(lam)
        history.append(_history_row(iters, total, values, lam, None))
        final = lam.detach().cpu().clone()
        if keep == "last" or best is None or history[-1]["loss"] <= best["loss"]:
            kept, best_iteration = final, iters
        else:  # an earlier iterate was better: render it again (no gradients) for the images
            kept, best_iteration = best["lam"], int(best["iteration"])
            with torch.no_grad():
                pixels = objective(kept.to(device))[2]
        meta["kept"] = {"rule": keep, "iteration": best_iteration}
        schedule = MixSchedule(kept, "learned", meta)
        pixels, reference = pixels.detach().float().cpu(), objective.reference.float().cpu()
        return OptimizeResult(
            schedule, to_pil(pixels), pixels, to_pil(reference), reference, pd.DataFrame(history), meta, best_iteration
        )


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
def _weights_frozen(*objects):
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


def _history_row(it: int, total, values: dict, lam: torch.Tensor, grad) -> dict:
    row = {"iteration": it, "loss": float(total.detach())}
    row.update({name: float(v.detach().float().mean()) for name, v in values.items()})
    row["grad_norm"] = float(grad.norm()) if grad is not None else float("nan")
    per_step = lam.detach().float().cpu()
    per_step = per_step if per_step.ndim == 1 else per_step.mean(dim=1)  # per-token: log the token mean
    row.update({f"lambda_{i}": float(w) for i, w in enumerate(per_step)})
    return row
