"""GPU check: the float16 SDXL path end to end through dk.sample and dk.optimize (GradScaler for fp16 models).

    python benchmarks/experiments/sdxl_fp16_check.py > benchmarks/experiments/sdxl_fp16_check.txt   # a GPU, random weights
"""
import time, torch, disentkit as dk
from disentkit.testing import sd_architecture

t0 = time.time()
pipe = sd_architecture("sdxl", "cuda", torch.float16)
pipe.vae.enable_tiling(); pipe.vae.enable_slicing()
cond = dk.encode(pipe, "a photo of a church", "a photo of a church, golden")
tape = dk.NoiseTape.from_seed(pipe, 0, steps=20, height=512, width=512)
out = dk.sample(pipe, cond, dk.MixSchedule.switch(20, 8), tape, 7.5, progress=False)
print("sample finite:", bool(torch.isfinite(out.pixels).all()), "pixel mean", float(out.pixels.float().mean()), f"t={time.time()-t0:.0f}s", flush=True)
mse = lambda edited, ref: (edited.float() - 0.5).pow(2).mean(dim=(1, 2, 3))
res = dk.optimize(pipe, cond, dk.reference_init(20, 8), tape, losses={"mse": (1.0, mse)}, iters=4, progress=False)
print(res.history.drop(columns=[c for c in res.history.columns if c.startswith("lambda")], errors="ignore").to_string())
w = res.schedule.weights
print("weights finite:", bool(torch.isfinite(w).all()), "moved:", float((w - dk.reference_init(20, 8).weights).abs().max()), f"t={time.time()-t0:.0f}s")
print("peak GB", torch.cuda.max_memory_allocated() / 1e9)
