import torch, numpy as np, disentkit as dk
from disentkit.toyworld import scenes as S
from disentkit.toyworld.evaluator import Evaluator
from diffusers import AutoencoderKL
torch.set_num_threads(2)
ev = Evaluator.load()
W = "runs/toyworld2/export/pipeline"
pipe = dk.load_pipeline(W)
# 1. samples
cond = dk.encode(pipe, "a photo of a circle, orange", "a photo of a circle, orange")
tape = dk.NoiseTape.from_seed(pipe, list(range(700000, 700032)), steps=50)
out = dk.sample(pipe, cond, dk.MixSchedule.constant(50, 0.0), tape, 7.5, progress=False)
seen = ev(out.pixels)
print("samples colour:", seen["color"].value_counts().to_dict())
# 2. VAE round trip of orange renders
rng = np.random.default_rng(5)
imgs = []
for i in range(64):
    sc = S.sample_scene(rng, kind="circle", color="orange", rendering="photo") if "kind" in S.sample_scene.__code__.co_varnames else None
    if sc is None: break
    imgs.append(S.render(sc)[0])
if imgs:
    x = torch.from_numpy(np.stack(imgs)).permute(0,3,1,2).float()/255
    print("renders colour:", ev(x)["color"].value_counts().to_dict())
    with torch.no_grad():
        z = pipe.vae.encode(x*2-1).latent_dist.mean
        rec = (pipe.vae.decode(z).sample/2+0.5).clamp(0,1)
    print("vae round trip colour:", ev(rec)["color"].value_counts().to_dict())
    old = dk.load_pipeline("toyworld")
    with torch.no_grad():
        z = old.vae.encode(x*2-1).latent_dist.mean
        rec = (old.vae.decode(z).sample/2+0.5).clamp(0,1)
    print("OLD vae round trip colour:", ev(rec)["color"].value_counts().to_dict())
