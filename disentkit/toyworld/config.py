"""What a toy training run trains, and how long: one config per stage and one for the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field

from .models import ToyCLIPConfig, ToyUNetConfig, ToyVAEConfig

STAGES = ("clip", "vae", "clip_text", "unet", "clip_vision")
MODEL_OF_STAGE = {"clip": "clip_model", "clip_text": "clip_model", "clip_vision": "clip_model", "vae": "vae_model",
                  "unet": "unet_model"}  # fmt: skip


@dataclass
class StageConfig:
    """One stage's budget and optimiser settings."""

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
    """A whole run from scratch: where it lives, the data, every stage's budget, the objective's knobs and the
    three models' architectures."""

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
    # Offset noise (Guttenberg 2023): each latent channel's noise gets a constant N(0, offset_noise^2) added. A 16x16
    # latent's mean is decided very early (its noise averages out over 256 pixels), and with it the background, before
    # the object's place is; more noise on the mean moves that decision later. 0 (off) for every bundle so far.
    offset_noise: float = 0.0
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

