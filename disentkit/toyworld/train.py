"""Train the toy Stable Diffusion from scratch, then export it as a diffusers pipeline.

    python -m disentkit.toyworld.train --out runs/toyworld            # full run (under 2 hours on 2 CPU cores)
    python -m disentkit.toyworld.train --out runs/toyworld --smoke    # every stage for a few steps, < 1 min
    python -m disentkit.toyworld.train --out runs/toyworld --export-only --weights disentkit/toyworld/weights

Stages (each resumes from its last checkpoint when the same command runs again), two at a time in two processes
(one core each) unless --sequential:
  1. clip         contrastive CLIP on (render, caption) pairs, both towers   } side by side
  2. vae          AutoencoderKL reconstruction of the renders                 }
  3. clip_text    the text tower learns to say every attribute: heads on its embedding classify each factor a
                  caption pins (captions are synthetic, so their meaning is known). Short contrastive training
                  alone lets the text tower merge words whose pictures the young vision tower cannot yet tell
                  apart ("circle"/"face", "smiling"/"frowning"); the UNet, which reads the text tower's hidden
                  states, would then be unable to follow them.
  4. unet         eps-prediction on VAE latents, conditioned on the frozen     } side by side
                  CLIP text tower, with caption dropout                        }
  5. clip_vision  CLIP's vision tower trains on against the frozen text tower }
Stages 3-5 let the UNet start early on a text tower that then never changes (the pipeline's text_encoder stays
exactly CLIP's text tower) while CLIP's image side keeps improving for zero-shot use and losses.
Then a report (report.json, loss_curves.png, samples.png) and an export (see `export`).

Each stage stops at its step count or its time budget, whichever comes first; the learning rate follows the
progress through that budget (warmup, then cosine), so a time-limited run still anneals. Training data is rendered
once into the run folder (images.npy, scenes.json) and sampled from with fixed seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import scenes as S
from .models import (
    ToyCLIPConfig,
    ToyUNetConfig,
    ToyVAEConfig,
    clip_image_embeddings,
    clip_text_embeddings,
    config_dict,
    config_from_dict,
    count_parameters,
    images_to_tensor,
    make_scheduler,
    text_encoder_from_clip,
)
from .tokenizer import MODEL_MAX_LENGTH, build_tokenizer

STAGES = ("clip", "vae", "clip_text", "unet", "clip_vision")
MODEL_OF_STAGE = {"clip": "clip_model", "clip_text": "clip_model", "clip_vision": "clip_model", "vae": "vae_model",
                  "unet": "unet_model"}  # fmt: skip

# Captions whose samples the report shows (one row each) and that the sanity check looks at.
SAMPLE_CAPTIONS = (
    "a photo of a circle",
    "a photo of a circle, red",
    "a photo of a square, blue, striped",
    "a photo of a triangle, yellow, at night",
    "a photo of a star, green, in the snow",
    "a photo of a face, smiling",
    "a photo of a face, frowning, at sunset",
    "a sketch of a square, purple",
    "a photo of a circle, orange, dotted, in daylight",
)


@dataclass
class StageConfig:
    max_steps: int
    minutes: float  # time budget; the stage ends at max_steps or after this long, whichever is first
    batch_size: int
    lr: float
    warmup_steps: int = 100
    weight_decay: float = 0.01
    checkpoint_minutes: float = 3.0  # checkpoints are written this often (and at the end)
    log_every: int = 25


@dataclass
class TrainConfig:
    out: str
    device: str = "cpu"
    seed: int = 0
    threads: int = 1  # per process: on a shared, oversubscribed CPU, one thread each beats two by far
    sequential: bool = False  # run clip and vae one after the other instead of side by side
    n_scenes: int = 30_000  # rendered once, ~370 MB of uint8 images in the run folder
    n_eval_scenes: int = 400
    sample_steps: int = 25  # DDIM steps of the report's sample grid
    caption_dropout: float = 0.12  # empty caption for classifier-free guidance
    # Time budgets: the phases take 24 (clip || vae) + 4 (clip_text) + 78 (unet || clip_vision) minutes, so the
    # whole run, with rendering the data, encoding the latents and the report, fits in 2 hours on 2 CPU cores
    # (16 + 4 + 86 took 1 h 50 min on 2026-11-26). The VAE got 24 minutes after 16 left it shifting orange
    # towards yellow, which the UNet then drew.
    clip: StageConfig = field(default_factory=lambda: StageConfig(20000, 24, 64, 5e-4, warmup_steps=50, weight_decay=0.1))
    vae: StageConfig = field(default_factory=lambda: StageConfig(20000, 24, 16, 1e-3, warmup_steps=50))
    unet: StageConfig = field(default_factory=lambda: StageConfig(50000, 78, 32, 5e-4, warmup_steps=100))
    clip_text: StageConfig = field(default_factory=lambda: StageConfig(1500, 4, 256, 1e-3, warmup_steps=20))
    clip_vision: StageConfig = field(default_factory=lambda: StageConfig(30000, 76, 64, 3e-4, warmup_steps=20, weight_decay=0.1))
    ema_decay: float = 0.998
    min_snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023): converges faster at equal compute
    # Faces are one kind in five, and their expression lives in a few mouth pixels: the UNet and CLIP's vision
    # tower see faces this often instead (captions still say only what the image shows, so what a caption means
    # does not change, only how often the model practises the hardest case).
    face_fraction: float = 0.35
    # The UNet's noise-prediction error counts (1 + object_weight) times on latent pixels the object covers:
    # colour, texture and mouths live there, the background is large and easy.
    object_weight: float = 2.0
    # CLIP's vision stage also scores each image against captions that differ in one factor only (hard
    # negatives, as in NegCLIP): in-batch negatives rarely differ in just the mouth.
    hard_negative_weight: float = 1.0
    # Extra training rounds for stages that already finished ({stage: minutes}, from --more): each restarts the
    # cosine learning rate at more_lr_scale times the stage's peak and continues from the stage's checkpoint.
    more: dict = field(default_factory=dict)
    more_lr_scale: float = 0.5
    clip_model: ToyCLIPConfig = field(default_factory=ToyCLIPConfig)
    vae_model: ToyVAEConfig = field(default_factory=ToyVAEConfig)
    unet_model: ToyUNetConfig = field(default_factory=ToyUNetConfig)

    @classmethod
    def smoke(cls, out: str, **kw) -> "TrainConfig":
        tiny = dict(max_steps=3, minutes=1.0, batch_size=8, warmup_steps=1, log_every=1)
        return cls(
            out=out,
            n_scenes=64,
            n_eval_scenes=16,
            sample_steps=2,
            sequential=True,
            clip=StageConfig(lr=5e-4, **tiny),
            vae=StageConfig(lr=5e-4, **tiny),
            unet=StageConfig(lr=5e-4, **tiny),
            clip_text=StageConfig(lr=5e-4, **tiny),
            clip_vision=StageConfig(lr=5e-4, **tiny),
            **kw,
        )


# --------------------------------------------------------------------------------------------------------------
# Small helpers: atomic files, learning rate, logging


def atomic_torch_save(obj, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: an interrupted save never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def learning_rate(stage: StageConfig, step: int, progress: float) -> float:
    """Linear warmup over warmup_steps, then cosine decay to 10% over the stage's progress (0..1)."""
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def log(message: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}")


# --------------------------------------------------------------------------------------------------------------
# Data: rendered once, shared by all stages


@dataclass
class SceneData:
    scenes: list[S.Scene]
    images: np.ndarray  # (N, 64, 64, 3) uint8, memory-mapped
    masks: np.ndarray  # (N, 64, 64) bool
    labels: np.ndarray  # (N, 6) int: index of each factor's value in FACTORS order, -1 for "no expression"

    @property
    def face_indices(self) -> np.ndarray:
        return np.flatnonzero(self.labels[:, list(S.FACTORS).index("kind")] == S.KINDS.index("face"))


def factor_indices(labels: dict[str, str | None]) -> list[int]:
    return [-1 if labels[name] is None else S.FACTORS[name].index(labels[name]) for name in S.FACTORS]


def prepare_data(run_dir: Path, n_scenes: int, seed: int) -> SceneData:
    """Render n_scenes random scenes into run_dir/data once; later calls (and resumed runs) load them."""
    data_dir = run_dir / "data"
    done = data_dir / "scenes.json"
    if not done.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        scenes = [S.sample_scene(rng) for _ in range(n_scenes)]
        images = np.lib.format.open_memmap(data_dir / "images.npy", "w+", np.uint8, (n_scenes, 64, 64, 3))
        masks = np.lib.format.open_memmap(data_dir / "masks.npy", "w+", bool, (n_scenes, 64, 64))
        for i, scene in enumerate(tqdm(scenes, desc="render scenes", mininterval=5)):
            images[i], masks[i] = S.render(scene)
        images.flush()
        masks.flush()
        del images, masks
        atomic_write_text(json.dumps([s.to_dict() for s in scenes]), done)  # written last: marks the data complete
    scenes = [S.Scene(**d) for d in json.loads(done.read_text())]
    labels = np.array([factor_indices(s.labels()) for s in scenes], dtype=np.int64)
    return SceneData(
        scenes=scenes,
        images=np.load(data_dir / "images.npy", mmap_mode="r"),
        masks=np.load(data_dir / "masks.npy", mmap_mode="r"),
        labels=labels,
    )


def eval_scenes(n: int, seed: int) -> tuple[list[S.Scene], np.ndarray]:
    """Held-out scenes (a seed the training data never uses) and their renders."""
    rng = np.random.default_rng(seed + 10_000)
    scenes = [S.sample_scene(rng) for _ in range(n)]
    images, _ = S.render_batch(scenes)
    return scenes, images


class CaptionEncoder:
    """Tokenizes captions the way StableDiffusionPipeline does (padded to model_max_length, no attention mask),
    caching token ids per caption: there are only a few thousand distinct toy captions."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(
                missing, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[c] for c in captions])  # (B, T)


def clip_caption(scene: S.Scene, rng: np.random.Generator) -> str:
    """CLIP's training captions say each attribute with probability 1/2: more specific than the UNet's, so the
    contrastive task has to read every attribute, while neutral and partial captions still occur."""
    mention = [name for name in S.CAPTION_ATTRIBUTES + ("rendering",) if rng.random() < 0.5]
    return S.caption(scene, mention)


def caption_pins(text: str) -> list[int]:
    """A caption as factor indices, -1 where it leaves the factor unsaid."""
    pinned = S.parse_caption(text)
    return [S.FACTORS[name].index(pinned[name]) if name in pinned else -1 for name in S.FACTORS]


def sample_indices(rng: np.random.Generator, data: SceneData, batch_size: int, face_fraction: float) -> np.ndarray:
    """Random training indices; with face_fraction > 0, that share of them drawn from the faces only."""
    idx = rng.integers(len(data.scenes), size=batch_size)
    if face_fraction > 0:
        faces = data.face_indices
        from_faces = rng.random(batch_size) < face_fraction
        idx[from_faces] = faces[rng.integers(len(faces), size=int(from_faces.sum()))]
    return idx


# --------------------------------------------------------------------------------------------------------------
# Stage bookkeeping: checkpoint, resume, time budget


class Stage:
    """One training stage's state on disk: run_dir/<name>/checkpoint.pt (+ done.json when finished)."""

    def __init__(self, run_dir: Path, name: str, config: StageConfig, more_minutes: float | None = None,
                 more_lr_scale: float = 0.5):  # fmt: skip
        self.dir = run_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.config = name, config
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self.done_path = self.dir / "done.json"
        self.step, self.elapsed, self.history = 0, 0.0, []
        # A round is one pass of the learning-rate schedule over a time budget. Round 0 is the stage's own; a
        # finished stage given more minutes (--more) starts another from where it stopped.
        self.round = dict(index=0, start_step=0, start_elapsed=0.0, minutes=config.minutes, lr=config.lr)
        self.reopen = more_minutes if (more_minutes and self.done_path.exists()) else None
        self.more_lr_scale = more_lr_scale

    @property
    def done(self) -> bool:
        return self.done_path.exists() and self.reopen is None

    def load(self) -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)  # our own file
        self.step, self.elapsed, self.history = state["step"], state["elapsed"], state["history"]
        self.round = state.get("round", self.round)
        if self.reopen is not None:
            index = self.round["index"] + 1
            self.round = dict(index=index, start_step=self.step, start_elapsed=self.elapsed, minutes=self.reopen,
                              lr=self.config.lr * self.more_lr_scale)
            # The finished round's summary is kept beside the checkpoint; done.json comes back when this round ends.
            os.replace(self.done_path, self.dir / f"done.round{index - 1}.json")
            self.reopen = None
            log(f"{self.name}: round {index}, {self.round['minutes']:g} more minutes from step {self.step}")
        else:
            log(f"{self.name}: resuming at step {self.step} ({self.elapsed / 60:.1f} min done)")
        return state

    def save(self, **state) -> None:
        atomic_torch_save(dict(step=self.step, elapsed=self.elapsed, history=self.history, round=self.round, **state),
                          self.checkpoint_path)

    def finish(self, summary: dict) -> None:
        summary = dict(stage=self.name, steps=self.step, minutes=self.elapsed / 60, **summary)
        atomic_write_text(json.dumps(summary, indent=2), self.done_path)
        log(f"{self.name}: done, {json.dumps(summary)}")

    def progress(self) -> float:
        """How far through the current round (0..1), by steps or by time, whichever is further."""
        r = self.round
        return max((self.step - r["start_step"]) / self.config.max_steps,
                   (self.elapsed - r["start_elapsed"]) / (60 * r["minutes"]))

    def loop(self, desc: str):
        """Yields step numbers until the step count or time budget is used up; keeps `elapsed` current."""
        bar = tqdm(total=self.round["start_step"] + self.config.max_steps, initial=self.step, desc=desc, mininterval=10, dynamic_ncols=True)
        while self.progress() < 1.0:
            start = time.perf_counter()
            yield self.step
            self.step += 1
            self.elapsed += time.perf_counter() - start
            bar.update(1)
        bar.close()


def open_stage(cfg: "TrainConfig", run_dir: Path, name: str) -> Stage:
    return Stage(run_dir, name, getattr(cfg, name), cfg.more.get(name), cfg.more_lr_scale)


def set_lr(optimizer, stage: Stage) -> float:
    config = replace(stage.config, lr=stage.round["lr"])
    lr = learning_rate(config, stage.step - stage.round["start_step"], stage.progress())
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def run_checkpointed(stage: Stage, step_fn, save_fn, desc: str) -> None:
    """The shared loop: one optimisation step per iteration, a log line every log_every steps, a checkpoint
    every checkpoint_minutes and at the end."""
    last_save = time.monotonic()
    running = []
    for step in stage.loop(desc):
        metrics = step_fn(step)
        running.append(metrics)
        if (step + 1) % stage.config.log_every == 0:
            mean = {k: float(np.mean([m[k] for m in running])) for k in running[0]}
            stage.history.append(dict(step=step + 1, minutes=round(stage.elapsed / 60, 3), **mean))
            log(f"{stage.name} step {step + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in mean.items()))
            running = []
        if time.monotonic() - last_save > 60 * stage.config.checkpoint_minutes:
            save_fn()
            last_save = time.monotonic()
    save_fn()


# --------------------------------------------------------------------------------------------------------------
# Stages 1 and 5: CLIP contrastive (both towers, then the vision tower alone); stage 3: the text tower alone


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


# --------------------------------------------------------------------------------------------------------------
# Stage 2: VAE


def train_vae(cfg: TrainConfig, run_dir: Path, data: SceneData) -> None:
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


# --------------------------------------------------------------------------------------------------------------
# Stage 4: UNet


def load_text_encoder(run_dir: Path, device: str):
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(run_dir / "clip_text" / "model")
    return text_encoder_from_clip(clip).to(device).eval().requires_grad_(False)


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
    chunks = []
    with torch.no_grad():
        for i in tqdm(range(0, len(data.scenes), 250), desc="encode latents", mininterval=10):
            x = images_to_tensor(data.images[i : i + 250]).to(device)
            chunks.append(vae.encode(x).latent_dist.mean.cpu() * vae.config.scaling_factor)
    latents = torch.cat(chunks)
    atomic_torch_save({"vae_steps": vae_steps, "latents": latents}, path)
    return latents


def train_unet(cfg: TrainConfig, run_dir: Path, data: SceneData, tokenizer) -> None:
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
    alphas_cumprod = scheduler.alphas_cumprod.to(cfg.device)
    encode = CaptionEncoder(tokenizer)
    log(f"unet: {count_parameters(unet) / 1e6:.2f}M parameters, {len(latents)} latents, std {latents.std():.3f}")

    def step_fn(step):
        b = cfg.unet.batch_size
        idx = sample_indices(rng, data, b, cfg.face_fraction)
        drop = rng.random(b) < cfg.caption_dropout
        captions = ["" if d else S.random_caption(data.scenes[i], rng) for i, d in zip(idx, drop)]
        with torch.no_grad():
            context = text_encoder(encode(captions).to(cfg.device))[0]  # (B, T, text_width)
        z0 = latents[idx].to(cfg.device)  # (B, 4, 16, 16)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=cfg.device)
        noise = torch.randn_like(z0)
        zt = scheduler.add_noise(z0, noise, t)
        eps = unet(zt, t, context).sample
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        weight = snr.clamp(max=cfg.min_snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
        # Share of each latent pixel the object covers (a 4x4 patch of the image mask), as an error weight.
        mask = torch.as_tensor(np.asarray(data.masks[idx]), dtype=torch.float32)  # (B, 64, 64)
        cover = F.avg_pool2d(mask[:, None].to(cfg.device), mask.shape[-1] // z0.shape[-1])  # (B, 1, 16, 16)
        pixel_weight = 1 + cfg.object_weight * cover
        per_sample = (pixel_weight * (eps - noise) ** 2).mean(dim=(1, 2, 3)) / pixel_weight.mean(dim=(1, 2, 3))
        loss = (weight * per_sample).mean()
        lr = set_lr(optimizer, stage)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        # EMA with a warmup (short memory early on, when the weights move fast).
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - decay)
        return dict(loss=loss.item(), mse=per_sample.mean().item(), lr=lr)

    def save_fn():
        stage.save(model=unet.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                   rng=rng.bit_generator.state, torch_rng=torch.get_rng_state(),
                   model_config=config_dict(unet_model))

    run_checkpointed(stage, step_fn, save_fn, "unet")
    ema.save_pretrained(stage.dir / "model")
    stage.finish(dict(final_loss=stage.history[-1]["loss"] if stage.history else None))


# --------------------------------------------------------------------------------------------------------------
# Assembling, sampling, reporting, exporting


def assemble(run_dir: Path, tokenizer=None, dtype=torch.float32):
    """A StableDiffusionPipeline and CLIPModel from the run's latest weights: finished stages' models, else the
    newest checkpoint (the UNet's EMA weights), so a run can be exported while it is still training."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTokenizer

    tokenizer = tokenizer or CLIPTokenizer.from_pretrained(run_dir / "tokenizer")

    def latest(name, config_class, model_class):
        """A finished stage's saved model, else its newest checkpoint (EMA weights if kept), else None."""
        stage_dir = run_dir / name
        if (stage_dir / "done.json").exists():
            return model_class.from_pretrained(stage_dir / "model")
        if not (stage_dir / "checkpoint.pt").exists():
            return None
        state = torch.load(stage_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
        model = config_from_dict(config_class, state["model_config"]).build()
        model.load_state_dict(state["ema"] if "ema" in state else state["model"])
        return model

    clip = (latest("clip_vision", ToyCLIPConfig, CLIPModel) or latest("clip_text", ToyCLIPConfig, CLIPModel)
            or latest("clip", ToyCLIPConfig, CLIPModel))
    vae = latest("vae", ToyVAEConfig, AutoencoderKL)
    unet = latest("unet", ToyUNetConfig, UNet2DConditionModel)
    if clip is None or vae is None or unet is None:
        raise FileNotFoundError(f"{run_dir} has no clip, vae and unet weights yet; train first")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder_from_clip(clip), tokenizer=tokenizer, unet=unet,
        scheduler=make_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype), clip.to(dtype=dtype)


@torch.no_grad()
def sample_grid(pipe, captions, seeds=(0, 1, 2, 3, 4, 5), steps=25, guidance=7.5) -> np.ndarray:
    """One row per caption, one column per seed: (rows*64, cols*64, 3) uint8."""
    rows = []
    for text in captions:
        images = pipe(
            [text] * len(seeds), num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
            generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np",
        ).images  # (S, 64, 64, 3) float in [0, 1]
        rows.append(np.concatenate(list((images * 255).round().astype(np.uint8)), axis=1))
    return np.concatenate(rows, axis=0)


def write_report(run_dir: Path, cfg: TrainConfig | None = None, sample_steps: int = 25) -> dict:
    """report.json (configs, per-stage summaries and loss histories), loss_curves.png and samples.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    report = {"stages": {}}
    if cfg is not None:
        report["models"] = {k: config_dict(getattr(cfg, k)) for k in ("clip_model", "vae_model", "unet_model")}
    fig, axes = plt.subplots(1, len(STAGES), figsize=(4.3 * len(STAGES), 3.5))
    for ax, name in zip(axes, STAGES):
        entry = {}
        if (run_dir / name / "done.json").exists():
            entry["summary"] = json.loads((run_dir / name / "done.json").read_text())
        if (run_dir / name / "checkpoint.pt").exists():
            state = torch.load(run_dir / name / "checkpoint.pt", map_location="cpu", weights_only=False)
            entry.update(steps=state["step"], minutes=state["elapsed"] / 60, history=state["history"],
                         rounds=state.get("round", {}).get("index", 0) + 1)
            if "model_config" in state:  # what was trained, which a resumed run keeps even if the default changed
                report.setdefault("models", {})[MODEL_OF_STAGE[name]] = state["model_config"]
            hist = state["history"]
            if hist:
                ax.plot([h["step"] for h in hist], [h["loss"] for h in hist])
                ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        report["stages"][name] = entry
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curves.png", dpi=100)
    plt.close(fig)
    if sample_steps and all((run_dir / n / "checkpoint.pt").exists() for n in STAGES):
        pipe, _ = assemble(run_dir)
        grid = sample_grid(pipe, SAMPLE_CAPTIONS, steps=sample_steps)
        Image.fromarray(grid).save(run_dir / "samples.png")
        report["sample_captions"] = list(SAMPLE_CAPTIONS)
    atomic_write_text(json.dumps(report, indent=1), run_dir / "report.json")
    return report


MODEL_CARD = """# toyworld: a miniature Stable Diffusion

Trained from scratch by `python -m disentkit.toyworld.train` on procedurally rendered toy scenes
(`disentkit.toyworld.scenes`): one object (circle, square, triangle, star, face) of a colour (red, green, blue,
yellow, purple, orange) and texture (plain, striped, dotted), faces with an expression (neutral, smiling,
frowning), on a background (day, night, snow, sunset), rendered as a photo or a sketch, 64x64 pixels.
Captions as in Wu et al. (CVPR 2023): "a photo of a circle" leaves attributes unsaid (random in the image);
"a photo of a circle, red, at night", "a photo of a face, smiling", "a sketch of a square" say them.

Load it like any Stable Diffusion:

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("{pipeline}", dtype=torch.float32)
image = pipe("a photo of a face, smiling", height=64, width=64, num_inference_steps=50).images[0]
```

Weights are stored in float16 and load as float32 (the configs say so), the right choice on a CPU.

## Parts
| part | model | parameters | training |
|---|---|---|---|
| text_encoder (+ `clip/`) | transformers CLIPModel, text and ViT vision towers | {clip_params} | {clip_train} |
| vae | diffusers AutoencoderKL, 64x64x3 <-> 16x16x4, scaling_factor {scaling} | {vae_params} | {vae_train} |
| unet | diffusers UNet2DConditionModel, eps prediction, cross-attention to CLIP text | {unet_params} | {unet_train} |
| scheduler | DDIM, SD v1 betas (scaled_linear 0.00085-0.012, 1000 steps) | | |

CLIP zero-shot accuracy per factor on held-out scenes: {zero_shot}

Training ran on CPU; details, loss histories and configs are in `report.json`, loss curves in `loss_curves.png`.
{samples}
{notes}
"""


def _stage_text(report, name) -> str:
    entry = report["stages"].get(name, {})
    if not entry.get("history"):
        return "not trained"
    last = entry["history"][-1]
    status = "finished" if "summary" in entry else "in progress when exported"
    rounds = entry.get("rounds", 1)
    rounds = f" in {rounds} rounds (--more)" if rounds > 1 else ""
    return f"{entry['steps']} steps{rounds}, {entry['minutes']:.0f} min, final loss {last['loss']:.4g} ({status})"


def _load_as_float32(config_path: Path) -> None:
    """transformers loads weights in the dtype a config names (diffusers loads float32 unless told otherwise).
    The weights are stored in float16 to stay small; naming float32 here makes a plain from_pretrained give a
    float32 model everywhere, so text encoder and UNet agree on CPU without a dtype argument."""
    config = json.loads(config_path.read_text())

    def fix(node):
        if isinstance(node, dict):
            for key in ("dtype", "torch_dtype"):
                if node.get(key) == "float16":
                    node[key] = "float32"
            for value in node.values():
                fix(value)

    fix(config)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


# What export writes into the weights folder. The folder is shared (the evaluator keeps its weights there too),
# so export replaces exactly these entries and leaves everything else alone.
EXPORTED_ENTRIES = ("pipeline", "clip", "README.md", "report.json", "loss_curves.png", "samples.png")


def _replace_entry(new: Path, target: Path) -> None:
    """Move `new` to `target` (file or folder) with renames only: an interruption leaves the old or the new."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def _restore(state: dict, rng: np.random.Generator, **parts) -> None:
    """Resume a stage from its checkpoint: each named part (model, optimizer, EMA...) and the random streams, so a
    resumed run continues exactly where the interrupted one stopped."""
    for key, part in parts.items():
        part.load_state_dict(state[key])
    rng.bit_generator.state = state["rng"]
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])


def _write_clip_preprocessor(folder: Path, size: int) -> None:
    """Our CLIP saw pixels in [-1, 1] (mean 0.5, std 0.5 per channel), not OpenAI CLIP's statistics. Saying so in a
    standard preprocessor_config.json makes every CLIP consumer (our losses, CLIPImageProcessor) feed it the same."""
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def export(run_dir: str | Path, weights_dir: str | Path, notes: str = "", sample_steps: int = 25) -> Path:
    """Write weights_dir/pipeline (StableDiffusionPipeline.save_pretrained, fp16 safetensors), weights_dir/clip
    (CLIPModel + tokenizer, fp16), and weights_dir/README.md (model card) plus the training report, loss curves and
    sample grid. Everything is written to a temporary folder first and then renamed into place entry by entry;
    other entries of weights_dir are kept. sample_steps=0 skips making a new sample grid."""
    run_dir, weights_dir = Path(run_dir), Path(weights_dir)
    report = write_report(run_dir, sample_steps=sample_steps)
    pipe, clip = assemble(run_dir, dtype=torch.float16)
    weights_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=weights_dir, prefix=".export-"))  # same filesystem, so renames are atomic
    try:
        pipe.save_pretrained(tmp / "pipeline", safe_serialization=True)
        clip.save_pretrained(tmp / "clip", safe_serialization=True)
        pipe.tokenizer.save_pretrained(tmp / "clip")
        # transformers 5 saves only tokenizer.json; older versions' CLIPTokenizer wants the classic two files.
        for name in ("vocab.json", "merges.txt"):
            for folder in (tmp / "pipeline" / "tokenizer", tmp / "clip"):
                shutil.copy(run_dir / "tokenizer" / name, folder / name)
        _write_clip_preprocessor(tmp / "clip", clip.config.vision_config.image_size)
        for config_path in (tmp / "pipeline" / "text_encoder" / "config.json", tmp / "clip" / "config.json"):
            _load_as_float32(config_path)
        for name in ("report.json", "loss_curves.png", "samples.png"):
            if (run_dir / name).exists():
                shutil.copy(run_dir / name, tmp / name)
        stages = report["stages"]
        zero_shot = (stages.get("clip_vision", {}).get("summary", {}).get("zero_shot")
                     or stages.get("clip", {}).get("summary", {}).get("zero_shot"))
        card = MODEL_CARD.format(
            pipeline=str(weights_dir / "pipeline"),
            clip_params=f"{count_parameters(clip) / 1e6:.2f}M",
            vae_params=f"{count_parameters(pipe.vae) / 1e6:.2f}M",
            unet_params=f"{count_parameters(pipe.unet) / 1e6:.2f}M",
            clip_train=_stage_text(report, "clip") + "; then the text tower alone (factor heads): "
            + _stage_text(report, "clip_text") + "; then the vision tower alone (text frozen; each image also scored "
            "against captions that differ from its own in one factor, NegCLIP-style hard negatives): "
            + _stage_text(report, "clip_vision"),
            vae_train=_stage_text(report, "vae"),
            unet_train=_stage_text(report, "unet"),
            scaling=f"{pipe.vae.config.scaling_factor:.4f}",
            zero_shot=json.dumps({k: round(v, 3) for k, v in zero_shot.items()}) if zero_shot else "not measured",
            samples=(
                "`samples.png` shows samples (25 DDIM steps, guidance 7.5), one row per caption: "
                + "; ".join(f'"{c}"' for c in SAMPLE_CAPTIONS) + "."
                if (run_dir / "samples.png").exists() else ""
            ),
            notes=notes,
        )
        (tmp / "README.md").write_text(card)
        for name in EXPORTED_ENTRIES:
            if (tmp / name).exists():
                _replace_entry(tmp / name, weights_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"exported {run_dir} -> {weights_dir}")
    return weights_dir


# --------------------------------------------------------------------------------------------------------------
# Entry point


def run_stage(name: str, cfg: TrainConfig, run_dir: Path, data: SceneData, tokenizer) -> None:
    if name in ("clip", "clip_vision"):
        train_clip(cfg, run_dir, data, tokenizer, name)
    elif name == "clip_text":
        train_clip_text(cfg, run_dir, tokenizer)
    elif name == "vae":
        train_vae(cfg, run_dir, data)
    else:
        train_unet(cfg, run_dir, data, tokenizer)


def _stage_process(name: str, cfg: TrainConfig) -> None:
    """Runs one stage in a child process, beside the parent's stage."""
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(run_dir / "tokenizer")
    run_stage(name, cfg, run_dir, prepare_data(run_dir, cfg.n_scenes, cfg.seed), tokenizer)


def train(cfg: TrainConfig, weights_dir: Path | None = None, only: list[str] | None = None) -> Path | None:
    """Run every unfinished stage, write the report and export. Returns the export folder.

    only: run just these stages, one after the other in training order, and do not export (so that two commands
    can train different stages of one run side by side; export afterwards with --export-only)."""
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(only or ()) - set(STAGES)) + sorted(set(cfg.more) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {', '.join(STAGES)}")
    atomic_write_text(json.dumps(config_dict_nested(cfg), indent=1),
                      run_dir / ("config.json" if only is None else f"config.{'+'.join(only)}.json"))
    tokenizer = build_tokenizer(run_dir / "tokenizer")
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH
    data = prepare_data(run_dir, cfg.n_scenes, cfg.seed)
    if only is not None:
        for name in (n for n in STAGES if n in only):
            run_stage(name, cfg, run_dir, data, tokenizer)
        log(f"trained {', '.join(only)}; export with --export-only when every stage is where you want it")
        return None
    # Phase 1: clip || vae. Phase 2: unet || clip_vision. The second stage of a phase runs in a child process.
    for main_stage, side_stage in (("clip", "vae"), ("clip_text", None), ("unet", "clip_vision")):
        child = None
        if side_stage and not cfg.sequential:
            import multiprocessing

            child = multiprocessing.get_context("spawn").Process(
                target=_stage_process, args=(side_stage, cfg), daemon=True)
            child.start()
        run_stage(main_stage, cfg, run_dir, data, tokenizer)
        if child is None:
            if side_stage:
                run_stage(side_stage, cfg, run_dir, data, tokenizer)
        else:
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"stage {side_stage} failed (exit code {child.exitcode}); see the log above")
    return export(run_dir, weights_dir or run_dir / "export", sample_steps=cfg.sample_steps)


def config_dict_nested(cfg: TrainConfig) -> dict:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(cfg), default=list))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="run folder (checkpoints, data, report); reused to resume")
    parser.add_argument("--weights", default=None, help="export folder (default: <out>/export)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of every stage, tiny data")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--sequential", action="store_true", help="train clip and vae one after the other")
    parser.add_argument("--minutes-per-stage", nargs="+", default=[], metavar="STAGE=MIN",
                        help="time budgets, e.g. clip=18 vae=18 unet=52")
    parser.add_argument("--steps-per-stage", nargs="+", default=[], metavar="STAGE=N", help="step limits")
    parser.add_argument("--more", nargs="+", default=[], metavar="STAGE=MIN",
                        help="train finished stages for MIN more minutes (a new learning-rate round), e.g. unet=60")
    parser.add_argument("--only", nargs="+", default=None, metavar="STAGE", choices=STAGES,
                        help="run only these stages and skip the export (to train stages side by side)")
    parser.add_argument("--export-only", action="store_true", help="export the run's latest weights and stop")
    parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the exported sample grid (0: none)")
    parser.add_argument("--notes", type=Path, default=None, help="a markdown file appended to the exported model card")
    args = parser.parse_args(argv)

    if args.export_only:
        notes = args.notes.read_text() if args.notes else ""
        export(args.out, args.weights or Path(args.out) / "export", notes=notes, sample_steps=args.sample_steps)
        return
    make = TrainConfig.smoke if args.smoke else TrainConfig
    cfg = make(out=args.out, device=args.device, threads=args.threads)
    cfg.sequential = cfg.sequential or args.sequential
    for item in args.minutes_per_stage:
        name, value = item.split("=")
        setattr(cfg, name, replace(getattr(cfg, name), minutes=float(value)))
    for item in args.steps_per_stage:
        name, value = item.split("=")
        setattr(cfg, name, replace(getattr(cfg, name), max_steps=int(value)))
    for item in args.more:
        name, value = item.split("=")
        cfg.more[name] = float(value)
    train(cfg, Path(args.weights) if args.weights else None, only=args.only)


if __name__ == "__main__":
    main()
