"""The three trained parts of the toy Stable Diffusion, each a config dataclass that builds a stock
transformers/diffusers model (so the toy pipeline loads and runs exactly like the real one).

    CLIP  (ToyCLIPConfig)  text + vision towers trained contrastively on (render, caption); its text tower is the
                           pipeline's text_encoder, as SD uses OpenAI CLIP's.
    VAE   (ToyVAEConfig)   64x64x3 image <-> 16x16x4 latent (downsampling 4; SD uses 8 on 512x512).
    UNet  (ToyUNetConfig)  eps-prediction on 16x16x4 latents, cross-attention to the text tower's hidden states.

Sizes are picked so that all three train in about an hour and a half on two CPU cores and one 50-step sample with
classifier-free guidance takes well under a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig

from .tokenizer import MODEL_MAX_LENGTH

IMAGE_SIZE = 64
LATENT_SIZE = 16  # IMAGE_SIZE / VAE downsampling
LATENT_CHANNELS = 4


# --------------------------------------------------------------------------------------------------------------
# CLIP


@dataclass
class ToyCLIPConfig:
    vocab_size: int = 624  # the toy tokenizer's size (tokenizer.build_tokenizer); checked when training starts
    text_width: int = 128  # = the UNet's cross_attention_dim
    text_layers: int = 3
    text_heads: int = 4
    vision_width: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    patch_size: int = 8  # 64x64 image -> 8x8 = 64 patches + CLS
    projection_dim: int = 128
    max_tokens: int = MODEL_MAX_LENGTH
    bos_token_id: int = 622
    eos_token_id: int = 623  # pooling takes the hidden state at the first EOS; must not be 2 (legacy argmax path)
    pad_token_id: int = 623

    def text_config(self) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.text_width,
            intermediate_size=4 * self.text_width,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            max_position_embeddings=self.max_tokens,
            projection_dim=self.projection_dim,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            hidden_act="gelu",
        )

    def vision_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.vision_width,
            intermediate_size=4 * self.vision_width,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads,
            image_size=IMAGE_SIZE,
            patch_size=self.patch_size,
            projection_dim=self.projection_dim,
            hidden_act="gelu",
        )

    def build(self) -> CLIPModel:
        config = CLIPConfig(
            text_config=self.text_config().to_dict(),
            vision_config=self.vision_config().to_dict(),
            projection_dim=self.projection_dim,
        )
        return CLIPModel(config)


def text_encoder_from_clip(clip: CLIPModel) -> CLIPTextModel:
    """The pipeline's text_encoder: a CLIPTextModel holding the trained CLIP's text tower weights."""
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict(), strict=True)
    return text_encoder


def _features(output) -> torch.Tensor:
    # transformers < 5 returns the projected features as a tensor, >= 5 as the pooler_output of a model output.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def clip_image_embeddings(clip: CLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """(N, 3, 64, 64) in [-1, 1] -> (N, projection_dim) unit-norm image embeddings."""
    return torch.nn.functional.normalize(_features(clip.get_image_features(pixel_values=pixel_values)), dim=-1)


def clip_text_embeddings(clip: CLIPModel, input_ids: torch.Tensor) -> torch.Tensor:
    """(N, T) token ids -> (N, projection_dim) unit-norm text embeddings."""
    return torch.nn.functional.normalize(_features(clip.get_text_features(input_ids=input_ids)), dim=-1)


# Images enter CLIP as [-1, 1] tensors, like the VAE; CLIP's own normalisation constants are irrelevant here
# because the vision tower is trained from scratch on these inputs. The evaluator and losses must feed the same.
def images_to_tensor(images_uint8) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> (N, 3, H, W) float32 in [-1, 1]."""
    x = np.array(images_uint8, dtype=np.uint8)  # a writable copy: inputs may be read-only memory maps
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


# --------------------------------------------------------------------------------------------------------------
# VAE


@dataclass
class ToyVAEConfig:
    # 3 blocks -> 2 downsamplings -> 64x64 to 16x16. Narrow at full resolution: that is where a VAE spends its
    # compute, and flat-coloured toy scenes need few channels there.
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    latent_channels: int = LATENT_CHANNELS
    norm_num_groups: int = 8
    kl_weight: float = 1e-6  # SD's VAE uses a tiny KL term too: latents stay informative, scale fixed afterwards

    def build(self, scaling_factor: float = 1.0) -> AutoencoderKL:
        n = len(self.block_out_channels)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=IMAGE_SIZE,
            scaling_factor=scaling_factor,
            mid_block_add_attention=False,  # at 16x16 convolutions see enough; attention would only cost time
        )


# --------------------------------------------------------------------------------------------------------------
# UNet and scheduler


@dataclass
class ToyUNetConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 96)  # 16x16 -> 8x8 -> 4x4
    # Cross-attention only at 4x4 (and in the mid block). On a CPU the attention blocks cost more than their
    # arithmetic (many small ops): the previous bundle's UNet (attention at 8x8 too, 128 channels at 4x4) took
    # 1.18 s per 50-step image on one core, this one 0.78-0.82 s; what the text says reaches the finer levels
    # through the 4x4 features the decoder path upsamples.
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    cross_attention_dim: int = 128  # = ToyCLIPConfig.text_width
    # Heads per block, 32 channels each. diffusers' UNet2DConditionModel reads its `attention_head_dim` argument
    # as the number of heads (a historical naming slip it keeps for SD compatibility), so this is what we pass.
    attention_heads: tuple[int, ...] = (1, 2, 3)
    norm_num_groups: int = 16

    def build(self) -> UNet2DConditionModel:
        return UNet2DConditionModel(
            sample_size=LATENT_SIZE,
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            down_block_types=self.down_block_types,
            up_block_types=self.up_block_types,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            cross_attention_dim=self.cross_attention_dim,
            attention_head_dim=self.attention_heads,
            norm_num_groups=self.norm_num_groups,
        )


def make_scheduler() -> DDIMScheduler:
    """Stable Diffusion v1's noise schedule, so every SD-compatible scheduler (DDIM, PNDM, Euler...) loads it."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def config_dict(config) -> dict:
    """A config dataclass as JSON-friendly data (for the training report and model card)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def config_from_dict(config_class, data: dict):
    """The inverse of :func:`config_dict` (lists back to tuples): how a checkpoint's model config is rebuilt."""
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
