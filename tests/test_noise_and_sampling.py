"""Noise tapes and the sampling loop: replay bit for bit, the right weight at the right step, batching, errors."""

import pytest
import torch

import disentkit as dk
from disentkit.errors import (
    DeviceUnavailableError,
    InvalidScheduleError,
    PromptError,
    ScheduleLengthError,
    TapeFileError,
    TapeMismatchError,
    UnknownSchedulerError,
)

STEPS = 6


@pytest.fixture(scope="module")
def cond(sd1_pipe):
    return dk.encode(sd1_pipe, "a photo of person", "a photo of person, smiling")


# ---- tapes -----------------------------------------------------------------------------------------------------
def test_tape_shapes_follow_the_sampler(sd1_pipe):
    det = dk.NoiseTape.from_seed(sd1_pipe, seed=[1, 2], steps=STEPS, scheduler="ddim", eta=0.0)
    sto = dk.NoiseTape.from_seed(sd1_pipe, seed=[1, 2], steps=STEPS, scheduler="ddim", eta=1.0)
    assert det.x_T.shape == (2, 4, 16, 16) and det.step_noise is None
    assert sto.step_noise.shape == (STEPS, 2, 4, 16, 16)
    assert torch.equal(det.x_T, sto.x_T)  # x_T is the first draw of each seed's generator either way
    assert not torch.equal(sto.step_noise[0, 0], sto.step_noise[1, 0])


def test_tape_draws_like_diffusers_generator(sd1_pipe):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=7, steps=2, scheduler="dpm_sde")
    gen = torch.Generator().manual_seed(7)
    expected = [torch.randn(1, 4, 16, 16, generator=gen) for _ in range(3)]
    assert torch.equal(tape.x_T, expected[0])
    assert torch.equal(tape.step_noise[:, 0], torch.cat(expected[1:]))


def test_select_and_concat_are_inverse(sd1_pipe):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=[3, 4, 5], steps=STEPS, scheduler="ddim", eta=0.5)
    parts = [tape.select(i) for i in range(3)]
    back = dk.NoiseTape.concat(parts)
    assert torch.equal(back.x_T, tape.x_T) and torch.equal(back.step_noise, tape.step_noise)
    assert back.seeds == (3, 4, 5)


def test_tape_save_load_is_exact(sd1_pipe, tmp_path):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=[11, 12], steps=STEPS, scheduler="ddim", eta=1.0)
    path = tape.save(tmp_path / "deep" / "tape.safetensors")
    back = dk.NoiseTape.load(path)
    assert torch.equal(back.x_T, tape.x_T) and torch.equal(back.step_noise, tape.step_noise)
    assert (back.scheduler, back.steps, back.eta, back.seeds) == ("ddim", STEPS, 1.0, (11, 12))


def test_truncated_or_foreign_tape_files_fail_clearly(sd1_pipe, tmp_path):
    path = dk.NoiseTape.from_seed(sd1_pipe, seed=1, steps=STEPS).save(tmp_path / "t.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TapeFileError, match="truncated or corrupt"):
        dk.NoiseTape.load(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(TapeFileError):
        dk.NoiseTape.load(tmp_path / "junk.safetensors")
    with pytest.raises(TapeFileError, match="no noise tape"):
        dk.NoiseTape.load(tmp_path / "missing.safetensors")


def test_tape_for_another_sampler_is_refused(sd1_pipe, cond):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=1, steps=STEPS, scheduler="ddim")
    sched = dk.MixSchedule.constant(STEPS, 0.0)
    with pytest.raises(TapeMismatchError, match="scheduler='plms'"):
        dk.sample(sd1_pipe, cond, sched, tape, sampler="plms", progress=False)
    with pytest.raises(TapeMismatchError, match="steps=9"):
        dk.sample(sd1_pipe, cond, sched, tape, steps=9, progress=False)
    wrong_shape = dk.NoiseTape(torch.zeros(1, 3, 16, 16), None, "ddim", STEPS)
    with pytest.raises(TapeMismatchError, match="3 channels"):
        dk.sample(sd1_pipe, cond, sched, wrong_shape, progress=False)
    with pytest.raises(TapeMismatchError, match="draws noise at every step"):
        dk.NoiseTape(torch.zeros(1, 4, 16, 16), None, "ddim", STEPS, eta=1.0)
    with pytest.raises(UnknownSchedulerError, match="choose one of"):
        dk.NoiseTape.from_seed(sd1_pipe, seed=1, steps=STEPS, scheduler="lms")


# ---- sampling --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler,eta", [("ddim", 0.0), ("ddim", 1.0), ("dpm_sde", 0.0)])
def test_replaying_a_saved_tape_is_bit_for_bit(sd1_pipe, cond, tmp_path, scheduler, eta):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=5, steps=STEPS, scheduler=scheduler, eta=eta)
    sched = dk.MixSchedule.switch(STEPS, 2)
    first = dk.sample(sd1_pipe, cond, sched, tape, progress=False)
    again = dk.sample(sd1_pipe, cond, sched, dk.NoiseTape.load(tape.save(tmp_path / "t.safetensors")), progress=False)
    assert torch.equal(first.latents, again.latents)
    assert first.images[0].tobytes() == again.images[0].tobytes()


@pytest.mark.parametrize("scheduler,calls", [("ddim", STEPS), ("plms", STEPS + 1), ("dpm", STEPS)])
def test_each_call_uses_its_steps_weight(sd1_pipe, cond, scheduler, calls):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=0, steps=STEPS, scheduler=scheduler)
    seen = []
    sched = dk.MixSchedule.from_array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    dk.sample(sd1_pipe, cond, sched, tape, callback=lambda s: seen.append((s.call, s.step, s.lam[0, 0].item())), progress=False)
    assert len(seen) == calls
    for call, step, lam in seen:
        assert lam == pytest.approx(sched.weights[step].item())
    # PLMS evaluates step 0 twice (with step 0's conditioning), then one call per step.
    expected_steps = [0] + list(range(STEPS)) if scheduler == "plms" else list(range(STEPS))
    assert [s for _, s, _ in seen] == expected_steps


def test_switch_endpoints_equal_constant_prompts(sd1_pipe, cond):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=2, steps=STEPS)
    run = lambda s: dk.sample(sd1_pipe, cond, s, tape, progress=False).latents  # noqa: E731
    assert torch.equal(run(dk.MixSchedule.switch(STEPS, 0)), run(dk.MixSchedule.constant(STEPS, 1.0)))
    assert torch.equal(run(dk.MixSchedule.switch(STEPS, STEPS)), run(dk.MixSchedule.constant(STEPS, 0.0)))
    middle = run(dk.MixSchedule.switch(STEPS, 3))
    assert not torch.equal(middle, run(dk.MixSchedule.constant(STEPS, 0.0)))
    assert not torch.equal(middle, run(dk.MixSchedule.constant(STEPS, 1.0)))


def test_batch_equals_separate_runs_in_documented_order(sd1_pipe, cond):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=[1, 2], steps=STEPS, scheduler="ddim", eta=1.0)
    schedules = [dk.MixSchedule.switch(STEPS, 2), dk.MixSchedule.constant(STEPS, 0.5)]
    both = dk.sample(sd1_pipe, cond, schedules, tape, progress=False)
    chunked = dk.sample(sd1_pipe, cond, schedules, tape, max_batch=1, progress=False)
    assert both.runs[["schedule", "seed_index", "seed"]].values.tolist() == [[0, 0, 1], [0, 1, 2], [1, 0, 1], [1, 1, 2]]
    for row, (s, b) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        alone = dk.sample(sd1_pipe, cond, schedules[s], tape.select(b), progress=False)
        # Batched matmuls may round differently from single ones; images must agree to well under a grey level.
        assert torch.allclose(both.latents[row], alone.latents[0], rtol=1e-4, atol=1e-4)
        assert (both.pixels[row] - alone.pixels[0]).abs().max() <= 1 / 255
    assert torch.allclose(both.latents, chunked.latents, rtol=1e-4, atol=1e-4)


def test_several_prompt_pairs(sd1_pipe):
    cond = dk.encode(sd1_pipe, ["a cat", "a dog"], ["a cat, red", "a dog, blue"])
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=3, steps=STEPS)
    out = dk.sample(sd1_pipe, cond, dk.MixSchedule.switch(STEPS, 3), tape, progress=False)
    assert out.runs["c1"].tolist() == ["a cat, red", "a dog, blue"] and len(out.images) == 2
    single = dk.sample(sd1_pipe, dk.encode(sd1_pipe, "a dog", "a dog, blue"), dk.MixSchedule.switch(STEPS, 3), tape, progress=False)
    assert torch.allclose(out.latents[1], single.latents[0], rtol=1e-4, atol=1e-4)


def test_per_token_mix_only_moves_the_chosen_tokens(sd1_pipe, cond):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=4, steps=STEPS)
    none = dk.MixSchedule.constant(STEPS, 1.0).on_tokens(torch.zeros(cond.tokens))
    all_ = dk.MixSchedule.constant(STEPS, 1.0).on_tokens(torch.ones(cond.tokens))
    run = lambda s: dk.sample(sd1_pipe, cond, s, tape, progress=False).latents  # noqa: E731
    assert torch.equal(run(none), run(dk.MixSchedule.constant(STEPS, 0.0)))
    assert torch.equal(run(all_), run(dk.MixSchedule.constant(STEPS, 1.0)))


def test_trajectory_records_every_call(sd1_pipe, cond):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=[1, 2], steps=STEPS)
    out = dk.sample(sd1_pipe, cond, dk.MixSchedule.switch(STEPS, 3), tape, record=True, progress=False)
    traj = out.trajectory
    assert traj.x0_pred.shape == (STEPS, 2, 4, 16, 16) and traj.steps.tolist() == list(range(STEPS))
    assert torch.allclose(traj.x_t[0], tape.x_T, atol=1e-6)  # DDIM starts at x_T (init_noise_sigma = 1)
    pixels = traj.decode(sd1_pipe, steps=[0, STEPS - 1])
    assert pixels.shape == (2, 2, 3, 32, 32) and 0 <= pixels.min() and pixels.max() <= 1
    df = traj.to_dataframe()
    assert len(df) == STEPS * 2 and (df[df.step == STEPS - 1].x0_distance_to_final == 0).all()


def test_schedule_of_wrong_length_fails_before_any_work(sd1_pipe, cond):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=1, steps=STEPS)
    calls = []
    with pytest.raises(ScheduleLengthError, match=f"resample\\({STEPS}\\)"):
        dk.sample(sd1_pipe, cond, dk.MixSchedule.constant(STEPS + 1), tape, callback=calls.append, progress=False)
    assert calls == []
    with pytest.raises(InvalidScheduleError, match="no schedules"):
        dk.sample(sd1_pipe, cond, [], tape, progress=False)


def test_prompt_errors(sd1_pipe):
    with pytest.raises(PromptError, match="empty list"):
        dk.encode(sd1_pipe, [], [])
    with pytest.raises(PromptError, match="in pairs"):
        dk.encode(sd1_pipe, ["a", "b"], ["c"])
    with pytest.raises(PromptError, match="string"):
        dk.encode(sd1_pipe, 3, "a")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error(tiny_pipe_dir):
    with pytest.raises(DeviceUnavailableError, match="no CUDA GPU"):
        dk.load_pipeline(tiny_pipe_dir, device="cuda")


def _overflowing_fp16_vae_pipe(kind: str = "sdxl", force_upcast: bool = True):
    """A tiny pipeline whose float16 VAE overflows (as SDXL's real VAE does in float16): its first convolutions are
    scaled up so that their activations pass float16's maximum (65504), but not float32's."""
    from disentkit.testing import tiny_pipeline

    pipe = tiny_pipeline(kind, seed=0)
    with torch.no_grad():
        pipe.vae.decoder.conv_in.weight.mul_(2e5)
        pipe.vae.encoder.conv_in.weight.mul_(2e5)
    pipe.vae.register_to_config(force_upcast=force_upcast)
    pipe.vae.half()
    return pipe


def test_sdxl_float16_vae_that_overflows_decodes_and_encodes_in_float32():
    from disentkit.pipeline import vae_in_safe_precision

    pipe = _overflowing_fp16_vae_pipe()
    z = torch.randn(2, 4, 8, 8, dtype=torch.float16)
    with torch.no_grad():
        naive = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    assert not torch.isfinite(naive).all()  # the failure this guards against: NaN/inf images in float16

    z.requires_grad_(True)
    pixels = dk.decode(pipe, z)
    assert torch.isfinite(pixels).all() and pixels.dtype == torch.float32
    pixels.mean().backward()  # optimize's gradient goes through this decode
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert pipe.vae.dtype == torch.float16  # the pipeline's own module is left as it was
    pipe.vae.requires_grad_(True)
    with vae_in_safe_precision(pipe) as vae:
        assert vae is not pipe.vae and vae.dtype == torch.float32
        assert not any(p.requires_grad for p in vae.parameters())  # the copy is frozen: no weight gradients
    pipe.vae.requires_grad_(False)

    image = (torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy()
    latents = dk.encode_image(pipe, image)
    assert torch.isfinite(latents).all() and latents.dtype == pipe.unet.dtype

    # Sampling decodes under inference mode: the float32 copy works there too.
    cond = dk.encode(pipe, "a photo of a cat", "a photo of a cat, smiling")
    tape = dk.NoiseTape.from_seed(pipe, 0, steps=2)
    out = dk.sample(pipe, cond, dk.MixSchedule.constant(2, 0.0), tape, progress=False)
    assert torch.isfinite(out.pixels).all()


@pytest.mark.parametrize("kind, force_upcast", [("sdxl", False), ("sd1", True)])
def test_other_float16_vaes_run_as_they_are(kind, force_upcast):
    """Only SDXL-family pipelines upcast a VAE that asks for it, as in diffusers (SD 1.x decodes in float16)."""
    from disentkit.pipeline import vae_in_safe_precision

    pipe = _overflowing_fp16_vae_pipe(kind, force_upcast)
    with vae_in_safe_precision(pipe) as vae:
        assert vae is pipe.vae
    with torch.no_grad():
        assert not torch.isfinite(dk.decode(pipe, torch.randn(1, 4, 8, 8, dtype=torch.float16))).all()


def test_checkpointed_decode_gives_the_same_images_and_gradient(sd1_pipe):
    """decode(recompute=True) recomputes the decoder's layers in the backward pass: same pixels, same gradient,
    nothing left changed on the VAE, and the recomputation really happens (a resnet runs twice)."""
    torch.manual_seed(0)
    z = torch.randn(2, 4, 8, 8)
    resnet = sd1_pipe.vae.decoder.up_blocks[-1].resnets[0]  # a full-resolution layer
    # The recomputation calls the layer's forward (not its hooks) and stops once it has what the backward needs:
    # a pre-hook on the layer's first convolution sees it.
    calls = []
    hook = resnet.conv1.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    try:
        results = {}
        for checkpoint in (False, True):
            calls.clear()
            latents = z.clone().requires_grad_(True)
            pixels = dk.decode(sd1_pipe, latents, recompute=checkpoint)
            (pixels * torch.linspace(0, 1, pixels.numel()).view_as(pixels)).sum().backward()
            results[checkpoint] = (pixels.detach(), latents.grad, len(calls))
            assert not any("forward" in m.__dict__ for m in sd1_pipe.vae.modules())  # every layer as it was
        with torch.no_grad():  # without gradients there is nothing to recompute
            calls.clear()
            assert torch.equal(dk.decode(sd1_pipe, z, recompute=True), results[False][0]) and len(calls) == 1
    finally:
        hook.remove()
    (plain, plain_grad, plain_calls), (ckpt, ckpt_grad, ckpt_calls) = results[False], results[True]
    assert torch.equal(plain, ckpt)
    torch.testing.assert_close(ckpt_grad, plain_grad, rtol=1e-5, atol=1e-6)
    assert plain_calls == 1 and ckpt_calls == 2  # the layer ran again in the backward pass


def test_checkpointed_decode_leaves_a_users_own_settings(sd1_pipe):
    vae = sd1_pipe.vae
    resnet = vae.decoder.up_blocks[-1].resnets[0]
    seen = []
    own = resnet.forward

    def wrapper(*args, **kwargs):  # a user's own forward on the instance: it runs, checkpointed, and comes back
        seen.append(torch.is_grad_enabled())
        return own(*args, **kwargs)

    resnet.forward = wrapper
    try:
        for _ in range(2):
            dk.decode(sd1_pipe, torch.randn(1, 4, 8, 8, requires_grad=True), recompute=True).sum().backward()
            assert resnet.forward is wrapper
        assert len(seen) == 4  # forward and recomputation, twice
        with pytest.raises(RuntimeError):  # a decode that fails half-way leaves nothing patched either
            dk.decode(sd1_pipe, torch.randn(1, 3, 8, 8, requires_grad=True), recompute=True)
        assert resnet.forward is wrapper
        assert not any("forward" in m.__dict__ for m in vae.modules() if m is not resnet)
        vae.enable_gradient_checkpointing()  # diffusers' block-level switch: then it is the one used
        try:
            dk.decode(sd1_pipe, torch.randn(1, 4, 8, 8, requires_grad=True), recompute=True).sum().backward()
            assert resnet.forward is wrapper and vae.decoder.gradient_checkpointing is True
        finally:
            vae.disable_gradient_checkpointing()
    finally:
        del resnet.forward


def test_checkpointed_decode_reuses_one_wrapper_per_layer_and_keeps_no_vae_alive(sd1_pipe):
    """torch.compile guards on a layer's forward: the checkpointed wrapper is made once per layer and reused. The
    cache of wrappers holds its layers weakly: a VAE copy (float16 SDXL decodes with one per call) is freed."""
    import copy
    import gc
    import types

    from disentkit import sampling

    layer = sd1_pipe.vae.decoder.up_blocks[-1].resnets[1]
    used = []  # the forward each call runs with, read as the layer is called
    hook = layer.register_forward_pre_hook(lambda module, args: used.append(module.forward))
    try:
        for _ in range(2):
            dk.decode(sd1_pipe, torch.randn(1, 4, 8, 8, requires_grad=True), recompute=True).sum().backward()
    finally:
        hook.remove()
    assert used[0] is used[1] and "forward" not in layer.__dict__
    before = len(sampling._CHECKPOINTED_FORWARDS)
    copied = types.SimpleNamespace(vae=copy.deepcopy(sd1_pipe.vae))
    dk.decode(copied, torch.randn(1, 4, 8, 8, requires_grad=True), recompute=True).sum().backward()
    assert len(sampling._CHECKPOINTED_FORWARDS) > before
    del copied
    gc.collect()
    assert len(sampling._CHECKPOINTED_FORWARDS) == before


def test_old_keyword_names_still_work_with_a_deprecation_warning(sd1_pipe, cond):
    tape = dk.NoiseTape.from_seed(sd1_pipe, seed=1, steps=STEPS)
    sched = dk.MixSchedule.switch(STEPS, 2)
    new = dk.sample(sd1_pipe, cond, sched, tape, sampler="ddim", progress=False)
    with pytest.warns(DeprecationWarning, match="sampler"):
        old = dk.sample(sd1_pipe, cond, sched, tape, scheduler="ddim", progress=False)
    assert torch.equal(new.pixels, old.pixels)
    z = torch.randn(1, 4, 8, 8)
    with pytest.warns(DeprecationWarning, match="recompute"):
        assert torch.equal(dk.decode(sd1_pipe, z, checkpoint=True), dk.decode(sd1_pipe, z, recompute=True))
