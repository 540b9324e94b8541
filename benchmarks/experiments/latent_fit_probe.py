"""Can fitting the latent to the image (Adam on the decoder's pixel error, from the encoder's latent) lift the
reconstruction of toy scenes above the VAE round trip? The 8 scenes of optimize_report's inversion part.

    python benchmarks/experiments/latent_fit_probe.py > benchmarks/experiments/latent_fit_probe.txt
"""
import time
import numpy as np, torch
torch.set_num_threads(2)
import disentkit as dk
from disentkit.inversion import encode_image
from disentkit.sampling import decode
from disentkit.losses import psnr
from disentkit.pipeline import toyworld_dir
from disentkit.toyworld.scenes import render, sample_scene
pipe = dk.load_pipeline(toyworld_dir() / "pipeline")
rng = np.random.default_rng(7)
for i in range(8):
    scene = sample_scene(rng, rendering="photo")
    image, _ = render(scene, size=64)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    z0 = encode_image(pipe, image)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    t0 = time.time(); out = []
    for it in range(301):
        px = decode(pipe, z)
        loss = (px - x).pow(2).mean()
        if it in (0, 50, 100, 200, 300): out.append(f"{it}:{float(psnr(px.detach(), x)):.1f}")
        opt.zero_grad(); loss.backward(); opt.step()
    print(i, " ".join(out), f"{time.time()-t0:.0f}s", "z moved", float((z.detach() - z0).abs().mean()), "z std", float(z0.std()), flush=True)
