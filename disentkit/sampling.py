"""sample(): fixed-noise sampling with a per-step mix of two prompts. One readable loop.

    for each UNet call j (sampling step i = step_of_call(j), 0 = noisiest):
        c_i   = (1 - lam[i]) * c0 + lam[i] * c1                   # the paper's mix, conditional branch only
        eps   = eps_uncond + g * (eps(x_t, c_i) - eps_uncond)    # classifier-free guidance
        x_t-1 = scheduler.step(eps, t, x_t, noise=tape[i])        # diffusers' maths, the tape's noise

Every run in a batch is one (prompt pair, schedule, seed) triple; all of them go through the UNet together
(both guidance branches in one call), in chunks of ``max_batch`` runs when memory is short.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from tqdm.auto import tqdm

from .conditioning import Conditioning, mix
from .deprecation import UNSET, renamed
from .errors import InvalidScheduleError
from .noise import NoiseTape
from .pipeline import pipeline_device, pipeline_dtype, quiet_loading, vae_in_safe_precision, with_compiled_unet
from .samplers import make_scheduler, step_kwargs, step_of_call
from .schedules import MixSchedule, stack_weights


# ---- what a step looks like to an observer ----------------------------------------------------------------
@dataclass
class StepState:
    """What the sampler passes to ``callback`` after each UNet call (tensors are the live ones; detach to keep)."""

    call: int  # UNet call number j
    step: int  # sampling step i whose weights this call used (0 = noisiest)
    t: float  # diffusers timestep
    x_t: torch.Tensor  # (R, C, h, w) the model input (variance-preserving scale)
    x0_pred: torch.Tensor  # (R, C, h, w) the model's prediction of the clean latent
    lam: torch.Tensor  # (R, T) weights of c1 used at this call


@dataclass
class Trajectory:
    """x_t and predicted x_0 at every UNet call, for every run; latents on the CPU, decoded only on request.

    Attributes:
        calls, steps, timesteps: (K,) call number, sampling step and diffusers timestep of each record.
        x_t, x0_pred: (K, R, C, h, w) latents.
    """

    calls: torch.Tensor
    steps: torch.Tensor
    timesteps: torch.Tensor
    x_t: torch.Tensor
    x0_pred: torch.Tensor

    def decode(self, pipe, which: str = "x0_pred", steps: Sequence[int] | None = None, runs=None) -> torch.Tensor:
        """Decode ``which`` ("x0_pred" or "x_t") at sampling ``steps`` (default all; the last call of each
        step) for ``runs`` (default all). Returns (len(steps), R', 3, H, W) pixels in [0, 1]."""
        latents = getattr(self, which)
        wanted = range(int(self.steps.max()) + 1) if steps is None else steps
        # The last call of each step: for PLMS, step 0 has two calls, and the second looks one step ahead.
        k = [int((self.steps == s).nonzero()[-1 if which == "x0_pred" else 0]) for s in wanted]
        chosen = latents[k] if runs is None else latents[k][:, runs]
        dev, dtype = pipeline_device(pipe), pipeline_dtype(pipe)
        with torch.inference_mode():
            pixels = [decode(pipe, z.to(dev, dtype)).float().cpu() for z in chosen]
        return torch.stack(pixels)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (call, run): how far the x0 prediction still moves, in latent RMS units."""
        delta = torch.zeros(self.x0_pred.shape[:2])
        delta[1:] = (self.x0_pred[1:] - self.x0_pred[:-1]).pow(2).mean(dim=(2, 3, 4)).sqrt()
        final = (self.x0_pred - self.x0_pred[-1:]).pow(2).mean(dim=(2, 3, 4)).sqrt()
        K, R = delta.shape
        return pd.DataFrame(
            {
                "call": self.calls.repeat_interleave(R).numpy(),
                "step": self.steps.repeat_interleave(R).numpy(),
                "timestep": self.timesteps.repeat_interleave(R).numpy(),
                "run": np.tile(np.arange(R), K),
                "x0_change": delta.flatten().numpy(),
                "x0_distance_to_final": final.flatten().numpy(),
            }
        )


class TrajectoryRecorder:
    """A ``callback`` that keeps x_t and x0_pred of every call (on the CPU, in float32)."""

    def __init__(self):
        self.records: list[StepState] = []

    def __call__(self, state: StepState) -> None:
        keep = lambda x: x.detach().float().cpu()  # noqa: E731
        self.records.append(StepState(state.call, state.step, state.t, keep(state.x_t), keep(state.x0_pred), keep(state.lam)))

    def trajectory(self) -> Trajectory:
        r = self.records
        return Trajectory(
            calls=torch.tensor([s.call for s in r]),
            steps=torch.tensor([s.step for s in r]),
            timesteps=torch.tensor([float(s.t) for s in r]),
            x_t=torch.stack([s.x_t for s in r]),
            x0_pred=torch.stack([s.x0_pred for s in r]),
        )


@dataclass
class SampleResult:
    """The outcome of :func:`sample`: one image per run, runs ordered (pair, schedule, seed), seed fastest.

    Attributes:
        images: list of R PIL images.
        pixels: (R, 3, H, W) float32 pixels in [0, 1] (CPU).
        latents: (R, C, h, w) final latents (CPU).
        runs: DataFrame with one row per run: pair, c0, c1, schedule, label, seed_index, seed.
        schedules: the schedules, in the order of the ``schedule`` column.
        trajectory: x_t / predicted x0 per call when ``record=True``.
        nsfw: one flag per run from the pipeline's safety checker (SD 1.x ships one); a flagged image is black in
            ``images`` and ``pixels``, as diffusers returns it. ``None`` when the pipeline has no checker (load with
            ``safety_checker=None`` to turn it off).
    """

    images: list[Image.Image]
    pixels: torch.Tensor
    latents: torch.Tensor
    runs: pd.DataFrame
    schedules: list[MixSchedule]
    trajectory: Trajectory | None = None
    meta: dict = field(default_factory=dict)
    nsfw: list[bool] | None = None

    def image(self, schedule: int = 0, seed: int = 0, pair: int = 0) -> Image.Image:
        r = self.runs
        row = r.index[(r["pair"] == pair) & (r["schedule"] == schedule) & (r["seed_index"] == seed)][0]
        return self.images[row]


# ---- the model call -----------------------------------------------------------------------------------------
def predict_x0(scheduler, x_in: torch.Tensor, model_out: torch.Tensor, t) -> torch.Tensor:
    """Clean-latent prediction from the model output at timestep ``t`` (DDPM parametrisation, Ho et al. 2020;
    v-prediction, Salimans & Ho 2022). ``x_in`` is the variance-preserving model input."""
    acp = scheduler.alphas_cumprod.to(x_in.device)
    t = float(t)
    lo = int(np.floor(t))
    hi = min(lo + 1, len(acp) - 1)
    alpha_bar = torch.lerp(acp[lo], acp[hi], t - lo).to(x_in.dtype)  # fractional timesteps (Euler) interpolate
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_in - s * model_out) / a
    if kind == "v_prediction":
        return a * x_in - s * model_out
    return model_out  # "sample"


def _unet(pipe, x_in, t, emb, pooled, time_ids):
    added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
    return pipe.unet(x_in, t, encoder_hidden_states=emb, added_cond_kwargs=added, return_dict=False)[0]


def guided_output(pipe, x_in, t, c_i, uncond, guidance, pooled_i=None, pooled_uncond=None, time_ids=None):
    """Classifier-free guided model output; the mixed embedding ``c_i`` goes to the conditional branch only."""
    if guidance <= 1:
        return _unet(pipe, x_in, t, c_i, pooled_i, time_ids)
    two = lambda a, b: None if a is None else torch.cat([a, b])  # noqa: E731  (uncond first, as diffusers)
    out = _unet(pipe, two(x_in, x_in), t, two(uncond, c_i), two(pooled_uncond, pooled_i), two(time_ids, time_ids))
    out_uncond, out_cond = out.chunk(2)
    return out_uncond + guidance * (out_cond - out_uncond)


def mixed_embeddings(cond: Conditioning, lam_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The paper's mix for one step, one row per run: ``c_i = (1 - lam_i) c0 + lam_i c1`` (R, T, D) from weights
    ``lam_i`` (R, T), and SDXL's pooled embedding mixed by the token mean of the weights (None for SD 1.x/2.x)."""
    c_i = mix(cond.c0, cond.c1, lam_i)
    pooled_i = None if cond.pooled0 is None else mix(cond.pooled0, cond.pooled1, lam_i.mean(dim=1))
    return c_i, pooled_i


def guided_output_in_chunks(pipe, cond: Conditioning, x_in, t, c_i, pooled_i, guidance, time_ids, rows: int):
    """:func:`guided_output` for every row of ``x_in`` (one per run of ``cond``), at most ``rows`` runs per UNet
    call (each run is two UNet rows with guidance)."""
    take = lambda v, s: None if v is None else v[s]  # noqa: E731
    outs = []
    for r in range(0, x_in.shape[0], rows):
        s = slice(r, r + rows)
        outs.append(
            guided_output(
                pipe, x_in[s], t, c_i[s], cond.uncond[s], guidance,
                take(pooled_i, s), take(cond.pooled_uncond, s), take(time_ids, s),
            )  # fmt: skip
        )
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def tape_step(scheduler, tape: NoiseTape, call: int, out: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
    """One diffusers scheduler step from ``x`` (x_t) with the model output ``out``, drawing the tape's noise for UNet
    call ``call`` (stochastic samplers); returns x_{t-1}."""
    noise = None if tape.step_noise is None else tape.step_noise[call].to(x.device, x.dtype)
    return scheduler.step(out, t, x, **step_kwargs(tape.scheduler, tape.eta, noise), return_dict=False)[0]


def sdxl_time_ids(pipe, cond: Conditioning, latent_hw, rows: int):
    """SDXL's size/crop conditioning: original size = target size = the image size, no crop."""
    if not cond.is_sdxl:
        return None
    h, w = (n * pipe.vae_scale_factor for n in latent_hw)
    ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=cond.c0.dtype, device=cond.c0.device)
    return ids.expand(rows, 6)


def denoise(
    pipe,
    cond: Conditioning,
    lam: torch.Tensor,
    tape: NoiseTape,
    guidance: float = 7.5,
    *,
    recompute: bool = False,
    callback: Callable[[StepState], None] | None = None,
    progress: bool = True,
    checkpoint=UNSET,
) -> torch.Tensor:
    """Run the sampler for R runs and return the final latents (R, C, h, w).

    ``cond`` holds one row per run (see :meth:`Conditioning.select`), ``lam`` is (R, N, T) and ``tape`` has R
    runs. Differentiable in ``lam`` when called under autograd; ``recompute=True`` (formerly ``checkpoint``)
    recomputes each UNet call in the backward pass (activation checkpointing), so memory grows with steps x latent
    size, not steps x activations.
    """
    recompute = renamed(recompute, checkpoint, "checkpoint", "recompute", "denoise")
    device, dtype = pipeline_device(pipe), pipeline_dtype(pipe)
    scheduler = make_scheduler(pipe, tape.scheduler)
    with quiet_loading():  # Euler's set_timesteps trips NumPy 2's notice about torch's __array__ (diffusers' code)
        scheduler.set_timesteps(tape.steps, device=device)
    x = tape.x_T.to(device, dtype) * scheduler.init_noise_sigma  # (R, C, h, w)
    lam = lam.to(device)
    time_ids = sdxl_time_ids(pipe, cond, x.shape[-2:], x.shape[0])

    rows = tape.rows_per_call(None) or x.shape[0]  # one at a time for an exact tape: its replay stays exact

    def model(x_in, t, c_i, pooled_i):
        return guided_output_in_chunks(pipe, cond, x_in, t, c_i, pooled_i, guidance, time_ids, rows)

    for j, t in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False)):
        i = step_of_call(tape.scheduler, j)
        c_i, pooled_i = mixed_embeddings(cond, lam[:, i])  # c_i = (1 - lam_i) c0 + lam_i c1: (R, T, D)
        x_in = scheduler.scale_model_input(x, t)
        if recompute and torch.is_grad_enabled():
            # The reentrant variant runs the forward pass without building a graph (it is rebuilt, one step at a
            # time, in the backward pass): a third less time per optimisation iteration than the non-reentrant
            # one on small models, where graph bookkeeping rivals the arithmetic. Its limits do not bite here:
            # we only call .backward(), and lam requires grad at every step. The RNG state need not be kept: the
            # frozen UNet draws no random numbers (the sampler's noise comes from the tape).
            out = activation_checkpoint(model, x_in, t, c_i, pooled_i, use_reentrant=True, preserve_rng_state=False)
        else:
            out = model(x_in, t, c_i, pooled_i)
        if callback is not None:
            callback(StepState(j, i, float(t), x_in, predict_x0(scheduler, x_in, out, t), lam[:, i]))
        x = tape_step(scheduler, tape, j, out, t, x)
    return x


@contextlib.contextmanager
def _checkpointed_decoder(vae: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, each resnet, attention and upsampling layer of the VAE decoder keeps only its input and is
    recomputed in the backward pass, so the backward holds one layer's activations at a time rather than the whole
    decoder's. Finer than diffusers' block-level ``enable_gradient_checkpointing``, which recomputes a whole
    full-resolution block at once (benchmarks/decode_memory.py compares them). Nothing on the VAE is changed outside
    the block; a VAE without such layers, or one whose decoder a user already checkpoints with diffusers' switch
    (a second recomputation inside the first would be redundant), runs as it is."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D, Upsample2D

    decoder = getattr(vae, "decoder", None)
    layers = []
    if enabled and decoder is not None and not getattr(decoder, "gradient_checkpointing", False):
        layers = [m for m in decoder.modules() if isinstance(m, (ResnetBlock2D, Attention, Upsample2D))]
    saved_forwards = [(m, m.__dict__.get("forward")) for m in layers]  # a user's own instance forward comes back too
    try:
        for m in layers:
            m.forward = _checkpointed_forward(m)
        yield
    finally:
        for m, forward in saved_forwards:
            if forward is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = forward


# One wrapper per layer, made once and reused: a new object on every call would make torch.compile, which guards on
# a module's forward, recompile a compiled decoder at every iteration. The wrapper holds its layer weakly, so the
# cache never keeps a VAE alive (vae_in_safe_precision makes a float32 copy per call for float16 SDXL VAEs).
_CHECKPOINTED_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _checkpointed_forward(layer: torch.nn.Module) -> Callable:
    own = layer.__dict__.get("forward")
    if own is not None:  # a user's own forward on the instance: wrapped afresh, as it may hold the layer itself
        return functools.partial(_recompute_in_backward, own)
    cached = _CHECKPOINTED_FORWARDS.get(layer)
    if cached is None:
        cached = _CHECKPOINTED_FORWARDS[layer] = functools.partial(_recompute_layer, weakref.ref(layer))
    return cached


def _recompute_layer(layer_ref: weakref.ref, *args, **kwargs):
    layer = layer_ref()
    return _recompute_in_backward(type(layer).forward, layer, *args, **kwargs)


def _recompute_in_backward(forward: Callable, *args, **kwargs):
    # Non-reentrant: the layer's input needs no requires_grad of its own, keyword arguments pass, and autocast is
    # replayed in the backward pass.
    return activation_checkpoint(forward, *args, use_reentrant=False, **kwargs)


def decode(pipe, latents: torch.Tensor, recompute: bool = False, *, checkpoint=UNSET) -> torch.Tensor:
    """VAE-decode latents (R, C, h, w) to pixels (R, 3, H, W) in [0, 1]; differentiable. SDXL's VAE, which
    overflows in half precision, decodes in float32 (see ``disentkit.pipeline.vae_in_safe_precision``).

    ``recompute`` (formerly ``checkpoint``): when gradients are on, recompute each layer of the decoder in the
    backward pass instead of keeping its activations (about one more decoder forward; at full resolution those
    activations are most of an optimisation iteration's peak, benchmarks/decode_memory.py). The images and
    gradients are the same.
    """
    recompute = renamed(recompute, checkpoint, "checkpoint", "recompute", "decode")
    vae = pipe.vae
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:  # some SDXL-family VAEs normalise their latents per channel
        shape = (1, -1, 1, 1)
        mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
        std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    with vae_in_safe_precision(pipe) as vae, _checkpointed_decoder(vae, recompute and torch.is_grad_enabled()):
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1)


def run_safety_checker(pipe, pixels: torch.Tensor) -> tuple[torch.Tensor, list[bool] | None]:
    """The pipeline's own safety check, as diffusers runs it: its feature extractor reads the 8-bit images, its
    checker flags them, flagged images become black. ``pixels`` (R, 3, H, W) in [0, 1]; returns (pixels, flags), or
    (pixels, None) when the pipeline has no checker (or no feature extractor to feed it)."""
    checker, extractor = getattr(pipe, "safety_checker", None), getattr(pipe, "feature_extractor", None)
    if checker is None or extractor is None:
        return pixels, None
    clip_input = extractor(to_pil(pixels), return_tensors="pt").pixel_values.to(checker.device, checker.dtype)
    _, flags = checker(images=pixels.detach().clone(), clip_input=clip_input)  # it blacks out its own copy
    flags = [bool(f) for f in flags]
    if any(flags):
        pixels = torch.where(torch.tensor(flags, device=pixels.device)[:, None, None, None], 0.0, pixels)
    return pixels, flags


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(R, 3, H, W) pixels in [0, 1] to PIL images (rounded as diffusers does)."""
    arr = (pixels.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arr]


# ---- the public entry point -----------------------------------------------------------------------------------
def run_index(pairs: int, schedules: Sequence[MixSchedule], tape: NoiseTape, cond: Conditioning) -> pd.DataFrame:
    """The runs of a batch, one row each, ordered (pair, schedule, seed) with seed fastest."""
    rows = itertools.product(range(pairs), range(len(schedules)), range(tape.batch))
    df = pd.DataFrame(list(rows), columns=["pair", "schedule", "seed_index"])
    df["c0"] = [cond.prompts0[p] for p in df["pair"]]
    df["c1"] = [cond.prompts1[p] for p in df["pair"]]
    df["label"] = [schedules[s].label for s in df["schedule"]]
    df["seed"] = [tape.seeds[b] for b in df["seed_index"]]
    return df.rename_axis("run")


def sample(
    pipe,
    cond: Conditioning,
    schedules: MixSchedule | Sequence[MixSchedule],
    tape: NoiseTape,
    guidance: float = 7.5,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    record: bool = False,
    callback: Callable[[StepState], None] | None = None,
    max_batch: int | None = None,
    progress: bool = True,
    compile: bool = False,
    scheduler=UNSET,
) -> SampleResult:
    """Sample every (prompt pair, schedule, seed) combination with the tape's fixed noise.

    Args:
        pipe: a pipeline from :func:`disentkit.load_pipeline`.
        cond: prompt embeddings from :func:`disentkit.encode` (P pairs).
        schedules: one :class:`MixSchedule` or a list of S; each must have ``tape.steps`` weights.
        tape: the fixed noise for B seeds; it also fixes the sampler, the step count and eta.
        guidance: classifier-free guidance scale (<= 1 turns guidance off).
        sampler, steps, eta: optional; if given they must match the tape (a guard against mixing up tapes).
            ``sampler`` is a name from ``disentkit.SAMPLERS`` (formerly ``scheduler``).
        record: keep the trajectory (x_t and predicted x_0 at every call) in ``result.trajectory``.
        callback: called with a :class:`StepState` after every UNet call of every chunk.
        max_batch: at most this many runs per UNet batch (each run costs two UNet rows with guidance).
        progress: show a progress bar.
        compile: run the UNet through ``torch.compile`` (see :func:`disentkit.pipeline.with_compiled_unet`).
    Returns:
        :class:`SampleResult` with P*S*B images.

    Reproducibility: the same tape, schedules, prompts and batch (``max_batch`` included) on the same device give
    the same images, bit for bit. The same run in a batch of another composition (other schedules or seeds beside
    it, another ``max_batch``, :func:`disentkit.sweep`) may go through other matmul kernels: its pixels are equal up
    to float rounding (float32: about 1e-6 of the pixel range on the toy model), and its 8-bit image is the same
    up to one level. The runs of an exact inverted tape (``tape.exact``) go through the UNet one at a time, so they
    are bit for bit the same in any batch (their solved noise would amplify that rounding into visible changes).
    """
    sampler = renamed(sampler, scheduler, "scheduler", "sampler", "sample")
    schedules = [schedules] if isinstance(schedules, MixSchedule) else list(schedules)
    if not schedules:
        raise InvalidScheduleError("no schedules given; pass a MixSchedule or a non-empty list of them.")
    tape.check(pipe, sampler, steps, eta)
    tape.warn_if_guidance_differs(guidance)
    weights = stack_weights(schedules, tape.steps, cond.tokens)  # (S, N, T)
    runs = run_index(cond.pairs, schedules, tape, cond)
    pair_idx, sched_idx, seed_idx = (torch.tensor(runs[c].tolist()) for c in ("pair", "schedule", "seed_index"))

    chunk = tape.rows_per_call(max_batch) or len(runs)  # an exact tape's runs alone, decode included
    model_pipe = with_compiled_unet(pipe) if compile else pipe
    latents, pixels, recorders, nsfw = [], [], [], None
    with torch.inference_mode():
        for start in range(0, len(runs), chunk):
            rows = slice(start, start + chunk)
            recorder = TrajectoryRecorder() if record else None
            observers = [f for f in (recorder, callback) if f is not None]
            z = denoise(
                model_pipe,
                cond.select(pair_idx[rows]),
                weights[sched_idx[rows]],
                tape.select(seed_idx[rows].tolist()),
                guidance,
                callback=(lambda s: [f(s) for f in observers]) if observers else None,
                progress=progress,
            )
            latents.append(z.float().cpu())
            image, flags = run_safety_checker(pipe, decode(pipe, z))
            pixels.append(image.float().cpu())
            nsfw = None if flags is None else [*(nsfw or []), *flags]
            recorders.append(recorder)
    # Clone out of inference mode so results can feed autograd code (optimisation, inversion) later.
    latents, pixels = torch.cat(latents).clone(), torch.cat(pixels).clone()
    trajectory = _merge_trajectories([r.trajectory() for r in recorders]) if record else None
    meta = {"scheduler": tape.scheduler, "steps": tape.steps, "eta": tape.eta, "guidance": guidance}
    return SampleResult(to_pil(pixels), pixels, latents, runs, schedules, trajectory, meta, nsfw)


def _merge_trajectories(parts: list[Trajectory]) -> Trajectory:
    first = parts[0]
    return Trajectory(
        first.calls, first.steps, first.timesteps,
        torch.cat([p.x_t for p in parts], dim=1).clone(),
        torch.cat([p.x0_pred for p in parts], dim=1).clone(),
    )  # fmt: skip
