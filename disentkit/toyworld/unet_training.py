"""Training stage 4: the UNet learns eps-prediction on VAE latents, conditioned on the frozen CLIP text tower.

The loss of one batch (:func:`unet_batch_loss`) is shared with the continuation of the bundled UNet
(:mod:`disentkit.toyworld.continue_unet`), so both train exactly the same objective.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import scenes as S
from .config import TrainConfig
from .data import CaptionEncoder, SceneData, sample_indices
from .models import ToyUNetConfig, config_dict, config_from_dict, count_parameters, images_to_tensor, make_scheduler
from .models import text_encoder_from_clip
from .stages import _restore, atomic_torch_save, log, open_stage, run_checkpointed, set_lr


def load_text_encoder(run_dir: Path, device: str):
    """The frozen text encoder the UNet reads: the clip_text stage's text tower as a CLIPTextModel."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(run_dir / "clip_text" / "model")
    return text_encoder_from_clip(clip).to(device).eval().requires_grad_(False)


def vae_latents(vae, data: SceneData, device: str, chunk: int = 250) -> torch.Tensor:
    """Posterior means of every training image, times the VAE's scaling_factor: (N, 4, 16, 16) float32."""
    chunks = []
    with torch.no_grad():
        for i in tqdm(range(0, len(data.scenes), chunk), desc="encode latents", mininterval=10):
            x = images_to_tensor(data.images[i : i + chunk]).to(device)  # (B, 3, 64, 64) in [-1, 1]
            chunks.append(vae.encode(x).latent_dist.mean.cpu() * vae.config.scaling_factor)
    return torch.cat(chunks)


def encode_latents(run_dir: Path, data: SceneData, device: str) -> torch.Tensor:
    """VAE latents (posterior means, scaled) of every training image, computed once: (N, 4, 16, 16)."""
    from diffusers import AutoencoderKL

    path = run_dir / "unet" / "latents.pt"
    vae_steps = json.loads((run_dir / "vae" / "done.json").read_text())["steps"]
    if path.exists():
        cached = torch.load(path)
        # Computed by this VAE? (A VAE trained further, --more vae=..., gives other latents.)
        if isinstance(cached, dict) and cached["vae_steps"] == vae_steps:
            return cached["latents"]
    vae = AutoencoderKL.from_pretrained(run_dir / "vae" / "model").to(device).eval()
    latents = vae_latents(vae, data, device)
    atomic_torch_save({"vae_steps": vae_steps, "latents": latents}, path)
    return latents


def unet_batch_loss(
    unet, text_encoder, encode: CaptionEncoder, scheduler, latents: torch.Tensor, data: SceneData,
    rng: np.random.Generator, cfg: TrainConfig, batch_size: int,
) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """One batch of the UNet's objective: draw scenes (cfg.face_fraction of them faces) and captions
    (cfg.caption_dropout of them empty, for classifier-free guidance), noise their latents at uniform random
    timesteps (plus cfg.offset_noise per channel), and return the min-SNR-weighted eps-prediction error, with object
    pixels counting (1 + cfg.object_weight) times, and a metrics dict. Random draws: batch, captions and dropout from
    `rng`; timesteps and noise from torch's global generator."""
    device = cfg.device
    idx = sample_indices(rng, data, batch_size, cfg.face_fraction)
    drop = rng.random(batch_size) < cfg.caption_dropout
    captions = ["" if d else S.random_caption(data.scenes[i], rng) for i, d in zip(idx, drop)]
    with torch.no_grad():
        context = text_encoder(encode(captions).to(device))[0]  # (B, T, text_width)
    z0 = latents[idx].to(device)  # (B, 4, 16, 16)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), device=device)
    noise = torch.randn_like(z0)
    if cfg.offset_noise:  # drawn only when asked, so the default recipe's random stream is unchanged
        noise = noise + cfg.offset_noise * torch.randn(z0.shape[0], z0.shape[1], 1, 1, device=device)
    zt = scheduler.add_noise(z0, noise, t)
    eps = unet(zt, t, context).sample
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    weight = snr.clamp(max=cfg.min_snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
    # Share of each latent pixel the object covers (a 4x4 patch of the image mask), as an error weight.
    mask = torch.as_tensor(np.asarray(data.masks[idx]), dtype=torch.float32)  # (B, 64, 64)
    cover = F.avg_pool2d(mask[:, None].to(device), mask.shape[-1] // z0.shape[-1])  # (B, 1, 16, 16)
    pixel_weight = 1 + cfg.object_weight * cover
    per_sample = (pixel_weight * (eps - noise) ** 2).mean(dim=(1, 2, 3)) / pixel_weight.mean(dim=(1, 2, 3))
    loss = (weight * per_sample).mean()
    return loss, {"mse": per_sample.mean().item()}


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA with a warmup (short memory early on, when the weights move fast): decay min(decay, (1+step)/(10+step))."""
    decay = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - decay)


def train_unet(cfg: TrainConfig, run_dir: Path, data: SceneData, tokenizer) -> None:
    """Train (or resume) the UNet from scratch on unet_batch_loss, keeping an EMA; save the EMA as
    run_dir/unet/model."""
    stage = open_stage(cfg, run_dir, "unet")
    if stage.done:
        return
    torch.manual_seed(cfg.seed + 3)
    rng = np.random.default_rng(cfg.seed + 3)
    text_encoder = load_text_encoder(run_dir, cfg.device)
    latents = encode_latents(run_dir, data, cfg.device)  # (N, 4, 16, 16)
    state = stage.load()
    # A resumed run keeps the architecture it started with, even if the default has changed since.
    unet_model = config_from_dict(ToyUNetConfig, state["model_config"]) if state and "model_config" in state \
        else cfg.unet_model
    unet = unet_model.build().to(cfg.device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.unet.lr, weight_decay=cfg.unet.weight_decay)
    if state:
        _restore(state, rng, model=unet, ema=ema, optimizer=optimizer)
    scheduler = make_scheduler()
    encode = CaptionEncoder(tokenizer)
    log(f"unet: {count_parameters(unet) / 1e6:.2f}M parameters, {len(latents)} latents, std {latents.std():.3f}")

    def step_fn(step):
        loss, metrics = unet_batch_loss(unet, text_encoder, encode, scheduler, latents, data, rng, cfg,
                                        cfg.unet.batch_size)  # fmt: skip
        lr = set_lr(optimizer, stage)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema_update(ema, unet, step, cfg.ema_decay)
        return dict(loss=loss.item(), lr=lr, **metrics)

    def save_fn():
        stage.save(model=unet.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                   rng=rng.bit_generator.state, torch_rng=torch.get_rng_state(),
                   model_config=config_dict(unet_model))

    run_checkpointed(stage, step_fn, save_fn, "unet")
    ema.save_pretrained(stage.dir / "model")
    stage.finish(dict(final_loss=stage.history[-1]["loss"] if stage.history else None))
