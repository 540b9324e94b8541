"""Continuing the bundled UNet in pieces: a piece stops and the next one resumes exactly where it stopped, from the
checkpoint folder alone (a fresh machine has nothing else), and a resume that would mix recipes is refused."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from disentkit.errors import DisentkitError, TrainingConfigError
from disentkit.toyworld.continue_unet import ContinueConfig, Piece, continue_training, export_state


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")  # rendered once, shared: every run re-creates the same scenes anyway


def run(state, data_dir, config, **piece):
    return continue_training(Piece(state=str(state), data=str(data_dir), log_every=1, **piece), config)


def test_a_resumed_run_continues_bit_for_bit(tmp_path, data_dir):
    config = replace(ContinueConfig.smoke(), total_steps=4, half=False)
    straight = run(tmp_path / "straight", data_dir, config)
    first = run(tmp_path / "pieces", data_dir, config, max_steps=2)
    assert first["step"] == 2
    # The second piece gets nothing but the checkpoint folder (and the data, which is re-created from its seed).
    second = run(tmp_path / "pieces", data_dir, config)
    assert second["step"] == straight["step"] == 4
    assert [p["from_step"] for p in second["pieces"]] == [0, 2]
    assert second["history"] == [dict(h, hours=pytest.approx(h["hours"], abs=1)) for h in straight["history"]]
    a, b = load_file(tmp_path / "straight" / "state.safetensors"), load_file(tmp_path / "pieces" / "state.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    saved = [json.loads((tmp_path / name / "state.json").read_text()) for name in ("straight", "pieces")]
    assert saved[0]["rng"] == saved[1]["rng"] and saved[0]["adam_steps"] == saved[1]["adam_steps"]


def test_the_committed_checkpoint_is_16_bit_and_resumes(tmp_path, data_dir):
    config = ContinueConfig.smoke()
    meta = run(tmp_path / "s", data_dir, config, max_steps=1)
    tensors = load_file(tmp_path / "s" / "state.safetensors")
    assert tensors["model.conv_in.weight"].dtype == torch.float16
    assert {tensors[k].dtype for k in tensors if k.startswith("adam.")} == {torch.bfloat16}
    assert (tmp_path / "s" / "state.safetensors").stat().st_size < 25 * 2**20  # small enough to commit
    assert meta["config"]["half"] and meta["step"] == 1
    again = run(tmp_path / "s", data_dir, config)
    assert again["step"] == config.total_steps
    # The learning rate follows the step, so pieces of any length give the same schedule.
    assert [h["lr"] for h in again["history"]] == pytest.approx([config.lr_at(s) for s in range(config.total_steps)])


def test_a_piece_out_of_time_still_writes_its_checkpoint(tmp_path, data_dir):
    meta = run(tmp_path / "s", data_dir, ContinueConfig.smoke(), minutes=0)
    assert meta["step"] == 0 and (tmp_path / "s" / "state.json").exists()


def test_resuming_with_another_recipe_is_refused_before_any_work(tmp_path, data_dir):
    run(tmp_path / "s", data_dir, ContinueConfig.smoke(), max_steps=1)
    before = (tmp_path / "s" / "state.json").read_text()
    piece = Piece(state=str(tmp_path / "s"), data=str(tmp_path / "never-made"))
    with pytest.raises(TrainingConfigError, match="another recipe.*lr") as err:
        continue_training(piece, ContinueConfig.smoke(), asked={"lr": 1.0})
    assert isinstance(err.value, (DisentkitError, ValueError))
    assert not (tmp_path / "never-made").exists() and (tmp_path / "s" / "state.json").read_text() == before


def test_export_makes_a_pipeline_with_the_ema_unet(tmp_path, data_dir):
    from diffusers import StableDiffusionPipeline

    run(tmp_path / "s", data_dir, ContinueConfig.smoke(), max_steps=2)
    out = export_state(tmp_path / "s", tmp_path / "out")
    assert (out / "clip" / "config.json").exists()
    assert json.loads((out / "training.json").read_text())["step"] == 2
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", dtype=torch.float32)
    ema = load_file(tmp_path / "s" / "state.safetensors")["ema.conv_in.weight"]
    assert torch.equal(pipe.unet.conv_in.weight.half(), ema)
    images = pipe("a photo of a circle", num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_a_checkpoint_from_before_a_recipe_field_existed_resumes_with_its_default(tmp_path, data_dir):
    run(tmp_path / "s", data_dir, ContinueConfig.smoke(), max_steps=1)
    path = tmp_path / "s" / "state.json"
    meta = json.loads(path.read_text())
    del meta["config"]["offset_noise"]  # as written before offset noise was an option
    path.write_text(json.dumps(meta))
    with pytest.raises(TrainingConfigError, match="offset_noise"):
        continue_training(Piece(state=str(tmp_path / "s"), data=str(data_dir)), asked={"offset_noise": 0.1})
    assert run(tmp_path / "s", data_dir, ContinueConfig.smoke(), max_steps=1)["step"] == 2


def test_offset_noise_changes_the_training_noise_only_when_asked(tmp_path, data_dir):
    base = replace(ContinueConfig.smoke(), total_steps=1, half=False)
    plain = run(tmp_path / "a", data_dir, base)["history"][0]["loss"]
    again = run(tmp_path / "b", data_dir, base)["history"][0]["loss"]
    offset = run(tmp_path / "c", data_dir, replace(base, offset_noise=0.5))["history"][0]["loss"]
    assert plain == again and offset != plain


def test_the_command_line_runs_pieces_resumes_and_exports(tmp_path, data_dir):
    from disentkit.toyworld.continue_unet import main

    where = ["--state", str(tmp_path / "s"), "--data", str(data_dir)]
    main(["--smoke", "--max-steps", "2", *where])
    main(["--smoke", *where])  # the next piece finishes the smoke recipe
    meta = json.loads((tmp_path / "s" / "state.json").read_text())
    assert meta["step"] == ContinueConfig.smoke().total_steps and len(meta["pieces"]) == 2
    with pytest.raises(TrainingConfigError):
        main(["--smoke", "--lr", "1.0", *where])
    main(where)  # without options a resume keeps the recipe it started with: finished, so nothing more to do
    assert json.loads((tmp_path / "s" / "state.json").read_text())["step"] == meta["step"]
    main(["--export", str(tmp_path / "out"), *where])
    assert (tmp_path / "out" / "pipeline" / "unet" / "config.json").exists()
