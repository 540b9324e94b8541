"""Prefix-shared sweeps give sample()'s images, in sample()'s order, with fewer UNet evaluations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import disentkit as dk
from disentkit.errors import InvalidScheduleError, ScheduleLengthError
from disentkit.sweeps import count_branch_steps, sweep, sweep_switch

STEPS = 5
SWITCH = [0, 2, 5]  # k=0 forks at the very first call, k=5 (= STEPS) never leaves the trunk
# A sweep runs each image in a batch of another composition than sample() does, so other matmul kernels may add the
# same products in another order: float32 rounding (2**-23 relative) compounded over the steps. 2**-13 of each
# tensor's range is ~1000 ulps, far above that rounding on any CPU and far below what a wrong step or a wrong fork
# changes (> 1e-2 here).
ROUNDING = 2.0**-13


@pytest.fixture(scope="module")
def conds(sd1_pipe, sdxl_pipe):
    return {
        "sd1": dk.encode(sd1_pipe, "a photo of person", "a photo of person, smiling"),
        "sdxl": dk.encode(sdxl_pipe, "a photo of person", "a photo of person, smiling"),
    }


class UNetCounter:
    """Forward hook on the UNet: how many calls, and how many batch rows in all."""

    def __init__(self, unet):
        self.calls, self.rows = 0, 0
        self.handle = unet.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        self.rows += args[0].shape[0]

    def remove(self):
        self.handle.remove()


def _assert_same(a: dk.SampleResult, b: dk.SampleResult):
    """The guarantee across batch compositions: equal up to float rounding, the same 8-bit image up to one level."""
    assert a.runs.equals(b.runs)
    assert [s.label for s in a.schedules] == [s.label for s in b.schedules]
    torch.testing.assert_close(b.pixels, a.pixels, rtol=ROUNDING, atol=ROUNDING)  # pixels span [0, 1]
    torch.testing.assert_close(b.latents, a.latents, rtol=ROUNDING, atol=ROUNDING * a.latents.abs().max().item())
    levels = np.stack([np.asarray(im, dtype=np.int16) for im in a.images + b.images]).reshape(2, len(a.images), -1)
    assert np.abs(levels[0] - levels[1]).max() <= 1


def test_the_same_sweep_is_the_same_image_bit_for_bit(sd1_pipe, conds):
    tape = dk.NoiseTape.from_seed(sd1_pipe, [3, 4], steps=STEPS, scheduler="ddim", eta=0.7)
    first, again = (sweep_switch(sd1_pipe, conds["sd1"], tape, SWITCH, progress=False) for _ in range(2))
    assert torch.equal(first.pixels, again.pixels) and torch.equal(first.latents, again.latents)


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.7), ("plms", 0.0), ("dpm", 0.0)])
def test_switch_sweep_equals_independent_sampling(kind, sampler, eta, sd1_pipe, sdxl_pipe, conds):
    pipe = {"sd1": sd1_pipe, "sdxl": sdxl_pipe}[kind]
    tape = dk.NoiseTape.from_seed(pipe, [3, 4], steps=STEPS, scheduler=sampler, eta=eta)
    schedules = [dk.MixSchedule.switch(STEPS, k, 0.0, 1.2) for k in SWITCH]
    expected = dk.sample(pipe, conds[kind], schedules, tape, progress=False)
    got = sweep_switch(pipe, conds[kind], tape, SWITCH, late=1.2, progress=False)
    _assert_same(expected, got)
    # The runs really differ, so equality above is not the trivial "every branch is the trunk".
    first, last = got.runs.index[got.runs["label"] == "switch@0"], got.runs.index[got.runs["label"] == "switch@5"]
    assert (got.latents[first] - got.latents[last]).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", ["ddim", "plms"])
def test_unet_evaluations_are_shared(sampler, sd1_pipe, conds):
    """One UNet call per sampler call for all branches; rows = 2 (guidance) x seeds x live branches."""
    B = 2
    tape = dk.NoiseTape.from_seed(sd1_pipe, [3, 4], steps=STEPS, scheduler=sampler)
    counter = UNetCounter(sd1_pipe.unet)
    try:
        out = sweep_switch(sd1_pipe, conds["sd1"], tape, SWITCH, progress=False)
    finally:
        counter.remove()
    calls = STEPS + 1 if sampler == "plms" else STEPS  # PLMS evaluates step 0 twice
    # The trunk lives until the last switch step; branch k lives from step k on (its PLMS warm-up call included
    # when k = 0, since step 0's two calls both use step 0's weights).
    extra = 1 if sampler == "plms" else 0
    trunk = max(SWITCH) + extra
    branches = sum(STEPS - k + (extra if k == 0 else 0) for k in SWITCH if k < max(SWITCH))
    assert counter.calls == calls
    assert counter.rows == 2 * B * (trunk + branches)
    assert out.meta["unet_rows"] == counter.rows
    assert out.meta["unshared_rows"] == 2 * B * len(SWITCH) * calls
    assert count_branch_steps(out.schedules, sampler, STEPS) == trunk + branches


def test_max_batch_chunks_calls_without_changing_images(sd1_pipe, conds):
    tape = dk.NoiseTape.from_seed(sd1_pipe, [3, 4], steps=STEPS)
    whole = sweep_switch(sd1_pipe, conds["sd1"], tape, SWITCH, progress=False)
    counter = UNetCounter(sd1_pipe.unet)
    try:
        chunked = sweep_switch(sd1_pipe, conds["sd1"], tape, SWITCH, max_batch=3, progress=False)
    finally:
        counter.remove()
    assert counter.rows == whole.meta["unet_rows"]
    assert counter.calls > STEPS  # at least one step had more than 3 live runs and was split
    _assert_same(whole, chunked)


def test_general_sweep_shares_arbitrary_prefixes(sd1_pipe):
    """Several pairs, duplicates, ramps, per-token schedules: the trie matches sample() run for run."""
    cond = dk.encode(sd1_pipe, ["a photo of person", "a photo of a lake"], ["a photo of person, angry", "a lake, red"])
    tape = dk.NoiseTape.from_seed(sd1_pipe, [5], steps=STEPS, scheduler="dpm")
    mask = torch.zeros(cond.tokens)
    mask[3:6] = 1
    schedules = [
        dk.MixSchedule.switch(STEPS, 3),
        dk.MixSchedule.ramp(STEPS, 3, 5),  # pure c0 one step longer than switch@3, then its own path
        dk.MixSchedule.switch(STEPS, 3),  # a duplicate: never forks from the first one
        dk.MixSchedule.switch(STEPS, 2).on_tokens(mask),  # per-token weights
        dk.MixSchedule.constant(STEPS, 0.5),
    ]
    expected = dk.sample(sd1_pipe, cond, schedules, tape, progress=False)
    got = sweep(sd1_pipe, cond, schedules, tape, progress=False)
    _assert_same(expected, got)
    # 2 guidance rows x 2 pairs x 1 seed x the distinct prefixes summed over steps.
    assert got.meta["unet_rows"] == 2 * 2 * count_branch_steps(schedules, "dpm", STEPS)
    assert got.meta["unet_rows"] < got.meta["unshared_rows"]


def test_trajectory_and_callback_match_sample(sd1_pipe, conds):
    tape = dk.NoiseTape.from_seed(sd1_pipe, [3, 4], steps=STEPS, scheduler="plms")
    schedules = [dk.MixSchedule.switch(STEPS, k) for k in (1, 3)]
    seen = []
    expected = dk.sample(sd1_pipe, conds["sd1"], schedules, tape, record=True, progress=False)
    got = sweep(sd1_pipe, conds["sd1"], schedules, tape, record=True, callback=seen.append, progress=False)
    a, b = expected.trajectory, got.trajectory
    assert torch.equal(a.calls, b.calls) and torch.equal(a.steps, b.steps)
    assert a.x_t.shape == b.x_t.shape == (STEPS + 1, 4, *tape.latent_shape)
    assert (a.x_t - b.x_t).abs().max() < 1e-3
    assert (a.x0_pred - b.x0_pred).abs().max() < 1e-3
    assert len(seen) == STEPS + 1 and seen[-1].lam.shape == (4, conds["sd1"].tokens)
    assert seen[-1].lam[:, 0].tolist() == [1.0, 1.0, 1.0, 1.0] and seen[2].lam[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_bad_schedules_raise(sd1_pipe, conds):
    tape = dk.NoiseTape.from_seed(sd1_pipe, 1, steps=STEPS)
    with pytest.raises(InvalidScheduleError):
        sweep(sd1_pipe, conds["sd1"], [], tape, progress=False)
    with pytest.raises(ScheduleLengthError):
        sweep(sd1_pipe, conds["sd1"], [dk.MixSchedule.switch(STEPS + 1, 2)], tape, progress=False)
    with pytest.raises(InvalidScheduleError):
        sweep_switch(sd1_pipe, conds["sd1"], tape, [STEPS + 1], progress=False)


@pytest.mark.slow
def test_compiled_sweep_and_sample_give_the_same_images(sd1_pipe, conds):
    # torch.compile (inductor; needs a C++ compiler on the CPU) must change the speed, never the images.
    tape = dk.NoiseTape.from_seed(sd1_pipe, [3, 4], steps=STEPS)
    eager = sweep_switch(sd1_pipe, conds["sd1"], tape, SWITCH, progress=False)
    compiled = sweep_switch(sd1_pipe, conds["sd1"], tape, SWITCH, progress=False, compile=True)
    _assert_same(eager, compiled)
    schedules = [dk.MixSchedule.switch(STEPS, k) for k in SWITCH]
    _assert_same(eager, dk.sample(sd1_pipe, conds["sd1"], schedules, tape, progress=False, compile=True))
    assert not hasattr(sd1_pipe.unet, "_orig_mod")  # the user's pipeline keeps its own, uncompiled UNet
