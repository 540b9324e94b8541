"""optimize() learns the lambdas and only the lambdas: exact gradients (checked against finite differences), no
gradient ever reaches a model weight, the loss goes down, and a checkpointed run resumes to the same result."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import disentkit as dk
from disentkit import recipes
from disentkit.errors import OptionError, ScheduleLengthError
from disentkit.losses import DirectionalCLIPLoss, Hinge, paper_losses, tiny_clip
from disentkit.optimize import (
    CheckpointMismatchError,
    Objective,
    OptimizeStep,
    LearnStepsError,
    TensorwiseAdam,
    as_loss_terms,
    learn_mask,
    optimize,
    reference_init,
)
from disentkit.testing import tiny_pipeline
from disentkit.transfer import ScheduleModelError, fit_schedule, transfer

STEPS = 3
C0, C1 = "a photo of a face", "a photo of a face, smiling"


@pytest.fixture(scope="module")
def pipe():
    # Our own pipeline object: the run below must be able to check that nothing in it ever gets a gradient.
    return tiny_pipeline("sd1", seed=0)


@pytest.fixture(scope="module")
def clip():
    return tiny_clip(seed=0)


@pytest.fixture(scope="module")
def setup(pipe):
    cond = dk.encode(pipe, C0, C1)
    tape = dk.NoiseTape.from_seed(pipe, 42, steps=STEPS)
    return cond, tape


@pytest.fixture(scope="module")
def run(pipe, clip, setup):
    cond, tape = setup
    seen = []
    result = optimize(pipe, cond, reference_init(STEPS, c0_steps=1), tape, iters=4, lr=0.1, clip=clip,
                      callback=seen.append, progress=False)  # fmt: skip
    return result, seen


def test_reference_init_is_the_papers_switch():
    s = reference_init(50, c0_steps=20, late=1.2)
    assert s.weights[:20].eq(0).all() and s.weights[20:].eq(1.2).all()


@pytest.mark.parametrize("recompute", [True, False])
def test_gradient_matches_central_finite_differences(recompute):
    # float64 end to end, so a central difference is accurate to ~1e-9 and any error in the chain rule shows.
    pipe64 = tiny_pipeline("sd1", seed=3).to(torch.float64)
    cond = dk.encode(pipe64, C0, C1)
    tape = dk.NoiseTape.from_seed(pipe64, 7, steps=STEPS, eta=0.5)  # stochastic DDIM: the tape's step noise too
    weights = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pixel_loss = lambda edited, reference: (weights * (edited - reference)).sum()  # noqa: E731
    objective = Objective(pipe64, cond, tape, as_loss_terms({"pix": pixel_loss}), 5.0, recompute)

    lam = torch.tensor([0.2, 0.7, 1.1], dtype=torch.float64, requires_grad=True)
    objective(lam)[0].backward()
    h = 1e-5
    with torch.no_grad():
        numeric = []
        for i in range(STEPS):
            e = torch.zeros(STEPS, dtype=torch.float64)
            e[i] = h
            numeric.append((objective(lam + e)[0] - objective(lam - e)[0]) / (2 * h))
    numeric = torch.stack(numeric)
    assert numeric.abs().max() > 1e-4, "the loss does not depend on lambda; the test would prove nothing"
    torch.testing.assert_close(lam.grad, numeric, rtol=1e-5, atol=1e-8)


def test_no_model_weight_ever_gets_a_gradient(pipe, clip, run):
    for name, module in [*pipe.components.items(), ("clip", clip.model)]:
        if isinstance(module, torch.nn.Module):
            for p in module.parameters():
                assert not p.requires_grad and p.grad is None, f"{name} got a gradient"


def test_weights_left_trainable_are_frozen_for_the_run_and_given_back():
    # diffusers' from_pretrained leaves requires_grad on; optimize must not build weight gradients for such a
    # pipeline (nor for a loss network, nor a user's own loss module) and must hand the models back as they came.
    pipe = tiny_pipeline("sd1", seed=1)
    clip = tiny_clip(seed=1)
    user_net = torch.nn.Linear(3, 1)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, clip.model):
        module.requires_grad_(True)
    seen_trainable = []

    held_clip = tiny_clip(seed=3)  # a plain (non-module) attribute of a loss module
    held_clip.model.requires_grad_(True)

    class Brightness(torch.nn.Module):  # a user's loss with weights of its own
        def __init__(self):
            super().__init__()
            self.net = user_net
            self.judge = held_clip

        def forward(self, edited, reference):
            weights = [p for m in (pipe.unet, clip.model, self.net, self.judge.model) for p in m.parameters()]
            seen_trainable.append(any(p.requires_grad for p in weights))
            return self.net(edited.mean(dim=(2, 3))).squeeze(1)

    # Networks reached only through a wrapper, a closure or a partial must be found too.
    wrapped_clip, closure_net, partial_net = tiny_clip(seed=2), torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    wrapped_clip.model.requires_grad_(True)

    import torch.nn.functional as F_local  # a Python module in the closure: not entered, and no crash

    def by_closure(edited, reference):
        seen_trainable.append(any(p.requires_grad for p in closure_net.parameters()))
        return F_local.relu(closure_net(edited.mean(dim=(2, 3)))).squeeze(1) * 0

    def with_net(net, edited, reference):
        seen_trainable.append(any(p.requires_grad for p in [*net.parameters(), *wrapped_clip.model.parameters()]))
        return net(edited.mean(dim=(2, 3))).squeeze(1) * 0

    cond = dk.encode(pipe, C0, C1)
    tape = dk.NoiseTape.from_seed(pipe, 42, steps=STEPS)
    losses = {**paper_losses(clip, C0, C1), "user": (1.0, Brightness()), "closure": (1.0, by_closure),
              "partial": (1.0, functools.partial(with_net, partial_net)),
              "hinge": (1.0, Hinge(DirectionalCLIPLoss(wrapped_clip, C0, C1), 10.0))}  # fmt: skip
    result = optimize(pipe, cond, reference_init(STEPS, c0_steps=1), tape, losses=losses, iters=2, progress=False)
    assert result.history["grad_norm"].iloc[0] > 0  # the lambdas did get a gradient
    assert len(seen_trainable) >= 9 and not any(seen_trainable)  # frozen while the losses ran
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, clip.model, user_net, closure_net, partial_net,
                   wrapped_clip.model, held_clip.model):  # fmt: skip
        assert all(p.grad is None for p in module.parameters())
        assert all(p.requires_grad for p in module.parameters())  # given back as they came

    class Failing(torch.nn.Module):
        def forward(self, edited, reference):
            raise RuntimeError("a loss that breaks")

    with pytest.raises(RuntimeError, match="a loss that breaks"):
        optimize(pipe, cond, reference_init(STEPS, c0_steps=1), tape, losses={"bad": Failing()}, progress=False)
    assert all(p.requires_grad for p in pipe.unet.parameters())  # given back after a failure too


def test_one_decode_per_iteration_and_each_unet_call_recomputed_once(pipe, clip, setup, monkeypatch, tmp_path):
    import sys

    from disentkit.losses import save_tiny_clip

    module = sys.modules["disentkit.objective"]  # where optimize's objective renders and builds its losses
    decodes, clips_loaded, unet_calls = [], [], []
    real_decode, real_load_clip = module.decode, module.load_clip
    monkeypatch.setattr(module, "decode", lambda *a, **k: decodes.append(k.get("recompute")) or real_decode(*a, **k))
    monkeypatch.setattr(module, "load_clip", lambda *a, **k: clips_loaded.append(a) or real_load_clip(*a, **k))
    hook = pipe.unet.register_forward_hook(lambda *_: unet_calls.append(torch.is_grad_enabled()))
    try:
        cond, tape = setup
        iters = 3
        optimize(pipe, cond, reference_init(STEPS, c0_steps=1), tape, iters=iters, progress=False,
                 clip=save_tiny_clip(tmp_path / "clip"))  # fmt: skip
    finally:
        hook.remove()
    assert len(clips_loaded) == 1  # the loss networks are built once, not per iteration
    # The pure-c0 reference, one per iteration, and the final evaluation; each iteration's decode checkpointed.
    assert len(decodes) == 1 + iters + 1 and all(decodes)
    # One batched UNet call per step (both guidance branches together); each iteration's calls run once without
    # autograd bookkeeping (reentrant checkpointing) and once more in the backward pass: 2 x STEPS per iteration.
    assert len(unet_calls) == STEPS + iters * 2 * STEPS + STEPS


def test_loss_decreases(run):
    history = run[0].history
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_history_callback_and_metadata(run):
    result, seen = run
    h = result.history
    assert list(h["iteration"]) == [0, 1, 2, 3, 4]  # 4 updates, then the learned schedule itself
    assert {"loss", "dir", "perc", "grad_norm"} <= set(h.columns)
    assert [f"lambda_{i}" for i in range(STEPS)] == [c for c in h.columns if c.startswith("lambda_")]
    assert list(h.iloc[0][[f"lambda_{i}" for i in range(STEPS)]]) == [0.0, 1.0, 1.0]  # the init
    kept = h.loc[h["iteration"] == result.best_iteration].iloc[-1]  # keep="best": the lowest loss seen
    assert kept["loss"] == h["loss"].min()
    assert torch.allclose(torch.tensor(kept[[f"lambda_{i}" for i in range(STEPS)]].tolist()), result.schedule.weights)
    assert result.schedule.meta["kept"] == {"rule": "best", "iteration": result.best_iteration}

    assert [s.iteration for s in seen] == [0, 1, 2, 3]
    assert isinstance(seen[0], OptimizeStep) and seen[0].edited.shape == (1, 3, 32, 32)
    assert seen[1].losses["loss"] == pytest.approx(h["loss"].iloc[1])

    meta = result.schedule.meta
    assert meta["prompts"] == [C0, C1]
    assert (meta["scheduler"], meta["steps"], meta["guidance"]) == ("ddim", STEPS, 7.5)
    assert "model" in meta
    assert meta["loss_terms"] == {"dir": f"DirectionalCLIPLoss(clip=tiny-clip-0, prompts={[C0, C1]})",
                                  "perc": "CLIPPerceptualLoss(clip=tiny-clip-0, layers=[1, 2])"}  # fmt: skip
    assert len(result.images) == 1 and result.pixels.shape == (1, 3, 32, 32)


def test_reference_is_the_pure_c0_image(pipe, setup, run):
    cond, tape = setup
    pure = dk.sample(pipe, cond, dk.MixSchedule.constant(STEPS, 0.0), tape, progress=False)
    torch.testing.assert_close(run[0].reference_pixels, pure.pixels, atol=1e-5, rtol=0)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_returns_the_lowest_loss_iterate_or_the_last(pipe, clip, setup, keep):
    cond, tape = setup
    # A step size far too large for these weights: Adam overshoots, so the best iterate is not the last one.
    result = optimize(pipe, cond, reference_init(STEPS, c0_steps=1), tape, iters=4, lr=3.0, clip=clip, keep=keep,
                      progress=False)  # fmt: skip
    h = result.history
    lams = [f"lambda_{i}" for i in range(STEPS)]
    expected = int(h["iteration"][h["loss"].idxmin()]) if keep == "best" else 4
    assert result.best_iteration == expected
    row = h.loc[h["iteration"] == expected].iloc[-1]
    torch.testing.assert_close(result.schedule.weights, torch.tensor(row[lams].tolist(), dtype=torch.float32))
    # the images returned are the kept schedule's images
    again = dk.sample(pipe, cond, result.schedule, tape, progress=False)
    torch.testing.assert_close(result.pixels, again.pixels, atol=1e-5, rtol=0)
    if keep == "best":
        assert expected < 4, "the test needs an overshooting run: the last iterate should not be the best here"


def test_keep_must_be_best_or_last(pipe, clip, setup):
    cond, tape = setup
    with pytest.raises(OptionError, match="keep"):
        optimize(pipe, cond, reference_init(STEPS, c0_steps=1), tape, iters=1, clip=clip, keep="first", progress=False)
    with pytest.raises(OptionError, match="floors"):
        optimize(pipe, cond, reference_init(STEPS, c0_steps=1), tape, iters=1, clip=clip, floors=-1.0, progress=False)


def test_old_keyword_names_still_work_with_a_deprecation_warning(pipe, clip, setup):
    cond, tape = setup
    init = reference_init(STEPS, c0_steps=1)
    with pytest.warns(DeprecationWarning, match=r"grad_checkpoint=.* call it recompute="):
        old = optimize(pipe, cond, init, tape, iters=1, clip=clip, grad_checkpoint=False, progress=False)
    new = optimize(pipe, cond, init, tape, iters=1, clip=clip, recompute=False, progress=False)
    assert torch.equal(old.schedule.weights, new.schedule.weights)
    with pytest.warns(DeprecationWarning, match="call it sampler="):
        by_old_name = dk.sample(pipe, cond, init, tape, scheduler="ddim", progress=False)
    assert torch.equal(by_old_name.pixels, dk.sample(pipe, cond, init, tape, sampler="ddim", progress=False).pixels)
    z = by_old_name.latents.requires_grad_(True)
    with pytest.warns(DeprecationWarning, match="call it recompute="):
        dk.decode(pipe, z, checkpoint=True)
    with pytest.warns(DeprecationWarning, match="call it recompute="):
        lam = init.weights[None, :, None].expand(1, STEPS, cond.tokens).clone().requires_grad_(True)
        dk.denoise(pipe, cond, lam, tape, checkpoint=True, progress=False)


def test_the_toy_recipe_is_optimize_with_its_settings(pipe, clip, setup):
    cond, tape = setup
    result = recipes.TOY.optimize(pipe, cond, tape, switch=1, clip=clip, iters=1, progress=False)
    meta = result.schedule.meta
    assert (meta["optimizer"], meta["learn_steps"], meta["lr"]) == ("tensorwise-adam", [1, 2], 0.05)
    assert meta["losses"] == {"prompt": 1.0, "struct": 50.0, "prompt_floor": 10.0, "struct_floor": 500.0}
    assert meta["init"]["weights"] == [0.0, 1.0, 1.0]
    assert recipes.PAPER.settings(switch=1) == {"lr": 0.05, "optimizer": "adam", "learn_steps": None, "floors": 0.0}
    with pytest.raises(OptionError, match="objective"):
        recipes.Recipe("nonsense")


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["adam", "tensorwise-adam"])
def test_resume_from_checkpoint_gives_the_uninterrupted_result(pipe, clip, setup, tmp_path, optimizer):
    cond, tape = setup
    terms = as_loss_terms(None, clip, cond)  # the paper's losses, built once and shared by the three runs
    init = reference_init(STEPS, c0_steps=1)
    kwargs = dict(losses=terms, iters=3, lr=0.1, optimizer=optimizer, progress=False)
    whole = optimize(pipe, cond, init, tape, **kwargs)

    def stop_after_two(step):
        if step.iteration == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        optimize(pipe, cond, init, tape, checkpoint_dir=tmp_path, callback=stop_after_two, **kwargs)
    resumed_from = []
    again = optimize(pipe, cond, init, tape, checkpoint_dir=tmp_path, callback=resumed_from.append, **kwargs)
    assert [s.iteration for s in resumed_from] == [2]  # iterations 0 and 1 came from the checkpoint
    torch.testing.assert_close(again.schedule.weights, whole.schedule.weights, rtol=0, atol=1e-6)
    cols = ["iteration", "loss", "lambda_0", "lambda_1", "lambda_2"]
    torch.testing.assert_close(torch.tensor(again.history[cols].values), torch.tensor(whole.history[cols].values), rtol=0, atol=1e-6)

    with pytest.raises(CheckpointMismatchError, match="lr"):  # another optimisation must not resume this one
        optimize(pipe, cond, init, tape, checkpoint_dir=tmp_path, **{**kwargs, "lr": 0.2})
    other = "adam" if optimizer == "tensorwise-adam" else "tensorwise-adam"
    with pytest.raises(CheckpointMismatchError, match="optimizer"):
        optimize(pipe, cond, init, tape, checkpoint_dir=tmp_path, **{**kwargs, "optimizer": other})
    # The same term names and weights computed by another CLIP, or with other prompts, are another optimisation.
    for changed in (as_loss_terms(None, tiny_clip(seed=5), cond),
                    {**terms, "dir": (1.0, DirectionalCLIPLoss(clip, C0, C1 + ", at night"))}):  # fmt: skip
        with pytest.raises(CheckpointMismatchError, match="loss_terms"):
            optimize(pipe, cond, init, tape, checkpoint_dir=tmp_path, **{**kwargs, "losses": changed})


def test_tensorwise_adam_moves_each_weight_in_proportion_to_its_gradient():
    grad = torch.tensor([1.0, 0.01, 0.0, -0.5])
    moved = {}
    for name, make in [("adam", torch.optim.Adam), ("tensorwise", TensorwiseAdam)]:
        w = torch.zeros(4, requires_grad=True)
        opt = make([w], lr=0.1)
        w.grad = grad.clone()
        opt.step()
        moved[name] = w.detach()
    # Adam's first step is lr * sign(g): the weight with a 100x smaller gradient moves just as far.
    torch.testing.assert_close(moved["adam"], torch.tensor([-0.1, -0.1, 0.0, 0.1]), rtol=0, atol=1e-6)
    # Shared scale: -lr * g / rms(g), so the root mean square step is lr and the ratios of the gradient survive.
    expected = -0.1 * grad / grad.pow(2).mean().sqrt()
    torch.testing.assert_close(moved["tensorwise"], expected, rtol=1e-5, atol=1e-7)
    assert moved["tensorwise"].pow(2).mean().sqrt() == pytest.approx(0.1, rel=1e-5)


def test_tensorwise_adam_on_one_weight_is_adam():
    # One entry: its mean square gradient is its own, so every step (bias corrections included) must equal Adam's.
    grads = [0.3, -1.2, 0.05, 2.0, -0.4, 0.7]
    weights = {}
    for name, make in [("adam", torch.optim.Adam), ("tensorwise", TensorwiseAdam)]:
        w = torch.tensor([0.5], requires_grad=True)
        opt, path = make([w], lr=0.05), []
        for g in grads:
            w.grad = torch.tensor([g])
            opt.step()
            path.append(float(w))
        weights[name] = path
    np.testing.assert_allclose(weights["tensorwise"], weights["adam"], rtol=1e-6, atol=1e-7)


def test_tensorwise_adam_scale_ignores_masked_entries():
    # Frozen steps have zero gradient; they must not shrink the shared scale (which would enlarge the others' step).
    w = torch.zeros(4, requires_grad=True)
    opt = TensorwiseAdam([{"params": [w], "mask": torch.tensor([False, False, True, True])}], lr=0.1)
    w.grad = torch.tensor([0.0, 0.0, 2.0, -2.0])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([0.0, 0.0, -0.1, 0.1]), rtol=1e-5, atol=1e-7)


def test_learn_steps_keeps_the_other_steps_at_their_start(pipe, clip, setup):
    cond, tape = setup
    init = reference_init(STEPS, c0_steps=1)
    result = optimize(pipe, cond, init, tape, iters=3, lr=0.1, clip=clip, learn_steps=1, keep="last", progress=False)
    h = result.history
    assert (h["lambda_0"] == 0.0).all(), "step 0 is not learned: it must stay pure c0"
    assert (h["lambda_1"] != 1.0).any() or (h["lambda_2"] != 1.0).any(), "the learned steps should move"
    assert result.schedule.weights[0] == 0.0
    assert result.schedule.meta["learn_steps"] == [1, 2] and result.schedule.meta["optimizer"] == "adam"


def test_floors_start_silent_and_are_optimised_as_terms(pipe, clip, setup):
    cond, tape = setup
    init = reference_init(STEPS, c0_steps=1)
    result = optimize(pipe, cond, init, tape, iters=3, lr=0.1, clip=clip, floors=10, keep="last", progress=False)
    h = result.history
    assert result.meta["losses"] == pytest.approx({"dir": 1.0, "perc": 0.05, "dir_floor": 10.0, "perc_floor": 0.5})
    first = h.loc[h["iteration"] == 0].iloc[-1]
    # The floors sit at the start's own values, rendered as the iterations render: silent at iteration 0.
    assert first["dir_floor"] == 0 and first["perc_floor"] == 0
    total = first["dir"] + 0.05 * first["perc"] + 10 * first["dir_floor"] + 0.5 * first["perc_floor"]
    assert first["loss"] == pytest.approx(total, rel=1e-5)  # the floors are terms like any other, with their weights
    # Same gradient at the start as without floors (they are silent there), so the same first step.
    plain = optimize(pipe, cond, init, tape, iters=1, lr=0.1, clip=clip, keep="last", progress=False).history
    lams = [f"lambda_{i}" for i in range(STEPS)]
    np.testing.assert_allclose(h.loc[h["iteration"] == 1, lams].to_numpy()[0], plain[lams].to_numpy()[-1], atol=1e-6)
    with pytest.raises(ValueError, match="floors is a weight"):
        optimize(pipe, cond, init, tape, iters=1, clip=clip, floors=-1, progress=False)


def test_learn_steps_with_per_token_weights(pipe, clip, setup):
    cond, tape = setup
    init = dk.MixSchedule(reference_init(STEPS, c0_steps=1).weights[:, None].repeat(1, cond.tokens), "per-token")
    result = optimize(pipe, cond, init, tape, iters=2, lr=0.1, clip=clip, learn_steps=1, optimizer="tensorwise-adam",
                      keep="last", progress=False)  # fmt: skip
    assert result.schedule.weights.shape == (STEPS, cond.tokens)
    assert result.schedule.weights[0].eq(0).all() and not result.schedule.weights[1:].eq(1).all()


def test_learn_mask_forms_and_errors():
    assert learn_mask(None, 4) is None
    assert learn_mask(2, 4).tolist() == [False, False, True, True]
    assert learn_mask(np.int64(2), 4).tolist() == [False, False, True, True]  # any integer means "from step k on"
    assert learn_mask(0, 4) is None and learn_mask([0, 1, 2, 3], 4) is None  # every step: nothing to mask
    assert learn_mask(slice(1, 3), 4).tolist() == [False, True, True, False]
    assert learn_mask([0, 3], 4).tolist() == [True, False, False, True]
    assert learn_mask(torch.tensor([True, False, True, False]), 4).tolist() == [True, False, True, False]
    with pytest.raises(LearnStepsError, match="0..3"):
        learn_mask(4, 4)
    with pytest.raises(LearnStepsError, match="no step"):
        learn_mask(slice(2, 2), 4)
    with pytest.raises(LearnStepsError, match="0..3"):
        learn_mask([5], 4)
    with pytest.raises(LearnStepsError, match="4 entries"):
        learn_mask(torch.tensor([True, False]), 4)
    with pytest.raises(LearnStepsError, match="not a bool"):
        learn_mask(True, 4)
    with pytest.raises(LearnStepsError, match="give a step in 0..3"):
        learn_mask(-1, 4)
    with pytest.raises(LearnStepsError, match="integers"):
        learn_mask([1.5], 4)
    with pytest.raises(LearnStepsError, match="0..3"):
        learn_mask([-1], 4)


def test_unknown_optimizer_is_refused(pipe, clip, setup):
    cond, tape = setup
    with pytest.raises(ValueError, match="tensorwise-adam"):
        optimize(pipe, cond, reference_init(STEPS, 1), tape, iters=1, clip=clip, optimizer="sgd", progress=False)


def test_checkpoint_from_before_the_optimizer_option_still_resumes(pipe, clip, setup, tmp_path):
    from disentkit.optimize import CHECKPOINT_FILE

    cond, tape = setup
    kwargs = dict(losses=as_loss_terms(None, clip, cond), lr=0.1, progress=False)
    optimize(pipe, cond, reference_init(STEPS, c0_steps=1), tape, iters=1, checkpoint_dir=tmp_path, **kwargs)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    del state["config"]["optimizer"], state["config"]["learn_steps"], state["config"]["loss_terms"]  # older versions
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    seen = []
    optimize(pipe, cond, reference_init(STEPS, c0_steps=1), tape, iters=2, checkpoint_dir=tmp_path,
             callback=seen.append, **kwargs)  # fmt: skip
    assert [s.iteration for s in seen] == [1]  # iteration 0 came from the old checkpoint


def test_schedule_of_the_wrong_length_is_refused(pipe, clip, setup):
    cond, tape = setup
    with pytest.raises(ScheduleLengthError):
        optimize(pipe, cond, reference_init(STEPS + 1, 1), tape, iters=1, clip=clip, progress=False)


# ---- transfer: a learned schedule is a file that applies to new seeds ---------------------------------------------
# A batch of another size may run other matmul kernels (another blocking, other SIMD widths: AVX2, AVX-512, AMX), which
# add the same products in another order. Each such sum is exact to a few float32 ulps (2**-23 ~ 1.2e-7 relative),
# and the rounding compounds over the sampler's steps and the decoder's layers: on an AVX-512/AMX CPU the toy
# pipeline's pixels moved by 1.8e-6 (15 ulps of 1.0). 2**-13 (~1.2e-4, 1024 ulps) of the pixel range leaves ~70x
# room for other CPUs and still fails for any real mistake: a wrong step or a wrong mix weight moves pixels by > 1e-2.
BATCH_ROUNDING = 2.0**-13


def assert_same_up_to_rounding(pixels, other, images, other_images):
    """Pixels in [0, 1] equal up to float rounding (relative to their range, 1), and the 8-bit images equal up to one
    level: rounding moves a pixel that sits on a rounding boundary to the neighbouring level, never further."""
    torch.testing.assert_close(pixels, other, rtol=BATCH_ROUNDING, atol=BATCH_ROUNDING)
    for a, b in zip(images, other_images, strict=True):
        levels = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert levels.max() <= 1


class StubEvaluator:
    """Stands in for the toyworld evaluator: content kept = 1 - mean |difference|; style = mean red level."""

    def __init__(self):
        self.asked = []

    def content_kept(self, edited, reference):
        return pd.DataFrame({"mask_iou": (1 - (edited - reference).abs().mean(dim=(1, 2, 3))).numpy()})

    def style_reached(self, images, factor, value):
        self.asked.append((factor, value))
        return images[:, 0].mean(dim=(1, 2))


def test_transfer_applies_the_saved_schedule_to_new_seeds(pipe, clip, run, tmp_path):
    path = run[0].schedule.save(tmp_path / "smiling.json")
    evaluator = StubEvaluator()
    out = transfer(pipe, path, [5, 6], clip=clip, evaluator=evaluator, progress=False)
    assert isinstance(out.grid, Image.Image) and out.grid.width > out.grid.height  # 2 rows, one column per seed
    m = out.metrics
    assert list(m["seed"]) == [5, 6]
    assert m["clip_direction"].between(-1, 1).all() and (m["perceptual"] >= 0).all()
    assert evaluator.asked == [("expression", "smiling")] * 2  # the target read off the toy captions
    assert np.allclose(m["style_gain"], m["style_edited"] - m["style_reference"])
    assert "content_mask_iou" in m

    # Same images as sampling the schedule by hand with the metadata's prompts, sampler and guidance. transfer
    # samples (pure c0, schedule) x seeds in one batch: the same batch by hand is the same image, bit for bit.
    cond = dk.encode(pipe, C0, C1)
    tape = dk.NoiseTape.from_seed(pipe, [5, 6], steps=STEPS)
    pure = dk.MixSchedule.constant(STEPS, 0.0)
    same_batch = dk.sample(pipe, cond, [pure, run[0].schedule], tape, 7.5, progress=False)
    assert torch.equal(out.edited_pixels, same_batch.pixels[2:]) and torch.equal(out.reference_pixels, same_batch.pixels[:2])
    # The schedule alone is a batch of another size: equal up to float rounding, the same 8-bit image to one level.
    alone = dk.sample(pipe, cond, run[0].schedule, tape, 7.5, progress=False)
    assert_same_up_to_rounding(out.edited_pixels, alone.pixels, out.edited, alone.images)


def test_transfer_refuses_another_step_count_unless_resampling(pipe, run):
    schedule = run[0].schedule
    with pytest.raises(ScheduleLengthError, match="resample"):
        transfer(pipe, schedule, [1], steps=STEPS + 1, clip=False, progress=False)
    out = transfer(pipe, schedule, [1], steps=STEPS + 1, resample=True, clip=False, progress=False)
    assert out.schedule.steps == STEPS + 1 and "clip_direction" not in out.metrics
    grid, metrics = out
    assert grid is out.grid and metrics is out.metrics


def test_a_schedule_for_another_model_is_refused_unless_asked(run):
    schedule = run[0].schedule.with_meta(model="CompVis/stable-diffusion-v1-4")
    toy = SimpleNamespace(name_or_path="toyworld-elsewhere/pipeline")
    with pytest.raises(ScheduleModelError, match="stable-diffusion-v1-4"):
        fit_schedule(schedule, toy, STEPS)
    with pytest.warns(UserWarning, match="learned on model"):
        assert fit_schedule(schedule, toy, STEPS, allow_other_model=True) is schedule
    assert isinstance(ScheduleModelError("x"), dk.errors.DisentkitError)


def test_an_empty_prompt_is_refused_before_any_work(pipe, tmp_path, monkeypatch, capsys):
    import disentkit.cli as cli
    from disentkit.errors import PromptError

    for c0, c1 in (("", C1), (C0, " "), ([C0, C0], [C1, ""])):
        with pytest.raises(PromptError, match="empty prompt"):
            dk.encode(pipe, c0, c1)  # so no optimisation can start from one
    dk.encode(pipe, C0, C1, negative_prompt="")  # the unconditional prompt may be empty (it is by default)

    monkeypatch.setattr(cli, "_load", lambda args: pytest.fail("the model was loaded for an empty prompt"))
    out = tmp_path / "out"
    for c0, c1 in (("a photo of a face", ""), ("  ", "a photo of a face, smiling")):
        assert cli.main(["disentangle", "--c0", c0, "--c1", c1, "--out", str(out)]) == 2
        assert "PromptError" in capsys.readouterr().err and not out.exists()


def test_the_edit_target_and_its_alternatives_are_read_off_toyworld_captions():
    from disentkit.errors import PromptError
    from disentkit.notebooks import style_target
    from disentkit.targets import edit_alternatives, edit_target, edit_target_or_none

    assert edit_target(C0, C1) == style_target(C0, C1) == ("expression", "smiling")
    assert edit_alternatives(C0, C1) == ["a photo of a face, neutral", "a photo of a face, frowning"]
    assert edit_alternatives("a photo of a star", "a sketch of a star") == ["a photo of a star"]
    for c0, c1 in (("a cat", "a cat, red"), (C0, C0), (C0, "a photo of a face, smiling, red")):
        with pytest.raises(PromptError):
            edit_target(c0, c1)
        assert edit_target_or_none(c0, c1) is None and edit_alternatives(c0, c1) == [c0]
