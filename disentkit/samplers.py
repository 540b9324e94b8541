"""The samplers disentkit drives, by name. All maths is diffusers'; this module only picks and configures them.

A sampler name fixes three things our method needs to know: which diffusers scheduler to build, whether it
draws fresh Gaussian noise at each step (then the noise tape must hold it), and which sampling step's mixing
weight each UNet call uses (PLMS evaluates the model twice in its first step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .errors import UnknownSchedulerError


@dataclass(frozen=True)
class SamplerSpec:
    cls: type
    overrides: dict = field(default_factory=dict)
    stochastic: str = "never"  # "never", "always", or "eta": stochastic when eta > 0
    doc: str = ""


SAMPLERS: dict[str, SamplerSpec] = {
    "ddim": SamplerSpec(DDIMScheduler, {}, "eta", "DDIM; eta=0 deterministic, eta>0 draws noise each step"),
    # The paper's reference code samples with PLMS; diffusers' PNDM without its Runge-Kutta warm-up is that sampler.
    "plms": SamplerSpec(PNDMScheduler, {"skip_prk_steps": True}, "never", "PLMS (PNDM, PRK steps skipped)"),
    "dpm": SamplerSpec(DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}, "never", "DPM-Solver++ (2M)"),
    "dpm_sde": SamplerSpec(
        DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}, "always", "SDE-DPM-Solver++ (2M)"
    ),
    "euler": SamplerSpec(EulerDiscreteScheduler, {}, "never", "Euler (Karras et al. 2022)"),
}


def sampler_spec(name: str) -> SamplerSpec:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UnknownSchedulerError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}.") from None


def make_scheduler(pipe_or_config, name: str) -> SchedulerMixin:
    """A fresh diffusers scheduler named ``name``, built from the pipeline's own scheduler config.

    Building from the model's config keeps what the model was trained with (beta schedule, prediction type,
    timestep offset); only the sampling algorithm changes.
    """
    spec = sampler_spec(name)
    config = getattr(getattr(pipe_or_config, "scheduler", None), "config", pipe_or_config)
    return spec.cls.from_config(config, **spec.overrides)


def is_stochastic(name: str, eta: float = 0.0) -> bool:
    """Whether the sampler draws Gaussian noise at every step (so a tape must record it)."""
    mode = sampler_spec(name).stochastic
    return mode == "always" or (mode == "eta" and eta > 0)


def step_of_call(name: str, call: int) -> int:
    """The sampling step (0 = noisiest) whose mixing weight UNet call number ``call`` uses.

    PLMS makes ``steps + 1`` calls: its first step evaluates the model at t and again at the next t to start
    the multistep history, both with that step's conditioning (as the reference PLMS does).
    """
    if name == "plms":
        return max(0, call - 1)
    return call


def step_kwargs(name: str, eta: float, noise) -> dict:
    """Extra keyword arguments for ``scheduler.step``: eta, and the tape's noise instead of a generator draw."""
    if name == "ddim":
        return {"eta": eta, "variance_noise": noise} if eta > 0 else {"eta": eta}
    if name == "dpm_sde":
        return {"variance_noise": noise}
    return {}
