"""The `disentkit` command line on a saved tiny pipeline and a saved tiny CLIP: each subcommand writes its images,
its schedule and a metrics CSV, and the outputs of one feed the next (disentangle -> transfer, disentangle -> edit)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from disentkit.cli import main, parse_seeds
from disentkit.losses import save_tiny_clip

STEPS = 3
C0, C1 = "a photo of a face", "a photo of a face, smiling"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def learned(tiny_pipe_dir, clip_dir, tmp_path_factory):
    """`disentkit disentangle` with 2 iterations; returns its output folder."""
    out = tmp_path_factory.mktemp("disentangle") / "smile"  # does not exist yet: the CLI creates it
    argv = ["disentangle", "--c0", C0, "--c1", C1, "--seed", "42", "--switch", "1", "--late", "1.1",
            "--steps", str(STEPS), "--iters", "2", "--model", str(tiny_pipe_dir), "--clip", str(clip_dir),
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out, argv


def test_disentangle_writes_images_schedule_and_metrics(learned, tiny_pipe_dir):
    out, _ = learned
    for name in ("original.png", "edited.png"):
        assert Image.open(out / name).size == (32, 32)
    meta = json.loads((out / "schedule.json").read_text())["meta"]
    assert meta["prompts"] == [C0, C1] and meta["steps"] == STEPS and meta["guidance"] == 7.5
    assert meta["model"] == str(tiny_pipe_dir.resolve())
    assert meta["init"]["weights"] == [0.0, pytest.approx(1.1), pytest.approx(1.1)]
    history = pd.read_csv(out / "metrics.csv")
    assert list(history["iteration"]) == [0, 1, 2] and {"loss", "dir", "perc"} <= set(history.columns)


def test_disentangle_again_resumes_from_its_checkpoint(learned, capsys):
    out, argv = learned
    before = pd.read_csv(out / "metrics.csv")
    longer = [a if a != "2" or argv[i - 1] != "--iters" else "3" for i, a in enumerate(argv)]
    assert main(longer) == 0
    after = pd.read_csv(out / "metrics.csv")
    assert list(after["iteration"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(after.loc[:1, "loss"], before.loc[:1, "loss"], rtol=0, atol=1e-7)  # not recomputed


def test_disentangle_with_tensorwise_adam_learns_only_from_the_switch(tiny_pipe_dir, clip_dir, tmp_path):
    argv = ["disentangle", "--c0", C0, "--c1", C1, "--switch", "1", "--steps", str(STEPS), "--iters", "2",
            "--optimizer", "tensorwise-adam", "--learn-from-switch", "--model", str(tiny_pipe_dir),
            "--clip", str(clip_dir), "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((tmp_path / "out" / "schedule.json").read_text())["meta"]
    assert meta["optimizer"] == "tensorwise-adam" and meta["learn_steps"] == list(range(1, STEPS))
    history = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert (history["lambda_0"] == 0.0).all()  # the c0 step before the switch was not learned


def test_disentangle_with_floors_adds_a_silent_floor_per_term(tiny_pipe_dir, clip_dir, tmp_path):
    argv = ["disentangle", "--c0", C0, "--c1", C1, "--switch", "1", "--steps", str(STEPS), "--iters", "2",
            "--floors", "10", "--model", str(tiny_pipe_dir), "--clip", str(clip_dir), "--out", str(tmp_path / "out"),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    history = pd.read_csv(tmp_path / "out" / "metrics.csv")
    first = history.iloc[0]
    assert first[["dir_floor", "perc_floor"]].tolist() == pytest.approx([0, 0], abs=1e-5)  # the start is the floor
    assert first["loss"] == pytest.approx(first["dir"] + 0.05 * first["perc"], rel=1e-5)


def test_transfer_reads_model_and_prompts_from_the_schedule(learned, clip_dir, tmp_path):
    out, _ = learned
    dest = tmp_path / "deep" / "transfer"
    assert main(["transfer", str(out / "schedule.json"), "--seeds", "3-4", "--clip", str(clip_dir), "--out", str(dest), "--quiet"]) == 0
    metrics = pd.read_csv(dest / "metrics.csv")
    assert list(metrics["seed"]) == [3, 4] and {"clip_direction", "perceptual"} <= set(metrics.columns)
    assert Image.open(dest / "grid.png").width > 0
    for s in (3, 4):
        assert (dest / f"edited_seed{s}.png").is_file() and (dest / f"original_seed{s}.png").is_file()
    assert (dest / "schedule.json").is_file()
    assert not [p for p in dest.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temporaries


def test_transfer_with_another_step_count_fails_clearly_unless_resampled(learned, clip_dir, tmp_path, capsys):
    out, _ = learned
    argv = ["transfer", str(out / "schedule.json"), "--seeds", "0", "--steps", "4", "--clip", str(clip_dir), "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ScheduleLengthError" in err and "add --resample" in err and "schedule.resample(" not in err  # a CLI fix
    assert main([*argv, "--resample"]) == 0
    assert len(json.loads((tmp_path / "schedule.json").read_text())["weights"]) == 4


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory):
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    disc = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).astype(float)
    rgb = np.stack([0.9 * disc + 0.1, 0.4 * yy + 0.2, 0.6 - 0.4 * disc], axis=2)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path)
    return path


def test_edit_with_a_learned_schedule(learned, tiny_pipe_dir, clip_dir, photo_path, tmp_path):
    out, _ = learned
    assert main(["edit", "--input", str(photo_path), "--c0", C0, "--c1", C1, "--schedule", str(out / "schedule.json"),
                 "--model", str(tiny_pipe_dir), "--clip", str(clip_dir), "--out", str(tmp_path), "--quiet"]) == 0  # fmt: skip
    for name in ("input.png", "reconstruction.png", "edited.png", "schedule.json", "tape.safetensors"):
        assert (tmp_path / name).is_file()
    m = pd.read_csv(tmp_path / "metrics.csv").iloc[0]
    assert m["method"] == "exact" and m["steps"] == STEPS
    assert m["psnr_reconstruction_vs_vae_db"] > 40  # exact inversion: back to what the VAE makes of the photo


def test_edit_warns_when_the_schedule_was_made_for_another_sampler(learned, tiny_pipe_dir, clip_dir, photo_path,
                                                                    tmp_path):
    out, _ = learned
    data = json.loads((out / "schedule.json").read_text())
    data["meta"]["scheduler"] = "dpm"
    (tmp_path / "dpm.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="'dpm' sampler; the edit runs DDIM"):
        assert main(["edit", "--input", str(photo_path), "--c0", C0, "--c1", C1, "--schedule", str(tmp_path / "dpm.json"),
                     "--model", str(tiny_pipe_dir), "--clip", str(clip_dir), "--out", str(tmp_path / "o"), "--quiet"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "o" / "schedule.json").read_text())["meta"]["scheduler"] == "ddim"  # what it ran


def test_edit_with_a_switch_and_ddim_inversion(tiny_pipe_dir, clip_dir, photo_path, tmp_path):
    assert main(["edit", "--input", str(photo_path), "--c0", C0, "--c1", C1, "--switch", "1", "--steps", "2",
                 "--method", "ddim", "--model", str(tiny_pipe_dir), "--clip", str(clip_dir), "--out", str(tmp_path), "--quiet"]) == 0  # fmt: skip
    m = pd.read_csv(tmp_path / "metrics.csv").iloc[0]
    assert m["guidance"] == 1.0 and np.isfinite(m["psnr_reconstruction_db"])
    assert json.loads((tmp_path / "schedule.json").read_text())["weights"] == [0.0, 1.0]


def test_edit_of_a_non_image_fails_with_a_typed_error(tiny_pipe_dir, clip_dir, tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    code = main(["edit", "--input", str(bad), "--c0", C0, "--c1", C1, "--switch", "1", "--steps", "2",
                 "--model", str(tiny_pipe_dir), "--clip", str(clip_dir), "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert code == 2 and "InvalidImageError" in capsys.readouterr().err
    # Checked before any model is loaded: a model folder that does not exist is not even looked at.
    code = main(["edit", "--input", str(bad), "--c0", C0, "--c1", C1, "--model", str(tmp_path / "no-model"),
                 "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert code == 2 and "InvalidImageError" in capsys.readouterr().err


def test_edit_checks_what_it_can_before_loading_a_model(learned, photo_path, tmp_path, capsys):
    out, _ = learned
    base = ["edit", "--input", str(photo_path), "--c0", C0, "--c1", C1, "--model", str(tmp_path / "no-model"),
            "--out", str(tmp_path / "o"), "--quiet"]  # fmt: skip
    (tmp_path / "broken.json").write_text("{not json")
    for extra, error in ((["--switch", "30", "--steps", "10"], "InvalidScheduleError|ScheduleLengthError|switch"),
                         (["--steps", "0"], "steps"),
                         (["--schedule", str(tmp_path / "broken.json")], "TapeFileError|InvalidScheduleError"),
                         (["--schedule", str(out / "schedule.json"), "--steps", "7"], "ScheduleLengthError")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert re.search(error, err) and "ModelNotFoundError" not in err, err  # the model folder was never looked at


@pytest.mark.parametrize("steps, c0_steps", [(None, 20), (24, 10), (3, 1)])
def test_edit_as_the_issue_writes_it_uses_the_default_switch(tiny_pipe_dir, clip_dir, photo_path, tmp_path, steps,
                                                              c0_steps):
    # `disentkit edit --input photo.png --c0 ... --c1 ... --out DIR`: no schedule named, so c0 for 40% of the steps
    # (disentangle's 20 of 50), then c1; also for runs shorter than 20 steps.
    argv = ["edit", "--input", str(photo_path), "--c0", C0, "--c1", C1, "--model", str(tiny_pipe_dir),
            "--clip", str(clip_dir), "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(argv if steps is None else [*argv, "--steps", str(steps)]) == 0
    n = steps or 50
    assert json.loads((tmp_path / "schedule.json").read_text())["weights"] == [0.0] * c0_steps + [1.0] * (n - c0_steps)
    assert (tmp_path / "edited.png").is_file() and (tmp_path / "metrics.csv").is_file()


def test_schedule_errors_name_the_flag_that_fixes_them():
    from types import SimpleNamespace

    from disentkit.cli import _for_the_command_line
    from disentkit.errors import ScheduleLengthError
    from disentkit.schedules import MixSchedule
    from disentkit.transfer import ScheduleModelError, fit_schedule

    schedule = MixSchedule.switch(3, 1).with_meta(model="model-a")
    for error, call in ((ScheduleLengthError, lambda: fit_schedule(schedule, steps=4)),
                        (ScheduleModelError, lambda: fit_schedule(schedule, SimpleNamespace(name_or_path="model-b")))):
        with pytest.raises(error) as caught:
            call()
        python_fix = "resample" if error is ScheduleLengthError else "allow_other_model=True"
        assert python_fix in str(caught.value)  # the Python message says how to fix it in Python...
        text = _for_the_command_line(caught.value)
        fix = "--resample to adapt it" if error is ScheduleLengthError else "--allow-other-model to apply it anyway"
        assert text.endswith(f"; add {fix}.") and "resample(" not in text and "=True" not in text, text


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,4,7-9") == [1, 4, 7, 8, 9]
    assert parse_seeds("42") == [42]
    with pytest.raises(Exception, match="seeds"):
        parse_seeds("5-2")


def test_usage_errors_exit_with_argparse(capsys):
    with pytest.raises(SystemExit):
        main(["disentangle", "--c0", C0])  # --c1 and --out missing
    with pytest.raises(SystemExit):
        main(["transfer", "s.json", "--seeds", "a-b", "--out", "x"])
