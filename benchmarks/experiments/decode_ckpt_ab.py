"""A/B on one GPU: one optimisation iteration (50 steps, batch 1) with the decode recomputed per layer (what
optimize does) and with a plain decode, everything else the same (each UNet call recomputed in both).

    python benchmarks/experiments/decode_ckpt_ab.py > benchmarks/experiments/decode_ckpt_ab.txt

Separates what the per-layer decode recomputation changed in `benchmarks/run.py --only 4` (peak memory and time)
from machine-to-machine variation: both variants run in one process on one machine, after one warm-up
iteration, alternating, twice each. Peak = torch.cuda.max_memory_allocated over one iteration (weights included).
The output kept beside this script was measured on an H100 on 2026-11-26.
"""

import time

import torch

import disentkit as dk
import disentkit.objective as objective_module
from disentkit.memory import PeakMemory
from disentkit.objective import Objective
from disentkit.sampling import decode
from disentkit.testing import sd_architecture

C0, C1 = "a photo of person", "a photo of person, smiling"
MODE = {"layers": True}


def decode_as_told(pipe, z, recompute=False):
    return decode(pipe, z, recompute=recompute and MODE["layers"])


objective_module.decode = decode_as_told  # Objective looks decode up in its module at call time


def one_iteration(pipe, cond, tape):
    """One Adam step of the optimiser on a pixel loss; a float16 model's loss is scaled so its gradient does not
    underflow (optimize adapts that factor with a GradScaler). Returns the gradient norm."""
    lam = dk.MixSchedule.switch(tape.steps, 20).weights.to(pipe.unet.device).requires_grad_(True)
    adam = torch.optim.Adam([lam], lr=0.05)
    mse = lambda edited, reference: (edited - reference).pow(2).mean(dim=(1, 2, 3))  # noqa: E731
    objective = Objective(pipe, cond, tape, {"mse": (1.0, mse)}, 7.5, recompute=True)
    scale = 2.0**12 if pipe.unet.dtype == torch.float16 else 1.0

    def iteration() -> float:
        adam.zero_grad(set_to_none=True)
        (objective(lam)[0] * scale).backward()
        adam.step()
        return float((lam.grad / scale).norm())

    return iteration


def sdxl():
    pipe = sd_architecture("sdxl", "cuda", torch.float16)
    pipe.vae.enable_tiling()
    pipe.vae.enable_slicing()
    return pipe


for label, build, size in (
    ("SD v1.4 512 px fp32", lambda: sd_architecture("sd1", "cuda", torch.float32), 512),
    ("SDXL 1024 px fp16", sdxl, 1024),
):
    pipe = build()
    cond = dk.encode(pipe, C0, C1)
    tape = dk.NoiseTape.from_seed(pipe, 0, steps=50, scheduler="ddim", height=size, width=size)
    iteration = one_iteration(pipe, cond, tape)
    iteration()  # warm-up (kernel selection, allocator)
    for rep in range(2):
        for layers in (True, False):
            MODE["layers"] = layers
            with PeakMemory("cuda") as mem:
                t0 = time.perf_counter()
                grad = iteration()
            seconds = time.perf_counter() - t0
            name = "per-layer decode checkpointing" if layers else "plain decode                  "
            print(f"{label} | {name} | rep {rep} | {seconds:6.2f} s | peak {mem.peak / 1e9:5.1f} GB "
                  f"(weights {mem.before / 1e9:.1f} GB) | grad {grad:.3g}", flush=True)
    del pipe, iteration
    torch.cuda.empty_cache()
