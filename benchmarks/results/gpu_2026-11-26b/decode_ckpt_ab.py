"""A/B on one GPU: one optimisation iteration (50 steps, batch 1) with the decode checkpointed per layer (what
optimize does) and with a plain decode, everything else the same (per-step checkpointing on in both).

    python benchmarks/results/gpu_2026-11-26b/decode_ckpt_ab.py

Separates what the per-layer decode checkpointing changed in `benchmarks/run.py --only 4` (peak memory and time)
from machine-to-machine variation: both variants run in one process on one machine, after one warm-up
iteration, alternating, twice each. Peak = torch.cuda.max_memory_allocated over one iteration.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import disentkit.optimize  # noqa: E402,F401
import run as bench  # noqa: E402
from disentkit.sampling import decode  # noqa: E402
from disentkit.testing import sd_architecture  # noqa: E402

import disentkit as dk  # noqa: E402

MODE = {"layers": True}


def decode_as_told(pipe, z, checkpoint=False):
    return decode(pipe, z, checkpoint=checkpoint and MODE["layers"])


# dk.optimize is also a function's name, so take the module itself; Objective looks decode up there at call time.
sys.modules["disentkit.optimize"].decode = decode_as_told


def sd14():
    return sd_architecture("sd1", "cuda", torch.float32)


def sdxl():
    pipe = sd_architecture("sdxl", "cuda", torch.float16)
    pipe.vae.enable_tiling()
    pipe.vae.enable_slicing()
    return pipe


for label, build, size in (("SD v1.4 512 px fp32", sd14, 512), ("SDXL 1024 px fp16", sdxl, 1024)):
    pipe = build()
    cond = dk.encode(pipe, bench.C0, bench.C1)
    tape = dk.NoiseTape.from_seed(pipe, 0, steps=50, scheduler="ddim", height=size, width=size)
    iteration, _ = bench.make_iteration(pipe, cond, tape, checkpoint=True)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    iteration()  # warm-up (kernel selection, allocator)
    for rep in range(2):
        for layers in (True, False):
            MODE["layers"] = layers
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            seconds, grad = bench.timed(iteration)
            peak = torch.cuda.max_memory_allocated()
            name = "per-layer decode checkpointing" if layers else "plain decode                  "
            print(f"{label} | {name} | rep {rep} | {seconds:6.2f} s | peak {peak / 1e9:5.1f} GB "
                  f"(weights {weights / 1e9:.1f} GB) | grad {grad:.3g}", flush=True)
    del pipe, iteration
    torch.cuda.empty_cache()
