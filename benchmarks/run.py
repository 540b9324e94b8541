"""disentkit benchmarks. One command:

    python benchmarks/run.py [--quick]

writes ``outputs/docs/results.json`` and ``outputs/docs/results.md``. Every figure is a ratio (or a
pair of numbers) measured in the same run, on the same machine, so a slow or busy machine changes the seconds but
not the comparison:

    1. switch-step sweep: disentkit.sweep_switch vs the plain diffusers way (one pipe() call per run, prompt swapped
       by callback_on_step_end), with the max pixel difference between the two;
    2. one optimisation iteration (forward with checkpointing, decode, loss, backward) / one plain dk.sample;
    3. peak memory of one optimisation iteration with and without per-step checkpointing (fresh processes);
    4. real scale on a GPU (SD v1.4 512 px, SDXL 1024 px, random weights): time and peak memory of one iteration;
       "skipped: no GPU" otherwise, and the same code path is run on the tiny sd1 pipeline on the CPU instead;
    5. torch-level checks: SDPA attention in use, channels-last vs contiguous UNet time.

The model is the bundled toyworld one; while it does not exist yet the run falls back to the tiny random sd1
pipeline and says so in the results. ``--quick`` uses fewer steps/seeds/switch steps (< 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's disentkit, also when run without installing

import diffusers  # noqa: E402
import torch  # noqa: E402

import disentkit as dk  # noqa: E402
from disentkit.errors import ModelNotFoundError  # noqa: E402
from disentkit.files import write_json_atomic, write_text_atomic  # noqa: E402
from disentkit.memory import CUDA, PeakMemory  # noqa: E402
from disentkit.samplers import make_scheduler  # noqa: E402
from disentkit.sweeps import count_branch_steps, sweep_switch  # noqa: E402

C0, C1 = "a photo of a face", "a photo of a face, smiling"  # toyworld knows faces; any SD does too


@dataclass
class Config:
    steps: int = 50
    seeds: tuple[int, ...] = (42, 43, 44, 45)
    switch_steps: tuple[int, ...] = tuple(range(10, 21))  # the paper's range: 10..20 c0 steps of 50
    repeats: int = 2  # timings take the fastest of this many (interleaved) repeats
    opt_steps: int = 50
    memory_steps: int = 50
    check_steps: int = 4  # steps of the CPU run of the GPU code path


FULL = Config()
# Same proportions at 20 steps (switch steps 4..8 of 20 are 10..20 of 50), same seeds.
QUICK = Config(steps=20, switch_steps=tuple(range(4, 9)), opt_steps=20, memory_steps=20)


# ---- models ------------------------------------------------------------------------------------------------------
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str):
    """(pipeline, note). ``toyworld`` falls back to the tiny random sd1 pipeline while its weights do not exist."""
    from disentkit.testing import tiny_pipeline

    if name == "tiny-sd1":
        return tiny_pipeline("sd1").to(DEVICE), "tiny random sd1 pipeline (32 px), asked for"
    try:
        return dk.load_pipeline(name, DEVICE), name
    except ModelNotFoundError as err:
        why = str(err).split(". ")[0]
        return tiny_pipeline("sd1").to(DEVICE), f"FALLBACK: {name} not available ({why}); tiny random sd1 (32 px)"


def timed(fn):
    """(seconds, result) of ``fn()``.

    On a GPU: wall-clock seconds, synchronised. On the CPU: this process's CPU seconds. With one torch thread
    that is the compute time, and unlike wall time it does not grow when other jobs share the cores (the machine
    these numbers come from is shared); ``wall_clock`` keeps the wall times too.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    wall_clock.append(wall)
    return (wall if torch.cuda.is_available() else cpu), out


wall_clock: list[float] = []  # every timed() call's wall seconds, in order, for the record
TIME_KIND = "GPU wall-clock s" if torch.cuda.is_available() else "CPU s of the process"


# ---- 1. switch-step sweep ------------------------------------------------------------------------------------------
def diffusers_switch_run(pipe, cond, k: int, seed: int, steps: int, guidance: float, late: float = 1.0):
    """The plain diffusers way to sample one switch run: c0 until step k, then c1, swapped by a step-end callback.

    Returns pixels (1, 3, H, W) in [0, 1]. ``pipe.scheduler`` must be the sampler to compare with (DDIM here).
    """
    c_late = dk.mix(cond.c0, cond.c1, torch.tensor([late]))

    def swap(p, i, t, kwargs):
        # Called after step i; what it returns is used from step i + 1 on. diffusers keeps [uncond; cond] stacked.
        if i == k - 1:
            return {"prompt_embeds": torch.cat([cond.uncond, c_late])}
        return {}

    gen = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        return pipe(
            prompt_embeds=cond.c0 if k > 0 else c_late,
            negative_prompt_embeds=cond.uncond,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gen,
            callback_on_step_end=swap,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
            output_type="pt",
        ).images.float().cpu()


def bench_sweep(pipe, cfg: Config, guidance: float = 7.5) -> dict:
    pipe.scheduler = make_scheduler(pipe, "ddim")  # our own pipe object: the plain runs use the same sampler
    cond = dk.encode(pipe, C0, C1)
    if cond.is_sdxl:
        raise ValueError("figure 1 drives SD 1.x/2.x-style pipelines (prompt_embeds only); pass one with --model.")
    tape = dk.NoiseTape.from_seed(pipe, list(cfg.seeds), steps=cfg.steps, scheduler="ddim")
    ks, seeds = list(cfg.switch_steps), list(cfg.seeds)

    def plain():
        return torch.cat([diffusers_switch_run(pipe, cond, k, s, cfg.steps, guidance) for k in ks for s in seeds])

    def shared():
        return sweep_switch(pipe, cond, tape, ks, guidance, progress=False)

    # Warm up both paths (first calls pay one-off allocation and dispatch costs).
    diffusers_switch_run(pipe, cond, 1, seeds[0], 2, guidance)
    sweep_switch(pipe, cond, dk.NoiseTape.from_seed(pipe, seeds[0], steps=2), [1], guidance, progress=False)
    t_plain, t_shared = [], []
    for _ in range(cfg.repeats):  # interleaved, so a burst of load on the machine hits both
        t, ref = timed(plain)
        t_plain.append(t)
        t, out = timed(shared)
        t_shared.append(t)
    max_diff = (ref - out.pixels).abs().max().item()
    calls_per_run = cfg.steps
    return {
        "runs": len(ks) * len(seeds),
        "switch_steps": ks,
        "seeds": seeds,
        "steps": cfg.steps,
        "plain_diffusers_s": min(t_plain),
        "sweep_switch_s": min(t_shared),
        "speedup": min(t_plain) / min(t_shared),
        "max_abs_pixel_diff": max_diff,
        "same_images": max_diff <= 1 / 255,
        "unet_rows_sweep": out.meta["unet_rows"],
        "unet_rows_plain": out.meta["unshared_rows"],
        "row_ratio": out.meta["unshared_rows"] / out.meta["unet_rows"],
        "branch_steps_per_seed": count_branch_steps(out.schedules, "ddim", cfg.steps),
        "plain_calls": len(ks) * len(seeds) * calls_per_run,
        "sweep_calls": cfg.steps,
    }


# ---- 2./3./4. one optimisation iteration ----------------------------------------------------------------------------
def mse_to_reference(edited: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A simple per-run scalar loss on pixels; the timing does not depend on which loss it is."""
    return (edited - reference).pow(2).mean(dim=(1, 2, 3))


def make_iteration(pipe, cond, tape, recompute: bool, guidance: float = 7.5):
    """(a function doing one optimisation iteration, the name of what it runs): the library's own iteration,
    disentkit.objective.Objective (denoise with each UNet call recomputed in the backward pass, decode, loss), then
    backward and an Adam step.
    For a float16 model the loss is scaled by a fixed factor before the backward so that the gradient does not
    underflow (optimize adapts the factor with a GradScaler); a step whose gradient overflows is skipped."""
    from disentkit.objective import Objective

    lam = dk.MixSchedule.switch(tape.steps, int(0.4 * tape.steps)).weights.to(pipe.unet.device).requires_grad_(True)
    adam = torch.optim.Adam([lam], lr=0.05)
    objective = Objective(pipe, cond, tape, {"mse": (1.0, mse_to_reference)}, guidance, recompute=recompute)
    scale = 2.0**12 if pipe.unet.dtype == torch.float16 else 1.0

    def iteration():
        adam.zero_grad(set_to_none=True)
        (objective(lam)[0] * scale).backward()
        grad = lam.grad / scale
        if not torch.isfinite(grad).all():
            return float("nan")  # an overflow: no step, and it counts as no gradient
        lam.grad = grad
        adam.step()
        return float(grad.abs().sum())

    return iteration, "disentkit.objective.Objective"


def bench_iteration(pipe, cfg: Config, guidance: float = 7.5) -> dict:
    cond = dk.encode(pipe, C0, C1)
    tape = dk.NoiseTape.from_seed(pipe, cfg.seeds[0], steps=cfg.opt_steps, scheduler="ddim")
    schedule = dk.MixSchedule.switch(cfg.opt_steps, int(0.4 * cfg.opt_steps))
    iteration, kind = make_iteration(pipe, cond, tape, recompute=True, guidance=guidance)
    iteration_no_ckpt, _ = make_iteration(pipe, cond, tape, recompute=False, guidance=guidance)

    def plain():
        return dk.sample(pipe, cond, schedule, tape, guidance, progress=False)

    t_iter, t_sample, t_no_ckpt = [], [], []
    for _ in range(cfg.repeats + 1):  # one more than elsewhere: these are short, and the ratio is the goal
        t, grad = timed(iteration)
        t_iter.append(t)
        t_sample.append(timed(plain)[0])
        t_no_ckpt.append(timed(iteration_no_ckpt)[0])
    return {
        "steps": cfg.opt_steps,
        "iteration": kind,
        "iteration_s": min(t_iter),
        "sample_s": min(t_sample),
        "ratio": min(t_iter) / min(t_sample),
        # For context: without checkpointing there is no recompute pass (but memory grows with steps, figure 3).
        "ratio_without_checkpointing": min(t_no_ckpt) / min(t_sample),
        "grad_nonzero": grad > 0,
    }


def memory_child(model: str, steps: int, recompute: bool) -> dict:
    """Run in a fresh process: the peak memory that one optimisation iteration adds on top of the loaded model."""
    pipe, _ = load_model(model)
    cond = dk.encode(pipe, C0, C1)
    tape = dk.NoiseTape.from_seed(pipe, 42, steps=steps, scheduler="ddim")
    iteration, kind = make_iteration(pipe, cond, tape, recompute)
    gc.collect()
    with PeakMemory(pipe.unet.device) as mem:  # on a CPU: the resident-set peak, reset at the start
        iteration()
    unit = "GPU bytes" if mem.method == CUDA else "RSS bytes"
    return {"kind": kind, "unit": unit, "method": mem.method, "before": mem.before, "peak": mem.peak,
            "delta": mem.extra}  # fmt: skip


def bench_memory(model: str, cfg: Config, threads: int) -> dict:
    out = {"steps": cfg.memory_steps}
    for mode in ("checkpoint", "no_checkpoint"):
        cmd = [sys.executable, __file__, "--memory-child", mode, "--model", model, "--threads", str(threads),
               "--memory-steps", str(cfg.memory_steps)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            out[mode] = {"error": why}
            continue
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = all("delta" in out[m] for m in ("checkpoint", "no_checkpoint"))
    if ok and out["checkpoint"]["delta"] > 0:
        out["ratio_without_over_with"] = out["no_checkpoint"]["delta"] / out["checkpoint"]["delta"]
    return out


def real_scale(build, label: str, steps: int, height: int | None, guidance: float = 7.5) -> dict:
    """Time and peak memory of one optimisation iteration (checkpointed, batch 1) of a pipeline ``build()`` makes.

    On a GPU the peak is torch.cuda.max_memory_allocated over the whole iteration (weights included).
    """
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    pipe = build()
    cond = dk.encode(pipe, C0, C1)
    tape = dk.NoiseTape.from_seed(pipe, 0, steps=steps, scheduler="ddim", height=height, width=height)
    iteration, kind = make_iteration(pipe, cond, tape, recompute=True, guidance=guidance)
    with PeakMemory(pipe.unet.device) as mem:  # on a GPU: its "before" is the weights
        seconds, grad = timed(iteration)
    result = {"model": label, "steps": steps, "latent": list(tape.latent_shape), "iteration": kind,
              "iteration_s": seconds, "grad_nonzero": grad > 0, "dtype": str(pipe.unet.dtype)}  # fmt: skip
    if mem.method == CUDA:
        peak = mem.peak
        result.update(peak_gb=peak / 1e9, weights_gb=mem.before / 1e9, goal_gb=10.0, within_goal=peak / 1e9 <= 10.0)
    del pipe, iteration
    gc.collect()
    return result


def bench_real_scale(cfg: Config) -> dict:
    from disentkit.testing import sd_architecture, tiny_pipeline

    out = {}
    # The same function on the CPU with the tiny sd1 pipeline, so the GPU code path is exercised on every run.
    out["cpu_code_path_check"] = real_scale(lambda: tiny_pipeline("sd1"), "tiny sd1 (CPU)", cfg.check_steps, None)
    if not torch.cuda.is_available():
        out["sd14_512"] = out["sdxl_1024"] = "skipped: no GPU"
        return out

    def sd14():
        return sd_architecture("sd1", "cuda", torch.float32)  # fp32 weights; optimize's autocast runs in bf16/fp16

    def sdxl():
        pipe = sd_architecture("sdxl", "cuda", torch.float16)  # 2.6B UNet: fp16 weights to stay small
        pipe.vae.enable_tiling()  # as users set it; diffusers tiles only latents larger than its 128 tile, so
        # a 1024 px SDXL decode (128 x 128 latents) is not tiled: the kept figures are those of an untiled decode
        pipe.vae.enable_slicing()
        return pipe

    for key, build, label, size in (("sd14_512", sd14, "SD v1.4 architecture", 512),
                                    ("sdxl_1024", sdxl, "SDXL base architecture", 1024)):  # fmt: skip
        try:
            out[key] = real_scale(build, label, 50, size)
        except torch.cuda.OutOfMemoryError as err:
            out[key] = f"out of memory: {str(err).splitlines()[0]}"
    return out


# ---- 5. torch-level checks ----------------------------------------------------------------------------------------
def bench_torch(pipe, cfg: Config) -> dict:
    """Which attention processors the UNet uses (SDPA = AttnProcessor2_0) and whether channels-last is faster."""
    procs = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    cond = dk.encode(pipe, C0, C1)
    rows = 2 * len(cfg.seeds) * 4  # a typical sweep batch: both guidance branches, seeds x a few branches
    c, h, w = dk.NoiseTape.from_seed(pipe, 0, steps=1).latent_shape
    x = torch.randn(rows, c, h, w, device=pipe.unet.device, dtype=pipe.unet.dtype)
    emb = cond.c0.expand(rows, -1, -1)
    t = torch.tensor(500, device=x.device)

    def forward(n=5):
        with torch.inference_mode():
            for _ in range(n):
                pipe.unet(x, t, encoder_hidden_states=emb)

    forward(1)
    contiguous = timed(forward)[0]
    pipe.unet.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    forward(1)
    channels_last = timed(forward)[0]
    pipe.unet.to(memory_format=torch.contiguous_format)  # leave the pipeline as we found it
    return {
        "attention_processors": procs,
        "sdpa": procs == ["AttnProcessor2_0"],
        "unet_batch_rows": rows,
        "contiguous_s": contiguous,
        "channels_last_s": channels_last,
        "channels_last_speedup": contiguous / channels_last,
        "use_channels_last": contiguous / channels_last > 1.05,
    }


# ---- report -------------------------------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    m, f = results["meta"], results["figures"]
    lines = [
        f"# disentkit benchmarks ({'quick' if m['quick'] else 'full'})",
        "",
        f"{m['date']} · device {m['device']} · torch {m['torch']} · diffusers {m['diffusers']} · "
        f"{m['torch_threads']} torch thread(s) · times are {m['timing']} · model: {m['model']}",
        "",
        *[f"Figure {k} is from an earlier run ({v['date']}, {v['device']})." for k, v in
          m.get("figures_from_earlier_runs", {}).items()],
        "| # | figure | measured | goal | ok |",
        "|---|---|---|---|---|",
    ]
    if "1_switch_sweep" in f:
        lines.append(switch_sweep_row(f["1_switch_sweep"]))
    if "2_optimisation_iteration" in f:
        lines.append(iteration_row(f["2_optimisation_iteration"]))
    if "3_checkpoint_memory" in f:
        lines.append(memory_row(f["3_checkpoint_memory"]))
    if "4_real_scale_gpu" in f:
        lines += real_scale_rows(f["4_real_scale_gpu"])
    if "5_torch" in f:
        lines.append(torch_row(f["5_torch"]))
    lines += ["", f"Total: {m['wall_s']:.0f} s wall, {m['cpu_s']:.0f} s CPU (memory subprocesses included).", ""]
    return "\n".join(lines)


def switch_sweep_row(s: dict) -> str:
    return (
        f"| 1 | switch sweep {len(s['switch_steps'])} switch steps x {len(s['seeds'])} seeds x {s['steps']} steps: "
        f"plain diffusers ({s['runs']} pipe calls) / sweep_switch | **{s['speedup']:.2f}x** "
        f"({s['plain_diffusers_s']:.1f} s / {s['sweep_switch_s']:.1f} s; UNet rows {s['row_ratio']:.2f}x fewer; "
        f"max pixel diff {s['max_abs_pixel_diff']:.1e}) | >= 1.8x, diff <= 1/255 | "
        f"{_ok(s['speedup'] >= 1.8 and s['same_images'])} |"
    )


def iteration_row(it: dict) -> str:
    return (
        f"| 2 | one optimisation iteration / one dk.sample ({it['steps']} steps; {it['iteration']}) | "
        f"**{it['ratio']:.2f}x** ({it['iteration_s']:.2f} s / {it['sample_s']:.2f} s; without checkpointing "
        f"{it['ratio_without_checkpointing']:.2f}x) | <= 4x | {_ok(it['ratio'] <= 4)} |"
    )


def memory_row(mem: dict) -> str:
    if "ratio_without_over_with" in mem:
        unit = mem["checkpoint"]["unit"]
        return (
            f"| 3 | peak memory added by one iteration ({mem['steps']} steps, {unit}, fresh processes): "
            f"without / with checkpointing | **{mem['ratio_without_over_with']:.1f}x** "
            f"({mem['no_checkpoint']['delta'] / 2**20:.0f} MiB / {mem['checkpoint']['delta'] / 2**20:.0f} MiB) | "
            f"checkpointing smaller | {_ok(mem['ratio_without_over_with'] > 1)} |"
        )
    return f"| 3 | checkpoint memory | failed: {mem} | | no |"


def real_scale_rows(real: dict) -> list[str]:
    lines = []
    for key, goal in (("sd14_512", "<= 10 GB"), ("sdxl_1024", "")):
        r = real[key]
        if isinstance(r, str):
            lines.append(f"| 4 | one iteration at real scale ({key}) | {r} | {goal} | - |")
        else:
            ok = _ok(r["within_goal"]) if goal else "-"
            lines.append(
                f"| 4 | one iteration, {r['model']} {r['latent']} latent, 50 steps, {r['dtype']} | "
                f"**{r['peak_gb']:.1f} GB** peak ({r['weights_gb']:.1f} GB weights), {r['iteration_s']:.1f} s | {goal} | {ok} |"
            )
    chk = real["cpu_code_path_check"]
    lines.append(
        f"| 4 | same code path on the CPU ({chk['model']}, {chk['steps']} steps) | ran in {chk['iteration_s']:.2f} s, "
        f"gradient {'non-zero' if chk['grad_nonzero'] else 'ZERO'} | runs | {_ok(chk['grad_nonzero'])} |"
    )
    return lines


def torch_row(tl: dict) -> str:
    return (
        f"| 5 | attention: {', '.join(tl['attention_processors'])}; channels-last / contiguous UNet time "
        f"({tl['unet_batch_rows']} rows) | {1 / tl['channels_last_speedup']:.2f}x the time | SDPA; channels-last only if faster | "
        f"{_ok(tl['sdpa'])} |"
    )


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller run, < 3 minutes on 2 CPU cores")
    ap.add_argument("--model", default="toyworld", help="'toyworld' (default), 'tiny-sd1' or a pipeline folder")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is steadiest on a shared machine; both sides of a ratio use the same)")
    ap.add_argument("--only", nargs="+", type=int, choices=range(1, 6), metavar="N",
                    help="measure only these figures (1-5), e.g. --only 4 for the real-scale GPU figure")
    ap.add_argument("--memory-child", choices=["checkpoint", "no_checkpoint"], help=argparse.SUPPRESS)
    ap.add_argument("--memory-steps", type=int, default=50, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.memory_child:  # internal: one measurement in a fresh process, printed as a JSON line
        print(json.dumps(memory_child(args.model, args.memory_steps, args.memory_child == "checkpoint")))
        return 0

    start = time.perf_counter()
    cfg = QUICK if args.quick else FULL
    pipe, note = load_model(args.model)
    model_arg = args.model if not note.startswith("FALLBACK") else "tiny-sd1"
    figures = {}
    for key, run in (
        ("1_switch_sweep", lambda: bench_sweep(pipe, cfg)),
        ("2_optimisation_iteration", lambda: bench_iteration(pipe, cfg)),
        ("3_checkpoint_memory", lambda: bench_memory(model_arg, cfg, args.threads)),
        ("4_real_scale_gpu", lambda: bench_real_scale(cfg)),
        ("5_torch", lambda: bench_torch(pipe, cfg)),
    ):
        if args.only and int(key[0]) not in args.only:
            continue
        t0 = time.perf_counter()
        figures[key] = run()
        print(f"{key}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    results = {
        "meta": {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick,
            "config": asdict(cfg),
            "model": note,
            "device": gpu or f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)",
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "timing": TIME_KIND,
            "wall_s": time.perf_counter() - start,
            "cpu_s": time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime,
            "wall_clock_of_timed_calls_s": wall_clock,
        },
        "figures": figures,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only and (out / "results.json").is_file():  # a partial run updates its figures, keeps the others
        earlier = json.loads((out / "results.json").read_text())
        kept = {k: v for k, v in earlier["figures"].items() if k not in figures}
        results["figures"] = dict(sorted((kept | figures).items()))
        results["meta"]["figures_from_earlier_runs"] = {
            k: earlier["meta"].get("figures_from_earlier_runs", {}).get(k) or
            {"date": earlier["meta"]["date"], "device": earlier["meta"]["device"]} for k in kept
        }  # fmt: skip
    write_json_atomic(out / "results.json", json.loads(json.dumps(results, default=str)))
    table = markdown(results)
    write_text_atomic(out / "results.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
