"""disentkit: see, measure and use which denoising steps of a text-to-image diffusion model carry content and
which carry style (Wu et al., "Uncovering the Disentanglement Capability in Text-to-Image Diffusion Models").

    import disentkit as dk
    pipe = dk.load_pipeline("toyworld")
    cond = dk.encode(pipe, "a photo of a face", "a photo of a face, smiling")
    tape = dk.NoiseTape.from_seed(pipe, seed=42, steps=50)
    out = dk.sample(pipe, cond, dk.MixSchedule.switch(50, at=20), tape)
"""

from . import errors
from .conditioning import Conditioning, encode, mix
from .noise import NoiseTape
from .pipeline import load_pipeline
from .samplers import SAMPLERS, make_scheduler
from .sampling import SampleResult, StepState, Trajectory, decode, denoise, sample
from .schedules import MixSchedule
from .sweeps import sweep, sweep_switch

__version__ = "0.1.0"

__all__ = [
    "Conditioning", "MixSchedule", "NoiseTape", "SAMPLERS", "SampleResult", "StepState", "Trajectory",
    "decode", "denoise", "encode", "errors", "load_pipeline", "make_scheduler", "mix", "sample", "sweep",
    "sweep_switch",
]  # fmt: skip
