"""Stable Diffusion pipelines built locally from configs, with random weights.

Nothing here downloads anything. Two kinds of builders:

- :func:`tiny_pipeline` makes a miniature SD 1.x / SD 2.x / SDXL pipeline (1.5-2.1M parameters, 32x32 px
  images) whose weights are fixed by a seed. The tests use it as a stand-in for real Stable Diffusion:
  it has the same classes, the same code paths in diffusers (classifier-free guidance, v-prediction, SDXL's
  pooled embeddings and time ids) and runs a 4-step sample in a fraction of a second on a CPU.
- :func:`save_hub_layout` writes a miniature pipeline (or CLIP) into a folder laid out like its Hugging Face hub
  repository: SD v1.4 with its safety checker, feature extractor and PNDM scheduler config, SD 2.1 with
  v-prediction, SDXL base with two encoders, an Euler config and a force-upcast VAE, or
  ``openai/clip-vit-base-patch32``.
  Its VAE downsamples 8x as the real one does, so sizes round as they do on real models.
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
from typing import TYPE_CHECKING, Literal

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from .pipeline import freeze, quiet_loading
from .errors import OptionError

with quiet_loading():  # diffusers' SD pipelines import transformers' image processors, which announce their backend
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

if TYPE_CHECKING:
    from transformers import CLIPImageProcessor

Kind = Literal["sd1", "sd2", "sdxl"]
HubKind = Literal["sd1", "sd2", "sdxl", "clip"]

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
    _write_char_vocabulary(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length, pad_token=pad_token)


def _write_char_vocabulary(folder: Path) -> None:
    """``vocab.json`` and ``merges.txt`` of the character-level vocabulary (see :func:`build_tokenizer`)."""
    folder.mkdir(parents=True, exist_ok=True)
    # Space (32) is left out: CLIP's pre-tokenizer splits words on whitespace, so a space is never inside a token.
    chars = [chr(code) for code in range(33, 127)]
    tokens = chars + [c + "</w>" for c in chars] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # The first line of a CLIP merges file is a version header that the loader skips.
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


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
    raise OptionError(f"unknown pipeline kind {kind!r}; use 'sd1', 'sd2' or 'sdxl'")


def _assemble(
    kind: str,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    tokenizer_2: CLIPTokenizer | None = None,
    text_encoder_2: CLIPTextModelWithProjection | None = None,
    *,
    scheduler=None,
    safety_checker=None,
    feature_extractor: CLIPImageProcessor | None = None,
) -> DiffusionPipeline:
    """Put the parts together; by default with SD's DDIM scheduler (v-prediction for SD 2.x) and no safety checker."""
    prediction_type = "v_prediction" if kind == "sd2" else "epsilon"
    scheduler = scheduler or DDIMScheduler(**SD_SCHEDULER_CONFIG, prediction_type=prediction_type)
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
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            requires_safety_checker=safety_checker is not None,
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


def _tiny_vae(
    block_out_channels: tuple[int, ...] = (32, 64), sample_size: int = 32, scaling_factor: float = 0.18215
) -> AutoencoderKL:
    # n blocks = n - 1 2x downsamplings: two blocks decode a 16x16 latent to 32x32 px; four blocks are SD's 8x.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


def _tiny_unet(
    kind: str, cross_attention_dim: int, pooled_dim: int | None = None, sample_size: int = 16
) -> UNet2DConditionModel:
    common = dict(
        sample_size=sample_size,  # latent side; 16: 32 px images with the two-block tiny VAE
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
    return _assemble(*_tiny_parts(kind, seed))


def _tiny_parts(kind: str, seed: int, vae=_tiny_vae, latent_size: int = 16) -> tuple:
    """The modules of :func:`tiny_pipeline` (``vae`` builds the VAE; ``latent_size`` is the UNet's default side)."""
    if kind not in ("sd1", "sd2", "sdxl"):
        raise OptionError(f"unknown pipeline kind {kind!r}; use 'sd1', 'sd2' or 'sdxl'")
    tokenizer, tokenizer_2 = _tokenizers(kind)
    text_sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if kind == "sd1":
        te_config = _text_encoder_config(tokenizer, **text_sizes, hidden_act="quick_gelu", projection_dim=32)
    else:
        te_config = _text_encoder_config(tokenizer, **text_sizes, hidden_act="gelu", projection_dim=32)
    text_encoder = _seeded(seed + 1, lambda: CLIPTextModel(te_config))
    vae = _seeded(seed + 2, vae)

    if kind != "sdxl":
        unet = _seeded(seed, lambda: _tiny_unet(kind, te_config.hidden_size, sample_size=latent_size))
        return kind, unet, vae, tokenizer, text_encoder

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
            sample_size=latent_size,
        ),
    )
    return kind, unet, vae, tokenizer, text_encoder, tokenizer_2, text_encoder_2


def save_tiny_pipeline(kind: Kind, folder: str | Path, seed: int = 0) -> Path:
    """Save :func:`tiny_pipeline` with ``save_pretrained`` (safetensors) into ``folder``; return the folder."""
    folder = Path(folder)
    tiny_pipeline(kind, seed=seed).save_pretrained(folder, safe_serialization=True)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Miniature pipelines in the layout of their hub repositories

# The scheduler configs as the hub repositories ship them, stale keys included: SD v1.4 ships PNDM, SD 2.1 a DDIM
# config that still carries PNDM's `skip_prk_steps`, SDXL base an Euler config that carries it too. diffusers logs a
# warning whenever such a config is turned into another scheduler (which is what disentkit's samplers do).
HUB_SCHEDULER_CONFIGS = {
    "sd1": {
        "_class_name": "PNDMScheduler", "_diffusers_version": "0.7.0.dev0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False,
    },
    "sd2": {
        "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
        "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "trained_betas": None,
    },
    "sdxl": {
        "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
        "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
    },
}  # fmt: skip

# Default image side in pixels: the published 512 / 768 / 1024 divided by 8, so that defaults differ by model as they
# do on the hub, and a 64x96 portrait is a non-default size on every kind.
HUB_DEFAULT_SIDE = {"sd1": 64, "sd2": 96, "sdxl": 128}
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
# The repositories' preprocessing file predates transformers' image processor classes: a "feature extractor" of 224 px.
HUB_PREPROCESSOR = {
    "crop_size": 224, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_IMAGE_MEAN, "image_std": CLIP_IMAGE_STD,
    "resample": 3, "size": 224,
}  # fmt: skip


def _hub_vae(kind: str) -> AutoencoderKL:
    # Four blocks, three 2x downsamplings: SD's factor of 8, with 32-64 channels instead of 128-512. SDXL's VAE has
    # its own scaling factor; `force_upcast` (diffusers' default, as in every SD VAE config) is written out.
    return _tiny_vae((32, 32, 64, 64), HUB_DEFAULT_SIDE[kind], 0.13025 if kind == "sdxl" else 0.18215)


def _clip_image_processor() -> CLIPImageProcessor:
    """The 224 px preprocessing of every OpenAI CLIP (and of SD's feature extractor)."""
    with quiet_loading():  # imported here: without torchvision, transformers announces its PIL fallback on import
        from transformers import CLIPImageProcessor
    return CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
        do_normalize=True, do_resize=True, do_convert_rgb=True, image_mean=CLIP_IMAGE_MEAN,
        image_std=CLIP_IMAGE_STD, resample=3,
    )  # fmt: skip


def _tiny_clip_config(tokenizer: CLIPTokenizer, projection_dim: int = 16) -> CLIPConfig:
    """A two-layer CLIP whose vision tower reads 224 px images in 32 px patches, as ViT-B/32 does (49 patches)."""
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    text = _text_encoder_config(tokenizer, **sizes, hidden_act="quick_gelu")
    return CLIPConfig(
        text_config=text.to_dict(),
        vision_config=dict(image_size=224, patch_size=32, hidden_act="quick_gelu", **sizes),
        projection_dim=projection_dim,
    )


def tiny_safety_checker(seed: int = 0, threshold: float = 1.0):
    """A random-weight :class:`StableDiffusionSafetyChecker` (224 px CLIP vision tower, 17 + 3 concept embeddings).

    Each concept fires when the cosine of the image embedding with its embedding exceeds ``threshold`` (SD's own
    thresholds are about 0.2). The default, 1, flags nothing, so that images made on such a folder can be looked at;
    -1 flags every image. With random weights the cosines of all images lie close together (about 0.45 for seed 0),
    so a threshold among them flags some images and not others. Change it on a loaded pipeline with
    ``pipe.safety_checker.concept_embeds_weights.fill_(t)``.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp)
    config = _tiny_clip_config(tokenizer)

    def build():
        checker = StableDiffusionSafetyChecker(config)
        with torch.no_grad():
            checker.concept_embeds.copy_(torch.randn_like(checker.concept_embeds))
            checker.special_care_embeds.copy_(torch.randn_like(checker.special_care_embeds))
            checker.concept_embeds_weights.fill_(threshold)
            # SD's special-care concepts only lower the other thresholds; kept out of reach so `threshold` decides.
            checker.special_care_embeds_weights.fill_(2.0)
        return checker.eval().requires_grad_(False)

    return _seeded(seed + 4, build)


def _write_legacy_tokenizer(folder: Path, tokenizer: CLIPTokenizer, source: str, clean_up: bool = False) -> None:
    """Rewrite a saved tokenizer's files as the SD and CLIP hub repositories ship them (written by transformers 4.2x):
    ``special_tokens_map.json``, no ``tokenizer.json``, and a ``tokenizer_config.json`` whose special tokens are
    ``AddedToken`` dicts next to the long-gone ``errors``, ``add_prefix_space`` and ``special_tokens_map_file`` keys,
    and ``vocab.json`` plus ``merges.txt`` for the slow tokenizer."""
    (folder / "tokenizer.json").unlink(missing_ok=True)
    _write_char_vocabulary(folder)

    def added(token: str) -> dict:
        return {"__type": "AddedToken", "content": token, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}  # fmt: skip

    config = {
        "add_prefix_space": False, "bos_token": added(BOS_TOKEN), "do_lower_case": True, "eos_token": added(EOS_TOKEN),
        "errors": "replace", "model_max_length": tokenizer.model_max_length, "name_or_path": source,
        "pad_token": tokenizer.pad_token if tokenizer.pad_token != EOS_TOKEN else added(EOS_TOKEN),
        "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
        "unk_token": added(EOS_TOKEN),
    }  # fmt: skip
    if clean_up:  # SDXL base's files were written by a transformers that added this key
        config["clean_up_tokenization_spaces"] = True
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": tokenizer.pad_token, "unk_token": EOS_TOKEN}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")


def hub_pipeline(kind: Kind = "sd1", seed: int = 0, safety_checker: bool = True) -> DiffusionPipeline:
    """The pipeline :func:`save_hub_layout` writes, in memory (random weights fixed by ``seed``, CPU, float32).

    Like :func:`tiny_pipeline` but with an 8x VAE (four blocks) and the default sizes of :data:`HUB_DEFAULT_SIDE`
    (64, 96 and 128 px), the hub's scheduler configs, and for ``"sd1"`` a safety checker (unless
    ``safety_checker=False``) and its feature extractor.
    """
    if kind not in HUB_SCHEDULER_CONFIGS:
        raise OptionError(f"unknown pipeline kind {kind!r}; use 'sd1', 'sd2', 'sdxl' (or 'clip' for save_hub_layout)")
    parts = _tiny_parts(kind, seed, vae=lambda: _hub_vae(kind), latent_size=HUB_DEFAULT_SIDE[kind] // 8)
    config = dict(HUB_SCHEDULER_CONFIGS[kind])
    scheduler = getattr(diffusers, config.pop("_class_name")).from_config(config)  # as from_pretrained builds it
    checker = tiny_safety_checker(seed) if kind == "sd1" and safety_checker else None
    extractor = _clip_image_processor() if kind in ("sd1", "sd2") else None  # SD 2.1 ships one, without a checker
    return _assemble(*parts, scheduler=scheduler, safety_checker=checker, feature_extractor=extractor)


def save_hub_layout(kind: HubKind, folder: str | Path, *, seed: int = 0, safety_checker: bool = True) -> Path:
    """Write a random-weight miniature model into ``folder``, laid out like its Hugging Face hub repository.

    ``kind``:

    - ``"sd1"``: like ``CompVis/stable-diffusion-v1-4``: ``StableDiffusionPipeline`` with ``safety_checker/``
      (a random :func:`tiny_safety_checker`; ``safety_checker=False`` leaves it out) and ``feature_extractor/``,
      ``requires_safety_checker: true``, a PNDM scheduler config; 64 px default images.
    - ``"sd2"``: like ``stabilityai/stable-diffusion-2-1``: v-prediction DDIM config, an OpenCLIP-style text
      encoder padding with "!", a feature extractor but no safety checker; 96 px default images.
    - ``"sdxl"``: like ``stabilityai/stable-diffusion-xl-base-1.0``: two text encoders, an Euler config, a VAE with
      ``force_upcast`` and scaling factor 0.13025, ``force_zeros_for_empty_prompt``; 128 px default images.
    - ``"clip"``: like ``openai/clip-vit-base-patch32``: a ``CLIPModel`` (224 px images, 32 px patches),
      ``preprocessor_config.json`` and the tokenizer files.

    Every VAE downsamples 8x, so any multiple of 8 px is a valid size (e.g. 64x96, a non-default size on all
    three pipelines). Tokenizers are written in the hub's legacy format (see :func:`build_tokenizer` for their
    character-level vocabulary). Weights are safetensors. Nothing is downloaded. Returns ``folder``.
    """
    folder = Path(folder)
    if kind == "clip":
        return _save_hub_clip(folder, seed)
    pipe = hub_pipeline(kind, seed, safety_checker)
    with quiet_loading():  # no "Writing model shards" bar per component
        pipe.save_pretrained(folder, safe_serialization=True)
    # The hub's scheduler config, verbatim (save_pretrained would write every key of this diffusers version).
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(HUB_SCHEDULER_CONFIGS[kind], indent=2))
    for name in ("tokenizer", "tokenizer_2"):
        if (folder / name).is_dir():
            _write_legacy_tokenizer(folder / name, getattr(pipe, name), "openai/clip-vit-large-patch14", kind == "sdxl")
    index = json.loads((folder / "model_index.json").read_text())
    index.pop("image_encoder", None)  # not in the repositories, which predate IP-adapters
    if (folder / "feature_extractor").is_dir():
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(HUB_PREPROCESSOR, indent=2))
    if kind == "sdxl":
        index["add_watermarker"] = None
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def _save_hub_clip(folder: Path, seed: int) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp)
    config = _tiny_clip_config(tokenizer, projection_dim=16)
    model = _seeded(seed, lambda: CLIPModel(config))
    with quiet_loading():
        model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _write_legacy_tokenizer(folder, tokenizer, "openai/clip-vit-base-patch32")
    (folder / "preprocessor_config.json").write_text(json.dumps(HUB_PREPROCESSOR, indent=2))
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
        raise OptionError(f"unknown architecture {kind!r}; use 'sd1', 'sd2' or 'sdxl'")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with device:
            parts = _sd_parts(kind)
    pipe = _assemble(*parts)
    if device.type != "meta":
        pipe.to(dtype=dtype)
    return pipe
