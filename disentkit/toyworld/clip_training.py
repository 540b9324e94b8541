"""Training stages 1, 3 and 5: CLIP contrastive on (render, caption) pairs (both towers), then the text tower alone
(factor heads), then the vision tower alone against the frozen text tower (with NegCLIP-style hard negatives)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import scenes as S
from .config import TrainConfig
from .data import CaptionEncoder, SceneData, caption_pins, clip_caption, eval_scenes, sample_indices
from .models import clip_image_embeddings, clip_text_embeddings, config_dict, count_parameters, images_to_tensor
from .stages import _restore, log, open_stage, run_checkpointed, set_lr


def multi_positive_clip_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Contrastive loss where a caption may fit several images in the batch ("a photo of a circle" fits every
    circle). Targets spread evenly over all fitting pairs, in both directions. logits, positive: (B_img, B_txt)."""
    img_to_txt = -(positive / positive.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    txt_to_img = -(positive / positive.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (img_to_txt + txt_to_img) / 2


@torch.no_grad()
def clip_zero_shot(clip, encode, scenes: list[S.Scene], images: np.ndarray, device="cpu", batch=200) -> dict:
    """Zero-shot accuracy per factor: for each image, which caption among the factor's values (the object's kind
    said, as in the paper's prompts) scores highest. Rendering compares "a photo of" with "a sketch of"."""
    clip.eval()
    pixel = images_to_tensor(images)
    img = torch.cat([clip_image_embeddings(clip, pixel[i : i + batch].to(device)) for i in range(0, len(pixel), batch)])

    cache: dict[str, torch.Tensor] = {}

    def text_features(captions):
        missing = [c for c in captions if c not in cache]
        if missing:
            feats = clip_text_embeddings(clip, encode(missing).to(device))
            cache.update(zip(missing, feats))
        return torch.stack([cache[c] for c in captions])

    accuracy = {}
    for name, values in S.FACTORS.items():
        correct, total = 0, 0
        for i, scene in enumerate(scenes):
            if name == "expression" and scene.kind != "face":
                continue
            captions = S.factor_captions(scene, name)
            scores = text_features(captions) @ img[i]
            correct += int(values[int(scores.argmax())] == getattr(scene, name))
            total += 1
        accuracy[name] = correct / max(total, 1)
    clip.train()
    return accuracy


def train_clip(cfg: TrainConfig, run_dir: Path, data: SceneData, tokenizer, name: str = "clip") -> None:
    """Stage "clip" trains both towers from scratch; stage "clip_vision" continues from its result with the text
    tower (and text projection) frozen."""
    stage = open_stage(cfg, run_dir, name)
    if stage.done:
        return
    seed = cfg.seed + (1 if name == "clip" else 4)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model_cfg = replace(
        cfg.clip_model, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    if name == "clip":
        clip = model_cfg.build().to(cfg.device)
    else:
        from transformers import CLIPModel

        clip = CLIPModel.from_pretrained(run_dir / "clip_text" / "model").to(cfg.device)
        clip.text_model.requires_grad_(False)
        clip.text_projection.requires_grad_(False)
        text_side = {k: v.clone() for k, v in clip.state_dict().items() if k.startswith(("text_model.", "text_projection."))}
    trainable = [p for p in clip.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=stage.config.lr, weight_decay=stage.config.weight_decay)
    state = stage.load()
    if state:
        _restore(state, rng, model=clip, optimizer=optimizer)
    if name == "clip_vision":
        # The text side always comes from the clip_text stage (a no-op on a plain resume, where it was frozen).
        clip.load_state_dict(text_side, strict=False)
    encode = CaptionEncoder(tokenizer)
    log(f"{name}: {count_parameters(clip) / 1e6:.2f}M parameters, {sum(p.numel() for p in trainable) / 1e6:.2f}M trained")
    # Hard negatives need a frozen text tower (their embeddings are computed once per caption and cached).
    hard_negatives = name == "clip_vision" and cfg.hard_negative_weight > 0
    text_cache: dict[str, torch.Tensor] = {}

    def frozen_text_embeddings(captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in text_cache]
        if missing:
            with torch.no_grad():
                text_cache.update(zip(missing, clip_text_embeddings(clip, encode(missing).to(cfg.device))))
        return torch.stack([text_cache[c] for c in captions])

    def hard_negative_loss(idx, pixel) -> torch.Tensor:
        """Cross-entropy of each image over captions that differ from its own in one factor only."""
        image = clip_image_embeddings(clip, pixel)  # (B, E)
        scale = clip.logit_scale.exp()
        losses = []
        for name_f, values in S.FACTORS.items():
            rows = [j for j, i in enumerate(idx) if name_f != "expression" or data.scenes[i].kind == "face"]
            if not rows:
                continue
            text = frozen_text_embeddings([c for j in rows for c in S.factor_captions(data.scenes[idx[j]], name_f)])
            logits = scale * torch.einsum("bve,be->bv", text.view(len(rows), len(values), -1), image[rows])
            truth = torch.as_tensor([values.index(getattr(data.scenes[idx[j]], name_f)) for j in rows], device=cfg.device)
            losses.append(F.cross_entropy(logits, truth))
        return torch.stack(losses).mean()

    def step_fn(step):
        idx = sample_indices(rng, data, stage.config.batch_size, cfg.face_fraction if name == "clip_vision" else 0.0)
        captions = [clip_caption(data.scenes[i], rng) for i in idx]
        pins = torch.tensor([caption_pins(c) for c in captions])  # (B, 6)
        labels = torch.as_tensor(data.labels[idx])  # (B, 6)
        # positive[i, j]: caption j fits image i (every factor it says matches).
        positive = ((pins[None] == -1) | (pins[None] == labels[:, None])).all(-1).float()  # (B, B)
        pixel = images_to_tensor(data.images[idx]).to(cfg.device)  # (B, 3, 64, 64)
        out = clip(input_ids=encode(captions).to(cfg.device), pixel_values=pixel)
        loss = multi_positive_clip_loss(out.logits_per_image, positive.to(cfg.device))
        metrics = {}
        if hard_negatives:
            hard = hard_negative_loss(idx, pixel)
            loss = loss + cfg.hard_negative_weight * hard
            metrics["hard"] = hard.item()
        lr = set_lr(optimizer, stage)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        return dict(loss=loss.item(), logit_scale=clip.logit_scale.exp().item(), lr=lr, **metrics)

    def save_fn():
        stage.save(model=clip.state_dict(), optimizer=optimizer.state_dict(), rng=rng.bit_generator.state,
                   torch_rng=torch.get_rng_state(), model_config=config_dict(model_cfg))

    run_checkpointed(stage, step_fn, save_fn, name)
    scenes, images = eval_scenes(cfg.n_eval_scenes, cfg.seed)
    accuracy = clip_zero_shot(clip, encode, scenes, images, cfg.device)
    clip.save_pretrained(stage.dir / "model")
    stage.finish(dict(final_loss=stage.history[-1]["loss"] if stage.history else None, zero_shot=accuracy))


def train_clip_text(cfg: TrainConfig, run_dir: Path, tokenizer) -> None:
    """Teach CLIP's text tower to keep every attribute apart: one linear head per factor reads the projected text
    embedding and classifies the value the caption says (factors it leaves unsaid are not scored). Text only,
    so thousands of captions a second; the heads are thrown away, the tower is the pipeline's text_encoder."""
    from transformers import CLIPModel

    stage = open_stage(cfg, run_dir, "clip_text")
    if stage.done:
        return
    torch.manual_seed(cfg.seed + 5)
    rng = np.random.default_rng(cfg.seed + 5)
    clip = CLIPModel.from_pretrained(run_dir / "clip" / "model").to(cfg.device)
    text_params = list(clip.text_model.parameters()) + list(clip.text_projection.parameters())
    heads = torch.nn.ModuleDict({
        name: torch.nn.Linear(clip.config.projection_dim, len(values)) for name, values in S.FACTORS.items()
    }).to(cfg.device)
    optimizer = torch.optim.AdamW(text_params + list(heads.parameters()), lr=stage.config.lr,
                                  weight_decay=stage.config.weight_decay)
    state = stage.load()
    if state:
        _restore(state, rng, model=clip, heads=heads, optimizer=optimizer)
    encode = CaptionEncoder(tokenizer)
    scene_rng = np.random.default_rng(cfg.seed + 6)

    def step_fn(step):
        captions = [clip_caption(S.sample_scene(scene_rng), rng) for _ in range(stage.config.batch_size)]
        pins = torch.tensor([caption_pins(c) for c in captions], device=cfg.device)  # (B, 6), -1 = unsaid
        out = clip.text_model(input_ids=encode(captions).to(cfg.device))
        embeds = clip.text_projection(out.pooler_output)  # (B, projection_dim)
        losses = []
        for k, name in enumerate(S.FACTORS):
            said = pins[:, k] >= 0
            if said.any():
                losses.append(F.cross_entropy(heads[name](embeds[said]), pins[said, k]))
        loss = torch.stack(losses).mean()
        lr = set_lr(optimizer, stage)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return dict(loss=loss.item(), lr=lr)

    def save_fn():
        stage.save(model=clip.state_dict(), heads=heads.state_dict(), optimizer=optimizer.state_dict(),
                   rng=rng.bit_generator.state, model_config=config_dict(cfg.clip_model))

    run_checkpointed(stage, step_fn, save_fn, "clip_text")
    clip.save_pretrained(stage.dir / "model")
    stage.finish(dict(final_loss=stage.history[-1]["loss"] if stage.history else None))

