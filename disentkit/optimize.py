"""optimize(): learn the per-step mixing weights lambda_i by gradient descent through the whole sampler.

The paper's algorithm (Wu et al., CVPR 2023, Sec. 4) in one loop:

    x_orig = sample(c0 only, same noise)                         # once, without gradients
    for it in range(iters):
        x_edit = decode(denoise(c_i = (1 - lam[i]) c0 + lam[i] c1, same noise))   # differentiable in lam
        L = L_dir(x_edit, x_orig) + beta * L_perc(x_edit, x_orig)
        L.backward(); adam.step()                                # only lam has requires_grad

That loop is :func:`optimize` below; its parts live in their own modules: the objective L(lam)
(:mod:`disentkit.objective`), the step rules (:mod:`disentkit.optimizers`), which steps are learned
(:mod:`disentkit.learn_steps`), the files a run resumes from (:mod:`disentkit.resume`), and named recipes
(:mod:`disentkit.recipes`).

Memory: the diffusion model is frozen (no weight gradients are ever built), and ``denoise(recompute=True)``
recomputes each UNet call in the backward pass, so an iteration keeps one latent per step instead of every
activation of every step; the decode recomputes its layers the same way (``decode(recompute=True)``). Loss
networks are built once, before the loop; one decode per iteration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from .conditioning import Conditioning
from .deprecation import UNSET, renamed
from .errors import CheckpointMismatchError, LearnStepsError, OptionError  # noqa: F401  (importable from here)
from .learn_steps import learn_mask
from .losses import default_clip, describe_loss, with_floors
from .noise import NoiseTape
from .objective import Objective, as_loss_terms, weights_frozen  # noqa: F401  (Objective: importable from here)
from .optimizers import OPTIMIZERS, TensorwiseAdam
from .pipeline import model_id, pipeline_device, pipeline_dtype, provenance  # noqa: F401  (model_id: from here too)
from .resume import CHECKPOINT_FILE, CHECKPOINT_FORMAT, resume, save_state  # noqa: F401
from .sampling import to_pil
from .schedules import MixSchedule


def reference_init(steps: int, c0_steps: int = 20, late: float = 1.0) -> MixSchedule:
    """The paper's starting point: pure c0 for the first ``c0_steps`` steps, then ``late`` (1.0, or 1.1-1.2 for
    a stronger edit) for the rest. E.g. ``reference_init(50, c0_steps=20)`` is the "smiling" reference run."""
    return MixSchedule.switch(steps, c0_steps, 0.0, late)


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
    recompute: bool = True,
    amp: bool | torch.dtype = True,
    checkpoint_dir: str | os.PathLike | None = None,
    callback: Callable[[OptimizeStep], None] | None = None,
    keep: str = "best",
    optimizer: str = "adam",
    learn_steps=None,
    floors: float = 0.0,
    progress: bool = True,
    grad_checkpoint=UNSET,
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
        recompute: recompute each UNet call, and each layer of the VAE decoder, in the backward pass instead of
            keeping their activations (activation checkpointing: much less memory; about 1.5x the time on the toy
            model, ``benchmarks/run.py`` figure 2). Formerly ``grad_checkpoint``.
        amp: mixed precision on CUDA for float32 models (True: bf16 if supported, else fp16; or a dtype). No
            effect on CPUs.
        checkpoint_dir: save the run's state after every iteration (atomically) and resume from it when called
            again with the same folder and settings (:mod:`disentkit.resume`).
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

    :data:`disentkit.recipes.TOY` bundles the settings measured best on the toy model (``recipe.optimize(...)``).
    """
    recompute = renamed(recompute, grad_checkpoint, "grad_checkpoint", "recompute", "optimize")
    if keep not in ("best", "last"):
        raise OptionError(f"keep must be 'best' or 'last', not {keep!r}.")
    if optimizer not in OPTIMIZERS:
        raise OptionError(f"optimizer must be one of {sorted(OPTIMIZERS)}, not {optimizer!r}.")
    if not floors >= 0:
        raise OptionError(f"floors is a weight >= 0 (e.g. 10), got {floors}.")
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
    with weights_frozen(pipe, terms):
        objective = Objective(pipe, cond, tape, terms, guidance, recompute, amp)
        if floors:
            terms = objective.terms = _floors_at_start(objective, init_schedule, floors)
        lam = init_schedule.weights.clone().to(device).requires_grad_(True)  # the only tensor that gets a gradient
        adam = _step_rule(optimizer, lam, lr, mask)
        scaler = _loss_scaler(objective, pipe)
        meta = _meta(pipe, cond, tape, guidance, iters, lr, optimizer, mask, terms, init_schedule)
        config = {k: v for k, v in meta.items() if k != "iters"}  # a longer run may resume a shorter one
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        history, start, best = resume(folder, config, iters, lam, adam, scaler)  # best: lowest-loss weights seen

        bar = tqdm(range(start, iters), desc="optimizing lambdas", disable=not progress, initial=start, total=iters)
        for it in bar:
            adam.zero_grad(set_to_none=True)
            total, values, pixels = objective(lam)  # sample with the mix, decode, the losses
            (scaler.scale(total) if scaler else total).backward()
            grad = lam.grad if scaler is None else lam.grad / scaler.get_scale()
            history.append(_history_row(it, total, values, lam, grad))
            lam_used = lam.detach().cpu().clone()  # the weights that made these images, before the update
            if best is None or history[-1]["loss"] < best["loss"]:
                best = {"iteration": it, "loss": history[-1]["loss"], "lam": lam_used}
            if scaler is not None:
                scaler.step(adam)
                scaler.update()
            else:
                adam.step()
            if folder is not None:
                save_state(folder, config, it + 1, lam, adam, scaler, history, best)
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            if callback is not None:
                losses_now = {k: history[-1][k] for k in ["loss", *terms]}
                edited, reference = pixels.detach().cpu(), objective.reference.cpu()
                callback(OptimizeStep(it, lam_used, losses_now, edited, reference, pd.DataFrame(history)))

        return _finish(objective, lam, best, history, iters, keep, meta)


# ---- the loop's parts ----------------------------------------------------------------------------------------------
def _floors_at_start(objective: Objective, init_schedule: MixSchedule, floors: float) -> dict:
    """The terms plus per-image floors at the start's values, rendered through the very path (and precision) of
    iteration 0, so the floors are silent there."""
    with torch.no_grad():
        start_pixels = objective.render(objective.expand(init_schedule.weights.to(pipeline_device(objective.pipe))))
        with objective.autocast:
            return with_floors(objective.terms, start_pixels, objective.reference, floors)


def _step_rule(optimizer: str, lam: torch.Tensor, lr: float, mask: torch.Tensor | None) -> torch.optim.Optimizer:
    """The optimiser over ``lam``; steps outside ``mask`` get no gradient, so no optimiser ever moves them."""
    adam = OPTIMIZERS[optimizer]([lam], lr=lr)
    if mask is not None:
        learned = mask.to(lam.device) if lam.ndim == 1 else mask.to(lam.device)[:, None]
        lam.register_hook(lambda g: g.masked_fill(~learned, 0.0))
        if isinstance(adam, TensorwiseAdam):  # the shared scale averages over the learned steps only
            adam.param_groups[0]["mask"] = learned
    return adam


def _loss_scaler(objective: Objective, pipe) -> torch.amp.GradScaler | None:
    """A GradScaler where the backward runs in float16 (fp16 autocast, or a float16 model such as SDXL in half
    precision): its gradients underflow without loss scaling."""
    fp16_autocast = isinstance(objective.autocast, torch.autocast) and objective.autocast.fast_dtype == torch.float16
    fp16_model = pipeline_device(pipe).type == "cuda" and pipeline_dtype(pipe) == torch.float16
    return torch.amp.GradScaler("cuda") if fp16_autocast or fp16_model else None


def _meta(pipe, cond, tape, guidance, iters, lr, optimizer, mask, terms, init_schedule) -> dict:
    """What the learned schedule was made for and how; everything but ``iters`` must match to resume a run."""
    return {
        **provenance(pipe, tape),  # model, model_fingerprint, height, width
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


def _finish(objective: Objective, lam, best: dict | None, history: list[dict], iters: int, keep: str, meta: dict):
    """Evaluate the final weights once more (the last history row), keep them or the best iterate, and return the
    result with the kept weights' images."""
    with torch.no_grad():
        total, values, pixels = objective(lam)
    history.append(_history_row(iters, total, values, lam, None))
    final = lam.detach().cpu().clone()
    if keep == "last" or best is None or history[-1]["loss"] <= best["loss"]:
        kept, best_iteration = final, iters
    else:  # an earlier iterate was better: render it again (no gradients) for the images
        kept, best_iteration = best["lam"], int(best["iteration"])
        with torch.no_grad():
            pixels = objective(kept.to(lam.device))[2]
    meta["kept"] = {"rule": keep, "iteration": best_iteration}
    schedule = MixSchedule(kept, "learned", meta)
    pixels, reference = pixels.detach().float().cpu(), objective.reference.float().cpu()
    return OptimizeResult(
        schedule, to_pil(pixels), pixels, to_pil(reference), reference, pd.DataFrame(history), meta, best_iteration
    )


def _history_row(it: int, total, values: dict, lam: torch.Tensor, grad) -> dict:
    row = {"iteration": it, "loss": float(total.detach())}
    row.update({name: float(v.detach().float().mean()) for name, v in values.items()})
    row["grad_norm"] = float(grad.norm()) if grad is not None else float("nan")
    per_step = lam.detach().float().cpu()
    per_step = per_step if per_step.ndim == 1 else per_step.mean(dim=1)  # per-token: log the token mean
    row.update({f"lambda_{i}": float(w) for i, w in enumerate(per_step)})
    return row
