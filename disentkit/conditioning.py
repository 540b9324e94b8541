"""Conditioning: the text embeddings of the neutral prompt c0, the styled prompt c1 and the unconditional prompt.

We encode through the pipeline's own ``encode_prompt`` so the embeddings are exactly the ones diffusers would
use (CLIP skip, SDXL's two encoders and its zeroed empty prompt included). The mix itself is one line in
:func:`mix`; it touches only the conditional branch of classifier-free guidance, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import PromptError
from .pipeline import is_sdxl, pipeline_device


@dataclass(frozen=True)
class Conditioning:
    """Embeddings of P prompt pairs.

    Attributes:
        c0, c1: (P, T, D) token embeddings of the neutral and the styled prompts.
        uncond: (P, T, D) embeddings of the negative/unconditional prompt ("" unless told otherwise).
        pooled0, pooled1, pooled_uncond: (P, D2) pooled text embeddings (SDXL only, else ``None``); mixed like
            the token embeddings.
        prompts0, prompts1: the prompt texts, for labels and metadata.
    """

    c0: torch.Tensor
    c1: torch.Tensor
    uncond: torch.Tensor
    prompts0: tuple[str, ...]
    prompts1: tuple[str, ...]
    pooled0: torch.Tensor | None = None
    pooled1: torch.Tensor | None = None
    pooled_uncond: torch.Tensor | None = None

    @property
    def pairs(self) -> int:
        return self.c0.shape[0]

    @property
    def tokens(self) -> int:
        return self.c0.shape[1]

    @property
    def is_sdxl(self) -> bool:
        return self.pooled0 is not None

    def select(self, pair_index: torch.Tensor) -> "Conditioning":
        """The conditioning of prompt pair ``pair_index[r]`` for every batch row r."""
        take = (lambda t: None if t is None else t[pair_index])  # noqa: E731
        return Conditioning(
            take(self.c0), take(self.c1), take(self.uncond),
            tuple(self.prompts0[i] for i in pair_index.tolist()),
            tuple(self.prompts1[i] for i in pair_index.tolist()),
            take(self.pooled0), take(self.pooled1), take(self.pooled_uncond),
        )  # fmt: skip


def mix(c0: torch.Tensor, c1: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The paper's ``c = (1 - lam) * c0 + lam * c1``; ``lam`` broadcasts from the left ((R,), (R, T), ...).

    Written in this form (not ``c0 + lam * (c1 - c0)``) because it is exact at both ends: lam = 1 gives c1 to
    the bit, so a constant-1 schedule reproduces diffusers prompted with c1.
    """
    lam = lam.reshape(*lam.shape, *([1] * (c0.ndim - lam.ndim))).to(c0.dtype)
    return (1 - lam) * c0 + lam * c1


def _prompt_list(prompts: str | Sequence[str], name: str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise PromptError(f"{name} must be a string or a list of strings, got {type(prompts).__name__}.")
    if len(prompts) == 0:
        raise PromptError(f"{name} is an empty list; give at least one prompt, e.g. 'a photo of person'.")
    return list(prompts)


@torch.no_grad()
def encode(
    pipe,
    c0: str | Sequence[str],
    c1: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None = None,
) -> Conditioning:
    """Encode prompt pairs (c0[p], c1[p]) and the unconditional prompt with the pipeline's text encoder(s).

    ``c0`` and ``c1`` are strings or equally long lists. ``negative_prompt=None`` gives diffusers' default
    unconditional embedding (the empty prompt; zeros for SDXL models configured so).
    """
    prompts0, prompts1 = _prompt_list(c0, "c0"), _prompt_list(c1, "c1")
    if len(prompts0) != len(prompts1):
        raise PromptError(f"c0 has {len(prompts0)} prompts but c1 has {len(prompts1)}; give them in pairs.")
    for name, prompts in (("c0", prompts0), ("c1", prompts1)):  # an empty prompt would edit towards nothing
        if any(not p.strip() for p in prompts):
            raise PromptError(f"{name} holds an empty prompt; give text, e.g. 'a photo of a face' (the unconditional "
                              "prompt is negative_prompt=).")  # fmt: skip
    if negative_prompt is not None:
        negative_prompt = _prompt_list(negative_prompt, "negative_prompt")
        if len(negative_prompt) == 1:
            negative_prompt = negative_prompt * len(prompts0)
    device = pipeline_device(pipe)
    if is_sdxl(pipe):
        e0, neg, p0, pneg = pipe.encode_prompt(
            prompt=prompts0, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=negative_prompt,
        )  # fmt: skip
        e1, _, p1, _ = pipe.encode_prompt(
            prompt=prompts1, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return Conditioning(e0, e1, neg, tuple(prompts0), tuple(prompts1), p0, p1, pneg)
    e0, neg = pipe.encode_prompt(prompts0, device, 1, True, negative_prompt)
    e1, _ = pipe.encode_prompt(prompts1, device, 1, False)
    return Conditioning(e0, e1, neg, tuple(prompts0), tuple(prompts1))
