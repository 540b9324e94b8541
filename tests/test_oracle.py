"""``dk.sample`` against diffusers' own pipelines, used as the oracle.

With the noise fixed by a seed, our sampler and ``StableDiffusionPipeline.__call__`` (or the SDXL one) must give the
same image when they are asked the same thing:

- a constant schedule with c1 == c0 is plain text-to-image sampling with prompt c0;
- a switch schedule is diffusers with the conditional prompt embedding swapped to c1's at the switch step (done with
  ``callback_on_step_end``);
- a constant lambda in (0, 1) is diffusers prompted with the embedding ``(1 - lambda) * c0 + lambda * c1``.

Each comparison runs on tiny random-weight SD 1.x, SD 2.x (v-prediction) and SDXL pipelines on the CPU in float32,
and asks for the images to agree within 1/255 (the final latents within float rounding). The schedulers of the
oracle are built here from diffusers' classes, not with ``dk.make_scheduler``, so a misconfigured sampler in
disentkit cannot agree with itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

import disentkit as dk

STEPS = 6  # few steps keep the suite fast; 6 leaves room for switches in the middle
SEED = 42
GUIDANCE = 7.5
C0, C1 = "A photo of person", "A photo of person, smiling"
PIXEL_TOL = 1 / 255  # one 8-bit grey level

# How a user of plain diffusers gets each of our samplers: the class and its overrides on the model's config.
ORACLE_SCHEDULERS = {
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "plms": lambda config: PNDMScheduler.from_config(config, skip_prk_steps=True),
    "dpm": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    "dpm_sde": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="sde-dpmsolver++"),
    "euler": lambda config: EulerDiscreteScheduler.from_config(config),
}

# (sampler, eta): DDIM deterministic and fully stochastic, PLMS (the paper's sampler) ...
CORE_SAMPLERS = [("ddim", 0.0), ("ddim", 1.0), ("plms", 0.0)]
# ... and the other samplers disentkit offers.
MORE_SAMPLERS = [("dpm", 0.0), ("dpm_sde", 0.0), ("euler", 0.0)]
ALL_SAMPLERS = CORE_SAMPLERS + MORE_SAMPLERS
# The prompt swap also runs with a multistep sampler that draws noise at every step.
SWITCH_SAMPLERS = CORE_SAMPLERS + [("dpm_sde", 0.0)]


def _ids(samplers):
    return [f"{name}-eta{eta:g}" for name, eta in samplers]


@pytest.fixture(params=["sd1", "sd2", "sdxl"])
def pipe(request):
    """Each tiny pipeline kind in turn (the session-scoped fixtures from conftest)."""
    return request.getfixturevalue(f"{request.param}_pipe")


def is_xl(pipe) -> bool:
    return hasattr(pipe, "text_encoder_2")


# ---- the oracle side: plain diffusers --------------------------------------------------------------------------
def oracle_pipeline(pipe, sampler: str):
    """A new pipeline object sharing ``pipe``'s modules, with its own scheduler: the shared fixture stays untouched."""
    scheduler = ORACLE_SCHEDULERS[sampler](pipe.scheduler.config)
    if is_xl(pipe):
        ref = type(pipe)(**{**pipe.components, "scheduler": scheduler}, add_watermarker=False)
    else:
        ref = type(pipe)(**{**pipe.components, "scheduler": scheduler}, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    return ref


def conditional_embeds(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """diffusers' conditional embedding of ``prompt``: (1, T, D), and for SDXL the pooled (1, D2) one."""
    cpu = torch.device("cpu")
    if is_xl(pipe):
        emb, _, pooled, _ = pipe.encode_prompt(
            prompt=prompt, device=cpu, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return emb, pooled
    emb, _ = pipe.encode_prompt(prompt, cpu, 1, False)
    return emb, None


@dataclass
class PromptSwap:
    """A ``callback_on_step_end`` action: after UNet call ``after_call``, the conditional half of the guidance batch
    gets ``embeds`` (and ``pooled``, SDXL). diffusers stacks the batch as [uncond, cond], so row 0 is kept."""

    after_call: int
    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def tensor_inputs(self) -> list[str]:
        return ["prompt_embeds"] + (["add_text_embeds"] if self.pooled is not None else [])

    def __call__(self, tensors: dict) -> dict:
        new = {"prompt_embeds": torch.cat([tensors["prompt_embeds"][:1], self.embeds])}
        if self.pooled is not None:
            new["add_text_embeds"] = torch.cat([tensors["add_text_embeds"][:1], self.pooled])
        return new


def diffusers_run(pipe, sampler: str, *, eta: float = 0.0, seeds=(SEED,), swap: PromptSwap | None = None, **call):
    """Run diffusers' ``__call__``; return its pixels (B, 3, H, W) in [0, 1] and its final latents (B, C, h, w).

    One generator per seed, as our noise tape assumes. ``call`` holds the prompt (or embeddings).
    """
    final = {}

    def on_step_end(_pipe, i, _t, tensors):
        final["latents"] = tensors["latents"]
        return swap(tensors) if swap is not None and i == swap.after_call else {}

    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    pixels = oracle_pipeline(pipe, sampler)(
        generator=generators if len(generators) > 1 else generators[0],
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        eta=eta,
        output_type="pt",
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"] + (swap.tensor_inputs if swap else []),
        **call,
    ).images
    return pixels, final["latents"]


# ---- our side --------------------------------------------------------------------------------------------------
def dk_run(pipe, c1: str, schedules, sampler: str, eta: float = 0.0, seeds=(SEED,)):
    cond = dk.encode(pipe, C0, c1)
    tape = dk.NoiseTape.from_seed(pipe, seed=list(seeds), steps=STEPS, scheduler=sampler, eta=eta)
    return dk.sample(pipe, cond, schedules, tape, guidance=GUIDANCE, progress=False)


def max_pixel_difference(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, f"image batch shapes differ: ours {tuple(ours.shape)}, diffusers {tuple(ref.shape)}"
    return (ours.float() - ref.float()).abs().max().item()


def assert_same_result(out, ref_pixels: torch.Tensor, ref_latents: torch.Tensor, what: str, rows=slice(None)):
    """Our runs ``rows`` against diffusers' images (within 1/255) and final latents (within float rounding)."""
    diff = max_pixel_difference(out.pixels[rows], ref_pixels)
    assert diff <= PIXEL_TOL, f"{what}: images differ from diffusers' by up to {diff * 255:.1f}/255"
    # Latents first diverge at the rounding level; the images could hide a difference where pixels saturate.
    torch.testing.assert_close(
        out.latents[rows], ref_latents.float(), rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: {m}"
    )


def assert_clearly_different(ours: torch.Tensor, ref_latents: torch.Tensor, what: str) -> None:
    """A check of the check: a nearby wrong answer (one step off, the flipped mix) is far outside the tolerance.

    On these random-weight models the late steps of an epsilon-prediction model barely move the decoded pixels
    (switching one step later can change the image by less than 1/255), so the discriminating comparison is the
    latent one; this asserts it would fail by at least 10x its tolerance.
    """
    diff = (ours.float() - ref_latents.float()).abs().max().item()
    assert diff > 1e-3, f"{what} gives final latents within {diff:.2g} of the reference: the test cannot tell"


# ---- the tests -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, eta", ALL_SAMPLERS, ids=_ids(ALL_SAMPLERS))
def test_constant_schedule_with_equal_prompts_is_plain_diffusers_sampling(pipe, sampler, eta):
    # With c1 == c0 the weight is irrelevant, so this checks the loop itself: start latent and its scaling, the
    # timesteps, guidance, the scheduler step, the per-step noise of stochastic samplers, the VAE decode.
    out = dk_run(pipe, C0, dk.MixSchedule.constant(STEPS, 0.7), sampler, eta)
    ref_pixels, ref_latents = diffusers_run(pipe, sampler, eta=eta, prompt=C0)
    assert_same_result(out, ref_pixels, ref_latents, f"{sampler} eta={eta}")


def _swap_after_call(sampler: str, switch: int) -> int:
    """The callback index at which diffusers must swap prompts so that sampling step ``switch`` is the first on c1.

    The callback after UNet call i sets the embeddings of call i + 1. DDIM-like samplers make one call per step;
    PLMS makes one extra call in its first step, so step ``switch`` is call ``switch + 1``.
    """
    return switch if sampler == "plms" else switch - 1


@pytest.mark.parametrize("sampler, eta", SWITCH_SAMPLERS, ids=_ids(SWITCH_SAMPLERS))
def test_switch_schedule_is_diffusers_with_the_prompt_swapped_at_the_switch_step(pipe, sampler, eta):
    switch = 3
    c1_embeds, c1_pooled = conditional_embeds(pipe, C1)
    swap = PromptSwap(_swap_after_call(sampler, switch), c1_embeds, c1_pooled)
    ref_pixels, ref_latents = diffusers_run(pipe, sampler, eta=eta, swap=swap, prompt=C0)

    schedules = [dk.MixSchedule.switch(STEPS, at=switch), dk.MixSchedule.switch(STEPS, at=switch + 1)]
    out = dk_run(pipe, C1, schedules, sampler, eta)
    assert_same_result(out, ref_pixels, ref_latents, f"switch@{switch} with {sampler}", rows=slice(0, 1))
    # The comparison can tell one step from the next: switching one step later must fail it.
    assert_clearly_different(out.latents[1:], ref_latents, "switching one step later")


@pytest.mark.parametrize("lam", [0.3])
def test_fractional_lambda_is_prompting_diffusers_with_the_mixed_embedding(pipe, lam):
    # lam is the weight of c1 (the paper's convention): c = (1 - lam) * c0 + lam * c1.
    c0_embeds, c0_pooled = conditional_embeds(pipe, C0)
    c1_embeds, c1_pooled = conditional_embeds(pipe, C1)

    def prompted_with_mix(w: float):
        call = {"prompt_embeds": (1 - w) * c0_embeds + w * c1_embeds}
        if is_xl(pipe):
            call["pooled_prompt_embeds"] = (1 - w) * c0_pooled + w * c1_pooled
        return diffusers_run(pipe, "ddim", **call)

    out = dk_run(pipe, C1, dk.MixSchedule.constant(STEPS, lam), "ddim")
    ref_pixels, ref_latents = prompted_with_mix(lam)
    assert_same_result(out, ref_pixels, ref_latents, f"lambda={lam}")
    # The opposite convention (lam weighting c0) must be told apart by this test.
    _, flipped_latents = prompted_with_mix(1 - lam)
    assert_clearly_different(out.latents, flipped_latents, f"lambda={1 - lam}")


def test_batched_seeds_replay_diffusers_generators_one_per_seed(sd1_pipe):
    # A batch of seeds with per-step noise (DDIM eta=1): diffusers draws x_T and every step's noise for image b
    # from generator b. Our tape must do the same, in the same order, or image 2 of a batch changes.
    seeds = (1, 2)
    out = dk_run(sd1_pipe, C0, dk.MixSchedule.constant(STEPS, 0.0), "ddim", eta=1.0, seeds=seeds)
    ref_pixels, ref_latents = diffusers_run(sd1_pipe, "ddim", eta=1.0, seeds=seeds, prompt=[C0] * len(seeds))
    assert_same_result(out, ref_pixels, ref_latents, "seeds (1, 2), DDIM eta=1")


def test_several_schedules_in_one_batch_each_match_their_own_diffusers_run(sd1_pipe):
    # Our sampler runs all schedules through the UNet together; each row must still get its own weights.
    switches = (1, 4)
    out = dk_run(sd1_pipe, C1, [dk.MixSchedule.switch(STEPS, at=k) for k in switches], "ddim")
    c1_embeds, _ = conditional_embeds(sd1_pipe, C1)
    for row, k in enumerate(switches):
        ref_pixels, ref_latents = diffusers_run(sd1_pipe, "ddim", swap=PromptSwap(k - 1, c1_embeds), prompt=C0)
        assert_same_result(out, ref_pixels, ref_latents, f"switch@{k} in batch row {row}", rows=slice(row, row + 1))
