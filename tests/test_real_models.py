"""What an analyst meets on a real model, on random-weight folders laid out like the hub repositories
(``disentkit.testing.save_hub_layout``): image sizes and aspect ratios, exact replays beside other schedules, the
safety checker, model identity, a command line that fails early, and output that is quiet where work is short."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

import disentkit as dk
from disentkit.cli import main
from disentkit.errors import ImageSizeError, ScheduleModelError
from disentkit.inversion import fit_image, image_size_for
from disentkit.losses import psnr
from disentkit.pipeline import model_fingerprint, model_id, quiet_loading, same_model
from disentkit.testing import save_hub_layout
from disentkit.transfer import fit_schedule

C0, C1 = "a photo of a face", "a photo of a face, smiling"
KINDS = ("sd1", "sd2", "sdxl")
L1 = {"l1": lambda edited, reference: (edited - reference).abs().mean()}  # a loss that needs no CLIP


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The four hub-layout folders: sd1 (with a safety checker), sd2, sdxl and a CLIP."""
    root = tmp_path_factory.mktemp("hub")
    return {kind: save_hub_layout(kind, root / kind) for kind in (*KINDS, "clip")}


@pytest.fixture(scope="module")
def pipes(hub):
    """Loaded once per module; tests must not change them (load a fresh one to change its safety checker)."""
    return {kind: dk.load_pipeline(hub[kind]) for kind in KINDS}


@pytest.fixture(scope="module")
def portrait():
    """A 64 px wide, 96 px tall smooth picture (uint8 RGB): a non-default size and aspect ratio on every kind."""
    yy, xx = np.mgrid[0:96, 0:64]
    disc = (((xx - 32) / 20.0) ** 2 + ((yy - 40) / 24.0) ** 2 < 1).astype(float)
    rgb = np.stack([0.2 + 0.6 * disc, 0.3 + 0.4 * yy / 95, 0.8 - 0.5 * disc], axis=2)
    return (rgb * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def learned(pipes):
    """A schedule learned (one iteration) on the sd1 folder at 96x64 px."""
    pipe = pipes["sd1"]
    tape = dk.NoiseTape.from_seed(pipe, 3, steps=4, height=96, width=64)
    result = dk.optimize(pipe, dk.encode(pipe, C0, C1), dk.MixSchedule.switch(4, 2), tape, losses=L1, iters=1,
                         progress=False)  # fmt: skip
    return result.schedule


def _vae_round_trip(pipe, image):
    with torch.no_grad():
        return dk.decode(pipe, dk.encode_image(pipe, image)).float().cpu()


# ---- the folders -------------------------------------------------------------------------------------------------
def test_hub_layout_folders_look_like_their_repositories(hub, pipes):
    index = json.loads((hub["sd1"] / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"] and index["requires_safety_checker"]
    read = lambda *parts: json.loads(hub["sd1"].joinpath(*parts).read_text())  # noqa: E731
    assert read("scheduler", "scheduler_config.json")["_class_name"] == "PNDMScheduler"
    assert read("tokenizer", "tokenizer_config.json")["bos_token"]["__type"] == "AddedToken"  # the legacy format
    files = {p.name for p in (hub["sd1"] / "tokenizer").iterdir()}
    assert files >= {"vocab.json", "merges.txt", "special_tokens_map.json"}
    assert pipes["sd1"].safety_checker is not None and pipes["sd1"].feature_extractor is not None
    assert pipes["sd2"].scheduler.config.prediction_type == "v_prediction" and pipes["sd2"].safety_checker is None
    xl = pipes["sdxl"]
    assert xl.vae.config.force_upcast and xl.vae.config.scaling_factor == 0.13025 and xl.text_encoder_2 is not None
    for kind, side in (("sd1", 64), ("sd2", 96), ("sdxl", 128)):
        pipe = pipes[kind]
        assert pipe.vae_scale_factor == 8 and dk.NoiseTape.from_seed(pipe, 0, 2).image_size(pipe) == (side, side)
    clip = dk.load_clip(hub["clip"])
    assert clip.image_size == 224
    assert json.loads((hub["clip"] / "preprocessor_config.json").read_text())["crop_size"] == 224


# ---- 1. sizes are explicit, kept and checked ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_an_inverted_photo_keeps_its_size_and_aspect_ratio(pipes, portrait, kind):
    pipe = pipes[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no resizing, no warning
        tape = dk.invert(pipe, portrait, C0, steps=3, method="exact", guidance=3.0, progress=False)
    assert tape.image_size(pipe) == (96, 64) and tape.latent_shape == (4, 12, 8)
    out = dk.sample(pipe, dk.encode(pipe, C0, C1), dk.MixSchedule.switch(3, 1), tape, 3.0, progress=False)
    assert out.pixels.shape == (1, 3, 96, 64) and out.images[0].size == (64, 96)


def test_sizes_round_to_the_vae_factor_and_large_photos_are_scaled_down(pipes):
    pipe = pipes["sd1"]  # 64 px by default, factor 8
    assert image_size_for(pipe, (101, 70)) == (104, 72)  # each side to its nearest multiple of 8
    assert image_size_for(pipe, (96, 64), height=48) == (48, 32)  # one side given: the other keeps the proportions
    with pytest.warns(UserWarning, match="same aspect ratio"):
        h, w = image_size_for(pipe, (400, 600))
    assert h * w <= 2 * 64 * 64 and abs(w / h - 1.5) < 0.2
    with pytest.raises(ImageSizeError, match="multiples of 8"):
        image_size_for(pipe, (96, 64), height=50, width=64)
    with pytest.raises(ImageSizeError, match="nearest are 48x64"):
        dk.NoiseTape.from_seed(pipe, 0, 2, height=50, width=64)


def test_crop_and_pad_only_when_asked(portrait):
    pixels = dk.load_image(portrait)  # (1, 3, 96, 64)
    with pytest.warns(UserWarning, match="aspect ratio"):
        squashed = fit_image(pixels, (64, 64))  # resize: the proportions change, and it says so
    assert squashed.shape[-2:] == (64, 64)
    cropped = fit_image(pixels, (64, 64), "crop")  # the centre 64x64 of the 96x64 picture, unscaled
    torch.testing.assert_close(cropped, pixels[..., 16:80, :], rtol=0, atol=0)
    padded = fit_image(pixels, (96, 96), "pad")  # black bars left and right
    torch.testing.assert_close(padded[..., 16:80], pixels, rtol=0, atol=0)
    assert padded[..., :16].abs().max() == 0 and padded[..., 80:].abs().max() == 0


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_a_non_default_size_matches_diffusers_at_that_size(pipes, kind):
    # SDXL's time ids carry the size: a mismatch would show here.
    pipe = pipes[kind]
    ref = type(pipe)(**{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)})
    ref.set_progress_bar_config(disable=True)
    theirs = ref(C0, height=96, width=64, num_inference_steps=3, guidance_scale=7.5,  # SDXL's default is 5
                 generator=torch.Generator().manual_seed(5), output_type="np").images  # fmt: skip
    tape = dk.NoiseTape.from_seed(pipe, 5, steps=3, height=96, width=64)
    ours = dk.sample(pipe, dk.encode(pipe, C0, C0), dk.MixSchedule.constant(3, 0.0), tape, progress=False)
    np.testing.assert_allclose(ours.pixels.permute(0, 2, 3, 1).numpy(), theirs, atol=2e-4)


def test_a_schedule_records_its_size_and_transfer_draws_new_seeds_at_it(pipes, learned):
    pipe = pipes["sd1"]
    assert (learned.meta["height"], learned.meta["width"]) == (96, 64) and learned.meta["model_fingerprint"]
    moved = dk.transfer(pipe, learned, [0, 1], clip=False, progress=False)  # not at the model's 64x64
    assert moved.edited_pixels.shape == (2, 3, 96, 64)
    with pytest.raises(ImageSizeError, match="learned at 64x96 px but this run makes 64x64.*allow_other_size"):
        dk.transfer(pipe, learned, [0], height=64, width=64, clip=False, progress=False)
    with pytest.warns(UserWarning, match="learned at 64x96"):
        square = dk.transfer(pipe, learned, [0], height=64, width=64, allow_other_size=True, clip=False, progress=False)
    assert square.edited_pixels.shape == (1, 3, 64, 64)


# ---- 2. an exact tape replays exactly, beside other schedules too -------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_an_exact_tape_replays_exactly_in_a_batch_with_a_second_schedule(pipes, portrait, kind, tmp_path):
    pipe = pipes[kind]
    tape = dk.NoiseTape.load(dk.invert(pipe, portrait, C0, steps=4, method="exact", guidance=7.5, progress=False)
                             .save(tmp_path / "tape.safetensors"))  # fmt: skip
    assert tape.exact  # the file says so
    cond = dk.encode(pipe, C0, C1)
    plain = dk.MixSchedule.constant(4, 0.0)
    together = dk.sample(pipe, cond, [plain, dk.MixSchedule.switch(4, 2)], tape, 7.5, progress=False)  # as `edit` does
    alone = dk.sample(pipe, cond, plain, tape, 7.5, progress=False)
    assert torch.equal(together.latents[:1], alone.latents) and torch.equal(together.pixels[:1], alone.pixels)
    assert psnr(together.pixels[:1], _vae_round_trip(pipe, portrait)).item() > 100  # ~127 dB here; ~14-70 before
    schedule = dk.MixSchedule.switch(4, 2).with_meta(prompts=[C0, C1], height=96, width=64)
    moved = dk.transfer(pipe, schedule, tape, clip=False, progress=False)  # transfer's batch: [pure c0, schedule]
    assert torch.equal(moved.reference_pixels, alone.pixels)
    swept = dk.sweep(pipe, cond, [plain, dk.MixSchedule.switch(4, 1), schedule], tape, 7.5, progress=False)
    assert torch.equal(swept.latents[:1], alone.latents)  # the sweep's shared trunk, beside its forks
    assert psnr(swept.pixels[:1], _vae_round_trip(pipe, portrait)).item() > 100


# ---- 3. the safety checker runs, and can be turned off --------------------------------------------------------------
def _max_concept_cosines(pipe, images) -> torch.Tensor:
    from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

    checker = pipe.safety_checker
    clip_input = pipe.feature_extractor(images, return_tensors="pt").pixel_values
    embeds = checker.visual_projection(checker.vision_model(clip_input)[1])
    return cosine_distance(embeds, checker.concept_embeds).max(dim=1).values


def test_the_safety_checker_flags_and_blacks_out_as_diffusers_does(hub):
    pipe = dk.load_pipeline(hub["sd1"])  # its own copy: the thresholds change below
    seeds = list(range(6))
    tape = dk.NoiseTape.from_seed(pipe, seeds, steps=3)
    cond = dk.encode(pipe, C0, C0)
    plain = dk.MixSchedule.constant(3, 0.0)
    unfiltered = dk.sample(pipe, cond, plain, tape, progress=False)  # the folder's checker flags nothing
    assert unfiltered.nsfw == [False] * 6
    with torch.no_grad():  # a threshold among the images' scores: some are flagged, some are not
        pipe.safety_checker.concept_embeds_weights.fill_(float(_max_concept_cosines(pipe, unfiltered.images).median()))
    ours = dk.sample(pipe, cond, plain, tape, progress=False)
    ref = type(pipe)(**{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)})
    ref.set_progress_bar_config(disable=True)
    theirs = ref([C0] * 6, num_inference_steps=3, generator=[torch.Generator().manual_seed(s) for s in seeds],
                 output_type="np")  # fmt: skip
    assert ours.nsfw == theirs.nsfw_content_detected and 0 < sum(ours.nsfw) < 6
    np.testing.assert_allclose(ours.pixels.permute(0, 2, 3, 1).numpy(), theirs.images, atol=2e-4)
    flagged = torch.tensor(ours.nsfw)
    assert ours.pixels[flagged].abs().max() == 0 and (ours.pixels[~flagged] == unfiltered.pixels[~flagged]).all()
    assert not np.asarray(ours.images[int(flagged.nonzero()[0])]).any()  # the PIL image is black too
    metrics = dk.transfer(pipe, plain.with_meta(prompts=[C0, C1]), tape, clip=False, progress=False).metrics
    assert metrics["nsfw_reference"].tolist() == ours.nsfw and "nsfw_edited" in metrics


def test_safety_checker_none_at_load_turns_it_off(hub, pipes):
    pipe = dk.load_pipeline(hub["sd1"], safety_checker=None)
    assert pipe.safety_checker is None
    tape = dk.NoiseTape.from_seed(pipe, 0, steps=2)
    out = dk.sample(pipe, dk.encode(pipe, C0, C1), dk.MixSchedule.constant(2, 0.0), tape, progress=False)
    assert out.nsfw is None
    assert same_model(model_fingerprint(pipe), model_fingerprint(pipes["sd1"]))  # still the same model


# ---- 4. a model is what it is, not where it was loaded from -------------------------------------------------------
def test_a_schedule_is_accepted_on_the_same_weights_from_another_folder_and_refused_on_others(hub, learned, tmp_path):
    again = dk.MixSchedule.load(learned.save(tmp_path / "schedule.json"))
    copy = dk.load_pipeline(shutil.copytree(hub["sd1"], tmp_path / "elsewhere"), dtype=torch.bfloat16)
    assert model_id(copy) != learned.meta["model"]  # another folder...
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_schedule(again, copy, 4)  # ...the same weights (in another dtype): accepted, silently
    other = dk.load_pipeline(save_hub_layout("sd1", tmp_path / "other", seed=1))
    with pytest.raises(ScheduleModelError, match="learned on other weights.*allow_other_model=True"):
        fit_schedule(again, other, 4)
    with pytest.warns(UserWarning, match="learned on other weights"):
        fit_schedule(again, other, 4, allow_other_model=True)
    with pytest.warns(FutureWarning, match="allow_other_model=True"):  # the old spelling still applies it
        fit_schedule(again, other, 4, resample=True)


def test_a_folder_in_the_hub_cache_is_named_by_its_hub_id(hub, tmp_path):
    snapshot = tmp_path / "models--CompVis--stable-diffusion-v1-4" / "snapshots" / "0123abcd"
    pipe = dk.load_pipeline(shutil.copytree(hub["sd1"], snapshot))
    assert model_id(pipe) == "CompVis/stable-diffusion-v1-4"


def test_a_cached_hub_id_loads_without_network_and_takes_the_folders_schedule(hub, learned, tmp_path):
    # A fresh process: huggingface_hub reads its cache location at import. The endpoint is a closed local port, so
    # any request would fail; a cached model must not make one.
    repo = tmp_path / "cache" / "models--CompVis--stable-diffusion-v1-4"
    shutil.copytree(hub["sd1"], repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    learned.save(tmp_path / "schedule.json")
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(tmp_path / "cache"), HF_ENDPOINT="http://127.0.0.1:9", DISENTKIT_TEST_THREADS="1")
    code = (
        "import disentkit as dk, time\n"
        "t = time.perf_counter()\n"
        "pipe = dk.load_pipeline('CompVis/stable-diffusion-v1-4')\n"
        "assert time.perf_counter() - t < 20, time.perf_counter() - t\n"
        f"s = dk.load_schedule({str(tmp_path / 'schedule.json')!r}, pipe, 4)\n"
        "from disentkit.pipeline import model_id\n"
        "print(model_id(pipe), s.steps)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["CompVis/stable-diffusion-v1-4", "4"]


# ---- 5. the command line checks first, and fails fast without a CLIP -----------------------------------------------
def test_disentangle_defaults_the_switch_to_40_percent_of_the_steps_at_the_asked_size(hub, tmp_path):
    out = tmp_path / "out"
    assert main(["disentangle", "--c0", C0, "--c1", C1, "--steps", "6", "--iters", "1", "--height", "96",
                 "--width", "64", "--model", str(hub["sd1"]), "--clip", str(hub["clip"]), "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    meta = json.loads((out / "schedule.json").read_text())["meta"]
    assert meta["init"]["weights"] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # round(0.4 * 6) = 2 steps of c0
    assert (meta["height"], meta["width"]) == (96, 64) and Image.open(out / "edited.png").size == (64, 96)


@pytest.mark.parametrize("extra, error", [
    (["--switch", "9"], "InvalidScheduleError: switch step must be in 0..6"),
    (["--lr", "0"], "--lr must be positive"),
    (["--height", "50"], "ImageSizeError"),
    (["--scheduler", "nope"], "UnknownSchedulerError"),
    (["--clip", "/no/such/clip"], "CLIP folder '/no/such/clip' does not exist"),
])  # fmt: skip
def test_disentangle_checks_every_argument_before_loading(tmp_path, capsys, extra, error):
    argv = ["disentangle", "--c0", C0, "--c1", C1, "--steps", "6", "--model", str(tmp_path / "no-model"),
            "--out", str(tmp_path / "o"), "--quiet", *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert error in err and "no-model" not in err, err  # the model folder was never looked at


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "unreachable hub"])
def test_without_clip_offline_the_cli_fails_at_once_naming_the_flag(hub, tmp_path, capsys, monkeypatch, offline):
    for var in [v for v in os.environ if "PROXY" in v.upper()]:
        monkeypatch.delenv(var)
    if offline == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port: refused at once
    start = time.perf_counter()
    assert main(["disentangle", "--c0", C0, "--c1", C1, "--steps", "3", "--model", str(hub["sd1"]),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2  # fmt: skip
    assert time.perf_counter() - start < 5  # huggingface_hub's retries took ~23 s
    err = capsys.readouterr().err
    assert "ModelNotFoundError" in err and "openai/clip-vit-base-patch32" in err and "--clip" in err, err
    assert not (tmp_path / "o").exists()


def test_transfer_without_a_clip_leaves_the_clip_columns_out_in_library_and_cli(hub, pipes, learned, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match="CLIP columns are left out"):
        metrics = dk.transfer(pipes["sd1"], learned, [0], progress=False).metrics
    learned.save(tmp_path / "schedule.json")
    with pytest.warns(UserWarning, match="CLIP columns are left out"):
        assert main(["transfer", str(tmp_path / "schedule.json"), "--seeds", "0", "--model", str(hub["sd1"]),
                     "--out", str(tmp_path / "t"), "--quiet"]) == 0  # fmt: skip
    written = pd.read_csv(tmp_path / "t" / "metrics.csv")
    assert list(written.columns) == list(metrics.columns) and "clip_direction" not in written
    assert Image.open(tmp_path / "t" / "edited_seed0.png").size == (64, 96)  # at the schedule's size


def test_edit_keeps_the_photo_size_replays_exactly_and_reports_the_safety_checker(hub, portrait, tmp_path):
    Image.fromarray(portrait).save(tmp_path / "photo.png")
    base = ["edit", "--input", str(tmp_path / "photo.png"), "--c0", C0, "--c1", C1, "--steps", "4",
            "--model", str(hub["sd1"]), "--clip", str(hub["clip"]), "--quiet"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "e")]) == 0
    m = pd.read_csv(tmp_path / "e" / "metrics.csv").iloc[0]
    assert (m["height"], m["width"]) == (96, 64) and Image.open(tmp_path / "e" / "reconstruction.png").size == (64, 96)
    assert m["psnr_reconstruction_vs_vae_db"] > 100  # replayed beside the edit, exactly
    assert not m["nsfw_reconstruction"] and not m["nsfw_edited"]
    assert main([*base, "--no-safety-checker", "--out", str(tmp_path / "f")]) == 0
    assert "nsfw_edited" not in pd.read_csv(tmp_path / "f" / "metrics.csv")


def test_edit_with_a_schedule_of_another_size_or_model_names_the_flags(hub, portrait, learned, tmp_path, capsys):
    Image.fromarray(portrait[16:80]).save(tmp_path / "square.png")  # 64x64, the schedule was learned at 64x96
    learned.save(tmp_path / "schedule.json")
    base = ["edit", "--input", str(tmp_path / "square.png"), "--c0", C0, "--c1", C1, "--schedule",
            str(tmp_path / "schedule.json"), "--clip", str(hub["clip"]), "--out", str(tmp_path / "e"),
            "--quiet"]  # fmt: skip
    assert main([*base, "--model", str(hub["sd1"])]) == 2
    err = capsys.readouterr().err
    assert "ImageSizeError" in err and "--height 96 --width 64, or add --allow-other-size" in err, err
    other = save_hub_layout("sd1", tmp_path / "other", seed=1)
    assert main([*base, "--model", str(other), "--allow-other-size"]) == 2
    assert "--allow-other-model" in capsys.readouterr().err
    with pytest.warns(FutureWarning, match="--allow-other-model"):  # the old flag still applies it
        assert main([*base, "--model", str(other), "--allow-other-size", "--resample"]) == 0


# ---- 6. quiet where work is short, progress where it is long ------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_loading_inverting_and_sampling_hub_folders_prints_nothing(hub, pipes, portrait, kind, capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skip_prk_steps, NumPy's copy notice, tokenizer files: none of them
        pipe = dk.load_pipeline(hub[kind])
        dk.invert(pipe, portrait, C0, steps=2, method="ddim", progress=False)  # DDIMInverseScheduler from the config
        tape = dk.NoiseTape.from_seed(pipe, 0, steps=2, scheduler="euler")
        dk.sample(pipe, dk.encode(pipe, C0, C1), dk.MixSchedule.switch(2, 1), tape, progress=False)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", captured.err  # no loading bars, no config messages


def test_quiet_loading_lets_real_warnings_through_and_restores_the_libraries(caplog):
    from diffusers.utils import logging as diffusers_logging

    with quiet_loading():
        assert not diffusers_logging.is_progress_bar_enabled()
        logging.getLogger("diffusers.configuration_utils").warning("a real problem")
        logging.getLogger("diffusers.configuration_utils").warning(
            "The config attributes {'skip_prk_steps': True} were passed to DDIMScheduler, but are not expected and "
            "will be ignored.")  # fmt: skip
        with pytest.warns(UserWarning, match="also real"):
            warnings.warn("also real", UserWarning)
    assert diffusers_logging.is_progress_bar_enabled()
    assert "a real problem" in caplog.text and "skip_prk_steps" not in caplog.text


def test_sampling_shows_progress_unless_told_not_to(pipes, capfd):
    pipe = pipes["sd2"]
    tape = dk.NoiseTape.from_seed(pipe, 0, steps=2)
    dk.sample(pipe, dk.encode(pipe, C0, C1), dk.MixSchedule.switch(2, 1), tape)  # the library's default
    assert "sampling" in capfd.readouterr().err
    dk.sample(pipe, dk.encode(pipe, C0, C1), dk.MixSchedule.switch(2, 1), tape, progress=False)
    assert "sampling" not in capfd.readouterr().err


def test_an_exact_tape_without_the_flag_is_the_old_batch_dependent_replay(pipes, portrait):
    # Why the flag exists: the same tape marked not exact goes through the UNet in one batch of two runs.
    pipe = pipes["sdxl"]
    tape = dk.invert(pipe, portrait, C0, steps=4, method="exact", guidance=7.5, progress=False)
    assert tape.rows_per_call(8) == 1 and replace(tape, exact=False).rows_per_call(8) == 8
    assert dk.NoiseTape.concat([tape, dk.NoiseTape.from_seed(pipe, 0, 4, eta=1.0, height=96, width=64)]).exact
