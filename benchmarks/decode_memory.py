"""Peak memory of the decode's backward pass: plain, with diffusers' block-level gradient checkpointing, and with
disentkit's per-layer recomputation (``decode(recompute=True)``, what ``optimize`` uses).

    python benchmarks/decode_memory.py [--sizes 256 512 1024] [--device cpu|cuda]

One optimisation iteration ends with one VAE decode whose backward pass needs every activation of the decoder; at
full resolution those dwarf the per-step latents the sampling loop keeps. This measures that part alone: the VAE
shared by SD 1.x, 2.x and SDXL (random weights, float32, 83.7M parameters), one image, decode + backward to the
latents, each configuration in a fresh process. On a CPU the peak is the resident-set high-water mark (VmHWM, reset
just before the decode); on a GPU, torch.cuda.max_memory_allocated. Writes decode_memory.{json,md} to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from disentkit.files import write_json_atomic, write_text_atomic  # noqa: E402
from disentkit.memory import PeakMemory  # noqa: E402
from disentkit.sampling import decode  # noqa: E402


MODES = {"plain": "plain", "blocks": "diffusers' blocks", "layers": "disentkit's layers"}


def child(size: int, mode: str, device: str) -> dict:
    """In a fresh process: the extra peak of one decode + backward at ``size`` px over the loaded VAE."""
    from disentkit.testing import _sd_vae

    torch.manual_seed(0)
    vae = _sd_vae(size, 0.18215).to(device).eval().requires_grad_(False)
    if mode == "blocks":
        vae.enable_gradient_checkpointing()  # recompute the mid block and each up block as a whole
    pipe = SimpleNamespace(vae=vae)  # decode() needs the VAE only
    latents = torch.randn(1, 4, size // 8, size // 8, device=device, requires_grad=True)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        decode(pipe, latents, recompute=mode == "layers").mean().backward()
    seconds = time.perf_counter() - t0
    assert latents.grad is not None and torch.isfinite(latents.grad).all()
    return {"size": size, "mode": mode, "device": device, "extra_peak_mib": mem.extra / 2**20,
            "seconds": seconds}  # fmt: skip


def _seconds(s: float) -> str:
    return f"{s:.2f}" if s < 10 else f"{s:.0f}"  # a GPU decode takes under a second


def markdown(rows: list[dict], device: str) -> str:
    lines = ["# Decode + backward: peak memory, plain and checkpointed", "",
             f"The SD/SDXL VAE (random weights, float32), one image, on {device}; extra peak over the loaded VAE. "
             "Seconds: the one call in a fresh process, so first-call overheads are included.", "",
             "| size | " + " | ".join(f"{label} (MiB, s)" for label in MODES.values()) + " | plain / layers |",
             "|---|" + "---|" * (len(MODES) + 1)]  # fmt: skip
    by = {(r["size"], r["mode"]): r for r in rows}
    for size in sorted({r["size"] for r in rows}):
        cells = []
        for mode in MODES:
            r = by.get((size, mode), {"error": "not run"})
            cells.append(r["error"] if "error" in r else f"{r['extra_peak_mib']:.0f} ({_seconds(r['seconds'])} s)")
        plain, layers = by.get((size, "plain"), {}), by.get((size, "layers"), {})
        ratio = (f"{plain['extra_peak_mib'] / layers['extra_peak_mib']:.1f}x"
                 if "extra_peak_mib" in plain and "extra_peak_mib" in layers else "")  # fmt: skip
        lines.append(f"| {size} px | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.device)))
        return 0
    rows = []
    for size in args.sizes:
        for mode in MODES:
            cmd = [sys.executable, __file__, "--child", str(size), mode, "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
                rows.append({"size": size, "mode": mode, "error": why})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    label = f"{args.device} ({name}, {when})"
    write_json_atomic(args.out / "decode_memory.json", {"device": args.device, "device_name": name, "date": when,
                                                        "rows": rows})  # fmt: skip
    write_text_atomic(args.out / "decode_memory.md", markdown(rows, label))
    print(markdown(rows, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
