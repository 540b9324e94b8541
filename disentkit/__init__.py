"""disentkit: see, measure and use which denoising steps of a text-to-image diffusion model carry content and
which carry style (Wu et al., "Uncovering the Disentanglement Capability in Text-to-Image Diffusion Models").

    import disentkit as dk
    pipe = dk.load_pipeline("toyworld")
    cond = dk.encode(pipe, "a photo of a face", "a photo of a face, smiling")
    tape = dk.NoiseTape.from_seed(pipe, seed=42, steps=50)
    out = dk.sample(pipe, cond, dk.MixSchedule.switch(50, at=20), tape)
"""

from . import errors, losses, metrics, recipes
from .conditioning import Conditioning, encode, mix
from .inversion import InversionError, encode_image, invert, load_image
from .losses import load_clip
from .map import disentanglement_map, find_windows
from .noise import NoiseTape
from .optimize import CheckpointMismatchError, OptimizeResult, OptimizeStep, optimize, reference_init
from .pipeline import load_pipeline
from .samplers import SAMPLERS, make_scheduler
from .sampling import SampleResult, StepState, Trajectory, decode, denoise, sample
from .schedules import MixSchedule
from .sweeps import sweep, sweep_switch
from .transfer import ScheduleModelError, TransferResult, load_schedule, transfer

__version__ = "0.1.0"

__all__ = [
    "CheckpointMismatchError", "Conditioning", "InversionError", "MixSchedule", "NoiseTape", "OptimizeResult",
    "OptimizeStep", "SAMPLERS", "SampleResult", "ScheduleModelError", "StepState", "Trajectory", "TransferResult",
    "decode", "denoise", "disentanglement_map", "encode", "encode_image", "errors", "find_windows", "invert",
    "load_clip", "load_image", "load_pipeline", "load_schedule", "losses", "make_scheduler", "metrics", "mix",
    "optimize", "recipes", "reference_init", "sample", "sweep", "sweep_switch", "transfer",
]  # fmt: skip
