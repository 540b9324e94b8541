"""Stable Diffusion pipelines built locally from configs, with random weights.

Nothing here downloads anything. Two kinds of builders:

- :func:`tiny_pipeline` makes a miniature SD 1.x / SD 2.x / SDXL pipeline (1.5-2.1M parameters, 32x32 px
  images) whose weights are fixed by a seed. The tests use it as a stand-in for real Stable Diffusion:
  it has the same classes, the same code paths in diffusers (classifier-free guidance, v-prediction, SDXL's
  pooled embeddings and time ids) and runs a 4-step sample in a fraction of a second on a CPU.
- :func:`sd_architecture` makes the *published* architectures of SD v1.4, SD 2.1 and SDXL base, at full size, with
  random weights, for memory and speed benchmarks on a GPU. Their images are noise; their cost is real.

Both use :func:`build_tokenizer`, a character-level CLIP tokenizer (every character is a token), because the real
BPE vocabulary of CLIP cannot be downloaded here. Prompt lengths in tokens are therefore longer than with the real
tokenizer (one token per character), which does not matter for what these pipelines are for.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .pipeline import freeze

Kind = Literal["sd1", "sd2", "sdxl"]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408  # CLIP's BPE vocabulary; kept by the full-size architectures so embedding sizes are real

# The DDIM configuration Stable Diffusion ships with (v1.x, 2.x and XL agree on these values).
# `steps_offset=1` and `set_alpha_to_one=False` are what make diffusers' DDIM match the original CompVis sampler.
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
)


def build_tokenizer(folder: str | Path, model_max_length: int = 77, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """Write a character-level CLIP vocabulary into ``folder`` and load a :class:`CLIPTokenizer` from it.

    The vocabulary holds every visible ASCII character twice, bare (inside a word) and with CLIP's
    end-of-word suffix ``</w>`` (last character of a word), then ``<|startoftext|>`` and ``<|endoftext|>`` as the
    last two ids, as in CLIP. ``merges.txt`` has no merges, so byte-pair encoding never joins characters and
    every character is one token. CLIP's tokenizer lowercases its input, so upper-case ids are never produced; a
    character outside ASCII becomes the unknown token (``<|endoftext|>``, as in CLIP).

    ``model_max_length`` must not exceed the text encoder's ``max_position_embeddings``; SD pads and truncates every
    prompt to exactly this many tokens. ``pad_token`` is ``<|endoftext|>`` for SD 1.x and ``"!"`` for the OpenCLIP
    encoders of SD 2.x and SDXL's second tokenizer.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Space (32) is left out: CLIP's pre-tokenizer splits words on whitespace, so a space is never inside a token.
    chars = [chr(code) for code in range(33, 127)]
    tokens = chars + [c + "</w>" for c in chars] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # The first line of a CLIP merges file is a version header that the loader skips.
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length, pad_token=pad_token)


def _text_encoder_config(tokenizer: CLIPTokenizer, vocab_size: int | None = None, **sizes) -> CLIPTextConfig:
    """A CLIP text config whose special ids and sequence length agree with ``tokenizer``.

    ``vocab_size`` defaults to the tokenizer's; the published architectures keep CLIP's 49408 (only the first ids are
    ever used by the character-level tokenizer). ``eos_token_id`` matters: CLIP's pooled output is the hidden state at
    the first end-of-text token, found by this id (SDXL uses that pooled output).
    """
    return CLIPTextConfig(
        vocab_size=vocab_size or len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )


def _tokenizers(kind: str, model_max_length: int = 77) -> tuple[CLIPTokenizer, CLIPTokenizer | None]:
    """The tokenizer(s) of a pipeline kind: OpenCLIP-style encoders pad with ``"!"``, OpenAI CLIP with eos.

    The files go to a temporary folder: once loaded, the tokenizer keeps its vocabulary in memory, and
    ``save_pretrained`` of the pipeline writes it out again.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "sd1":
            return build_tokenizer(Path(tmp) / "a", model_max_length), None
        if kind == "sd2":
            return build_tokenizer(Path(tmp) / "a", model_max_length, pad_token="!"), None
        if kind == "sdxl":
            return (
                build_tokenizer(Path(tmp) / "a", model_max_length),
                build_tokenizer(Path(tmp) / "b", model_max_length, pad_token="!"),
            )
    raise ValueError(f"unknown pipeline kind {kind!r}; use 'sd1', 'sd2' or 'sdxl'")


def _assemble(
    kind: str,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    tokenizer_2: CLIPTokenizer | None = None,
    text_encoder_2: CLIPTextModelWithProjection | None = None,
) -> DiffusionPipeline:
    """Put the parts together with SD's DDIM scheduler (v-prediction for SD 2.x) and no safety checker."""
    prediction_type = "v_prediction" if kind == "sd2" else "epsilon"
    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG, prediction_type=prediction_type)
    if kind == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            # SDXL base ships with this on: an absent negative prompt is an all-zero embedding, not "".
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return freeze(pipe)  # eval mode, no gradients: these pipelines are only ever run, never trained


# ----------------------------------------------------------------------------------------------------------------
# Tiny pipelines


def _seeded(seed: int, build):
    """Call ``build()`` with torch's global RNG seeded, without disturbing the caller's RNG stream.

    Each part gets its own seed so that changing one part's config does not change the others' weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _tiny_vae() -> AutoencoderKL:
    # Two blocks = one 2x downsampling, so a 16x16 latent decodes to a 32x32 image.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )


def _tiny_unet(kind: str, cross_attention_dim: int, pooled_dim: int | None = None) -> UNet2DConditionModel:
    common = dict(
        sample_size=16,  # latent side; 32 px images with the tiny VAE
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim=cross_attention_dim,
    )
    if kind == "sd1":
        # As in SD 1.x: attention in the high-resolution blocks, `attention_head_dim` (really a head count) an int,
        # conv projections in the transformer blocks.
        return UNet2DConditionModel(
            **common,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=4,
        )
    if kind == "sd2":
        # As in SD 2.x: per-block head counts and linear projections in and out of the transformer blocks.
        return UNet2DConditionModel(
            **common,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
        )
    # SDXL: no attention at the highest resolution, deeper transformers lower down, and an extra embedding of the
    # pooled text embedding plus six "time ids" (original size, crop corner, target size) added to the time embedding.
    time_embed_dim = 8
    return UNet2DConditionModel(
        **common,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + pooled_dim,
    )


def tiny_pipeline(kind: Kind = "sd1", seed: int = 0) -> DiffusionPipeline:
    """A miniature SD pipeline with random weights fixed by ``seed``, on the CPU in float32.

    - ``"sd1"``: :class:`StableDiffusionPipeline`, epsilon prediction, OpenAI-CLIP-like text encoder (quick GELU).
    - ``"sd2"``: :class:`StableDiffusionPipeline`, v-prediction, OpenCLIP-like text encoder (GELU, pads with "!"),
      linear transformer projections in the UNet.
    - ``"sdxl"``: :class:`StableDiffusionXLPipeline` with two text encoders (the second with a projection whose
      output is the pooled embedding), ``addition_embed_type="text_time"``, zeros for an empty negative prompt.

    All three: 4 latent channels, 16x16 latents, 32x32 px images, 77-token prompts, a DDIM scheduler with SD's
    config, no safety checker, every module in eval mode with ``requires_grad_(False)``. The global torch RNG is
    left as it was.
    """
    if kind not in ("sd1", "sd2", "sdxl"):
        raise ValueError(f"unknown pipeline kind {kind!r}; use 'sd1', 'sd2' or 'sdxl'")
    tokenizer, tokenizer_2 = _tokenizers(kind)
    text_sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if kind == "sd1":
        te_config = _text_encoder_config(tokenizer, **text_sizes, hidden_act="quick_gelu", projection_dim=32)
    else:
        te_config = _text_encoder_config(tokenizer, **text_sizes, hidden_act="gelu", projection_dim=32)
    text_encoder = _seeded(seed + 1, lambda: CLIPTextModel(te_config))
    vae = _seeded(seed + 2, _tiny_vae)

    if kind != "sdxl":
        unet = _seeded(seed, lambda: _tiny_unet(kind, cross_attention_dim=te_config.hidden_size))
        return _assemble(kind, unet, vae, tokenizer, text_encoder)

    # SDXL concatenates the penultimate hidden states of both encoders (32 + 48 = 80 wide) and takes the pooled
    # (projected, 32 wide) output of the second. The two widths differ on purpose, so a mix-up shows as a shape error.
    te2_config = _text_encoder_config(
        tokenizer_2,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_act="gelu",
        projection_dim=32,
    )
    text_encoder_2 = _seeded(seed + 3, lambda: CLIPTextModelWithProjection(te2_config))
    unet = _seeded(
        seed,
        lambda: _tiny_unet(
            kind,
            cross_attention_dim=te_config.hidden_size + te2_config.hidden_size,
            pooled_dim=te2_config.projection_dim,
        ),
    )
    return _assemble(kind, unet, vae, tokenizer, text_encoder, tokenizer_2, text_encoder_2)


def save_tiny_pipeline(kind: Kind, folder: str | Path, seed: int = 0) -> Path:
    """Save :func:`tiny_pipeline` with ``save_pretrained`` (safetensors) into ``folder``; return the folder."""
    folder = Path(folder)
    tiny_pipeline(kind, seed=seed).save_pretrained(folder, safe_serialization=True)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Published architectures at full size, random weights


def _sd_vae(sample_size: int, scaling_factor: float) -> AutoencoderKL:
    """The VAE shared by SD 1.x, 2.x and SDXL (8x downsampling, 4 latent channels, 83.7M parameters)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        act_fn="silu",
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


def _clip_vit_l(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """OpenAI CLIP ViT-L/14's text tower (SD 1.x, and SDXL's first encoder): 123M parameters."""
    return _text_encoder_config(
        tokenizer,
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        hidden_act="quick_gelu",
        projection_dim=768,
    )


def _sd_parts(kind: str):
    """Build the modules of a published architecture. Called under a device context; weights are random."""
    tokenizer, tokenizer_2 = _tokenizers(kind)
    if kind == "sd1":
        # CompVis/stable-diffusion-v1-4: 859.5M UNet parameters.
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        text_encoder = CLIPTextModel(_clip_vit_l(tokenizer))
        return kind, unet, _sd_vae(512, 0.18215), tokenizer, text_encoder
    if kind == "sd2":
        # stabilityai/stable-diffusion-2-1 (768 px, v-prediction): 865.9M UNet parameters; OpenCLIP ViT-H/14 text
        # tower with its last layer removed (23 of 24 layers), as SD 2 uses the penultimate layer.
        unet = UNet2DConditionModel(
            sample_size=96,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
            upcast_attention=True,
            norm_num_groups=32,
        )
        text_encoder = CLIPTextModel(
            _text_encoder_config(
                tokenizer,
                vocab_size=CLIP_VOCAB_SIZE,
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=23,
                num_attention_heads=16,
                hidden_act="gelu",
                projection_dim=512,
            )
        )
        return kind, unet, _sd_vae(768, 0.18215), tokenizer, text_encoder
    # stabilityai/stable-diffusion-xl-base-1.0: 2567.5M UNet parameters; ViT-L plus OpenCLIP ViT-bigG/14 (32 layers,
    # 1280 wide, projection 1280 = the pooled embedding). 2816 = 6 time ids x 256 + 1280 pooled.
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(_clip_vit_l(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_encoder_config(
            tokenizer_2,
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            hidden_act="gelu",
            projection_dim=1280,
        )
    )
    return kind, unet, _sd_vae(1024, 0.13025), tokenizer, text_encoder, tokenizer_2, text_encoder_2


def sd_architecture(
    kind: Literal["sd1", "sd2", "sdxl"] = "sd1",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> DiffusionPipeline:
    """A full-size SD v1.4 (``"sd1"``), SD 2.1 (``"sd2"``) or SDXL base (``"sdxl"``) pipeline with random weights.

    For benchmarks of memory and time: the module shapes are those of the published checkpoints (written from their
    configs), the weights are random, so images are meaningless. Modules are created directly on ``device`` (fast on a
    GPU, no CPU round trip), then cast to ``dtype``. ``device="meta"`` builds shapes without memory, e.g. to count
    parameters. The tokenizer is the character-level one of :func:`build_tokenizer`.

    Sizes: SD v1.4 is ~1.07B parameters (UNet 860M, VAE 84M, text 123M); SD 2.1 ~1.29B (text 341M); SDXL base
    ~3.47B (UNet 2.57B, text 123M + 695M, VAE 84M). Building SDXL in float32 needs ~14 GB on the device before the cast.
    """
    if kind not in ("sd1", "sd2", "sdxl"):
        raise ValueError(f"unknown architecture {kind!r}; use 'sd1', 'sd2' or 'sdxl'")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with device:
            parts = _sd_parts(kind)
    pipe = _assemble(*parts)
    if device.type != "meta":
        pipe.to(dtype=dtype)
    return pipe
