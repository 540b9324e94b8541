"""Training stage 2: the VAE (diffusers AutoencoderKL, 64x64x3 <-> 16x16x4) learns to reconstruct the renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import SceneData
from .models import config_dict, count_parameters, images_to_tensor
from .stages import _restore, log, open_stage, run_checkpointed, set_lr


def train_vae(cfg: TrainConfig, run_dir: Path, data: SceneData) -> None:
    """Train (or resume) the VAE on L1 (object pixels x4) + MSE + a tiny KL; then fix scaling_factor = 1 / std of
    the latents and save run_dir/vae/model."""
    stage = open_stage(cfg, run_dir, "vae")
    if stage.done:
        return
    torch.manual_seed(cfg.seed + 2)
    rng = np.random.default_rng(cfg.seed + 2)
    vae = cfg.vae_model.build().to(cfg.device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr, weight_decay=cfg.vae.weight_decay)
    state = stage.load()
    if state:
        _restore(state, rng, model=vae, optimizer=optimizer)
    log(f"vae: {count_parameters(vae) / 1e6:.2f}M parameters")

    def step_fn(step):
        idx = np.sort(rng.integers(len(data.scenes), size=cfg.vae.batch_size))
        x = images_to_tensor(data.images[idx]).to(cfg.device)  # (B, 3, 64, 64) in [-1, 1]
        # Object pixels count 4x: the small details the evaluator reads (mouths, dots, stripes) live there.
        weight = 1 + 3 * torch.as_tensor(np.asarray(data.masks[idx]), dtype=torch.float32, device=cfg.device)[:, None]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        l1 = (weight * (recon - x).abs()).mean()
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean()
        loss = l1 + mse + cfg.vae_model.kl_weight * kl
        lr = set_lr(optimizer, stage)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        return dict(loss=loss.item(), mse=mse.item(), kl=kl.item(), lr=lr)

    def save_fn():
        stage.save(model=vae.state_dict(), optimizer=optimizer.state_dict(), rng=rng.bit_generator.state,
                   torch_rng=torch.get_rng_state(), model_config=config_dict(cfg.vae_model))

    run_checkpointed(stage, step_fn, save_fn, "vae")

    # scaling_factor = 1 / std of the latents, so the UNet sees unit-variance inputs (SD's 0.18215 is the same idea).
    vae.eval()
    with torch.no_grad():
        idx = np.arange(min(len(data.scenes), 2000))
        latents = torch.cat([vae.encode(images_to_tensor(data.images[i : i + 200]).to(cfg.device)).latent_dist.mean
                             for i in range(0, len(idx), 200)])
        x = images_to_tensor(data.images[:200]).to(cfg.device)
        eval_mse = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x).item()
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(stage.dir / "model")
    stage.finish(dict(final_loss=stage.history[-1]["loss"] if stage.history else None, recon_mse=eval_mse,
                      scaling_factor=scaling, latent_mean=float(latents.mean())))

