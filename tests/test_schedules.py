"""MixSchedule: constructors, validation, resampling and files."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import disentkit as dk
from disentkit.errors import InvalidScheduleError, ScheduleLengthError, TapeFileError


def test_switch_puts_c0_before_and_c1_from_the_switch_step():
    w = dk.MixSchedule.switch(steps=10, at=4).weights
    assert w[:4].tolist() == [0.0] * 4  # steps 0..3 (the noisiest) keep c0
    assert w[4:].tolist() == [1.0] * 6
    assert dk.MixSchedule.switch(10, 4, after=1.2).weights[-1].item() == pytest.approx(1.2)


@pytest.mark.parametrize("at", [-1, 11])
def test_switch_outside_the_steps_is_refused(at):
    with pytest.raises(InvalidScheduleError, match="0..10"):
        dk.MixSchedule.switch(10, at)


def test_ramp_and_sigmoid_shapes():
    ramp = dk.MixSchedule.ramp(10, start=2, end=6).weights
    assert ramp[:3].tolist() == [0, 0, 0] and ramp[6:].tolist() == [1, 1, 1, 1]
    assert torch.all(ramp[1:] >= ramp[:-1])
    sig = dk.MixSchedule.sigmoid(50, center=20, width=2).weights
    assert sig[0] < 0.01 and sig[-1] > 0.99 and abs(sig[20] - 0.5) < 1e-6


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(bad):
    with pytest.raises(InvalidScheduleError, match="steps \\[3\\]"):
        dk.MixSchedule.from_array([0, 0, 0, bad, 1])


def test_weights_may_leave_zero_one():
    s = dk.MixSchedule.from_array([-0.5, 0.0, 1.0, 1.2])
    assert s.weights.tolist() == pytest.approx([-0.5, 0.0, 1.0, 1.2])


def test_from_array_takes_a_tensor_and_copies_it():
    import warnings

    source = torch.tensor([0.0, 0.5, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy 2 warns when np.array() is given a tensor directly
        s = dk.MixSchedule.from_array(source)
        graph = dk.MixSchedule.from_array(source.clone().requires_grad_(True) * 2)
        bf16 = dk.MixSchedule.from_array(source.to(torch.bfloat16))  # NumPy has no bfloat16
    assert s.weights.tolist() == [0.0, 0.5, 1.0] and bf16.weights.tolist() == [0.0, 0.5, 1.0]
    assert graph.weights.tolist() == [0.0, 1.0, 2.0] and not graph.weights.requires_grad
    source[0] = 9.0  # a copy: the schedule does not change with the tensor it came from
    assert s.weights[0] == 0.0


def test_length_error_says_how_to_fix():
    with pytest.raises(ScheduleLengthError, match=r"30 weights but the sampler runs 50 steps; use schedule.resample\(50\)"):
        dk.MixSchedule.constant(30, 1.0).check_steps(50)


def test_resample_keeps_the_curve():
    s = dk.MixSchedule.ramp(11, 0, 10)
    r = s.resample(21)
    assert r.steps == 21 and r.weights[0] == 0 and r.weights[-1] == 1
    assert r.weights[10].item() == pytest.approx(0.5)
    assert s.resample(11) is s


def test_dataframe_round_trip_in_any_row_order():
    s = dk.MixSchedule.sigmoid(8, 3)
    df = s.to_dataframe().sample(frac=1.0, random_state=0)
    back = dk.MixSchedule.from_dataframe(df)
    assert torch.equal(back.weights, s.weights)
    with pytest.raises(InvalidScheduleError, match="exactly once"):
        dk.MixSchedule.from_dataframe(pd.DataFrame({"step": [0, 2], "lambda": [0, 1]}))


def test_save_load_round_trip(tmp_path):
    s = dk.MixSchedule.switch(50, 20, after=1.1).with_meta(model="toyworld", guidance=7.5)
    path = s.save(tmp_path / "sub" / "s.json")  # folders are created
    back = dk.MixSchedule.load(path)
    assert torch.equal(back.weights, s.weights) and back.meta == s.meta and back.label == s.label
    assert not list((tmp_path / "sub").glob(".*tmp"))  # no temporary file left behind


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "other"}), ""])
def test_corrupt_schedule_file(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TapeFileError):
        dk.MixSchedule.load(path)


def test_per_token_schedule():
    base = dk.MixSchedule.switch(6, 2)
    mask = np.zeros(5)
    mask[3] = 1
    tok = base.on_tokens(mask)
    assert tok.per_token and tok.weights.shape == (6, 5)
    assert tok.weights[:, 3].tolist() == base.weights.tolist()
    assert tok.weights[:, [0, 1, 2, 4]].abs().sum() == 0


def test_mix_is_the_papers_convention():
    c0, c1 = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    assert torch.equal(dk.mix(c0, c1, torch.tensor([0.0, 0.0])), c0)  # lambda = 0: the neutral prompt
    assert torch.equal(dk.mix(c0, c1, torch.tensor([1.0, 1.0])), c1)  # lambda = 1: the styled prompt
    out = dk.mix(c0, c1, torch.tensor([[0.25, 0.5, 1.2], [0.0, 0.0, 0.0]]))  # per token
    assert out[0, :, 0].tolist() == pytest.approx([0.25, 0.5, 1.2]) and out[1].abs().sum() == 0
