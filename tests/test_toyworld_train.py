"""The toy training script end to end (smoke mode) and the pieces of it that are easy to get subtly wrong."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from disentkit.toyworld import scenes as S
from disentkit.toyworld.tokenizer import MODEL_MAX_LENGTH, build_tokenizer, toy_words
from disentkit.toyworld.train import (
    SceneData,
    Stage,
    StageConfig,
    TrainConfig,
    caption_pins,
    learning_rate,
    multi_positive_clip_loss,
    sample_indices,
    train,
    write_report,
)


def test_every_toy_word_is_one_token_and_captions_fit(tmp_path):
    tokenizer = build_tokenizer(tmp_path / "tok")
    for word in toy_words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    longest = "a sketch of a face, yellow, striped, smiling, in the snow"
    ids = tokenizer(longest).input_ids
    assert len(ids) <= MODEL_MAX_LENGTH and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # Unknown words still tokenize (character by character), like any CLIP tokenizer.
    assert len(tokenizer("a photo of a zebra", add_special_tokens=False).input_ids) > 5


def test_caption_pins_mark_unsaid_factors():
    pins = caption_pins("a sketch of a face, smiling")
    names = list(S.FACTORS)
    assert pins[names.index("kind")] == S.KINDS.index("face")
    assert pins[names.index("rendering")] == S.RENDERINGS.index("sketch")
    assert pins[names.index("color")] == -1 and pins[names.index("background")] == -1


def test_multi_positive_loss_prefers_all_fitting_pairs():
    positive = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # caption 1 fits both images, caption 0 only image 0
    good = torch.tensor([[5.0, 5.0], [-5.0, 5.0]])
    bad = torch.tensor([[5.0, -5.0], [5.0, -5.0]])
    assert multi_positive_clip_loss(good, positive) < multi_positive_clip_loss(bad, positive)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    stage = StageConfig(max_steps=100, minutes=1, batch_size=1, lr=1.0, warmup_steps=10)
    assert learning_rate(stage, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(stage, 10, 0.1) < 1.0
    assert learning_rate(stage, 99, 1.0) == pytest.approx(0.1)


@pytest.mark.slow
def test_smoke_run_exports_a_loadable_pipeline_and_resumes(tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    cfg = TrainConfig.smoke(out=str(tmp_path / "run"))
    weights = train(cfg, tmp_path / "weights")
    assert (weights / "README.md").exists() and (weights / "report.json").exists()
    for name in ("unet", "vae", "text_encoder"):
        files = list((weights / "pipeline" / name).glob("*.safetensors"))
        assert files, name
    total_mb = sum(f.stat().st_size for f in weights.rglob("*") if f.is_file()) / 2**20
    assert total_mb < 40

    pipe = StableDiffusionPipeline.from_pretrained(weights / "pipeline", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a photo of a circle, red", num_inference_steps=2, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    clip = CLIPModel.from_pretrained(weights / "clip")
    assert clip.config.text_config.hidden_size == pipe.unet.config.cross_attention_dim
    # The pipeline's text encoder is CLIP's text tower.
    ids = pipe.tokenizer("a photo of a star", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        a = pipe.text_encoder(ids)[0]
        b = clip.text_model(ids)[0].float()
    assert torch.allclose(a, b, atol=1e-2)

    # Re-running the same command finds every stage finished and only re-exports.
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    steps = {name: report["stages"][name]["steps"] for name in ("clip", "vae", "unet")}
    train(cfg, tmp_path / "weights")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {name: report["stages"][name]["steps"] for name in ("clip", "vae", "unet")} == steps

    # --more: a finished stage trains another round from its checkpoint; --only trains just the stages named and
    # leaves the export alone.
    exported = (tmp_path / "weights" / "pipeline" / "unet").stat().st_mtime_ns
    more = replace(cfg, more={"vae": 1.0, "unet": 1.0})
    assert train(more, tmp_path / "weights", only=["vae", "unet"]) is None
    report = write_report(tmp_path / "run", sample_steps=0)
    assert report["stages"]["vae"]["steps"] == 2 * steps["vae"]  # smoke: 3 steps per round
    assert report["stages"]["unet"]["steps"] == 2 * steps["unet"]
    assert report["stages"]["clip"]["steps"] == steps["clip"]
    assert (tmp_path / "run" / "vae" / "done.round0.json").exists() and (tmp_path / "run" / "vae" / "done.json").exists()
    assert (tmp_path / "weights" / "pipeline" / "unet").stat().st_mtime_ns == exported
    # The UNet of the second round trained on the new VAE's latents, not the cached ones of the first.
    latents = torch.load(tmp_path / "run" / "unet" / "latents.pt")
    assert latents["vae_steps"] == 2 * steps["vae"]
    # Without --more the stages are finished and nothing trains; each --more asks for one round more.
    train(cfg, tmp_path / "weights", only=["vae", "unet"])
    assert write_report(tmp_path / "run", sample_steps=0)["stages"]["unet"]["steps"] == 2 * steps["unet"]
    train(replace(cfg, more={"unet": 1.0}), tmp_path / "weights", only=["unet"])
    assert write_report(tmp_path / "run", sample_steps=0)["stages"]["unet"]["steps"] == 3 * steps["unet"]


def test_a_stage_round_restarts_the_learning_rate_from_where_it_stopped(tmp_path):
    config = StageConfig(max_steps=100, minutes=10, batch_size=1, lr=1.0, warmup_steps=10)
    stage = Stage(tmp_path, "unet", config)
    stage.step, stage.elapsed = 100, 60.0
    stage.save()
    assert stage.progress() == 1.0
    (tmp_path / "unet" / "done.json").write_text("{}")
    again = Stage(tmp_path, "unet", config, more_minutes=5, more_lr_scale=0.5)
    assert not again.done
    again.load()
    assert again.step == 100 and again.progress() == 0.0 and again.round["lr"] == 0.5
    assert not (tmp_path / "unet" / "done.json").exists()  # until this round ends
    # An interrupted round resumes as that round (same budget, same peak rate), with or without --more.
    again.step, again.elapsed = 150, 60.0 + 150
    again.save()
    resumed = Stage(tmp_path, "unet", config)
    resumed.load()
    assert resumed.round == again.round and resumed.progress() == pytest.approx(0.5)


def test_face_oversampling_draws_faces_at_the_asked_rate():
    rng = np.random.default_rng(0)
    scenes = [S.sample_scene(rng) for _ in range(500)]
    labels = np.array([[S.FACTORS[n].index(v) if v is not None else -1 for n, v in s.labels().items()] for s in scenes])
    data = SceneData(scenes=scenes, images=None, masks=None, labels=labels)
    faces = lambda idx: np.mean([scenes[i].kind == "face" for i in idx])  # noqa: E731
    assert faces(sample_indices(np.random.default_rng(1), data, 4000, 0.0)) == pytest.approx(0.2, abs=0.03)
    # 0.5 from faces + 0.5 x 1/5 from everything = 0.6
    assert faces(sample_indices(np.random.default_rng(1), data, 4000, 0.5)) == pytest.approx(0.6, abs=0.03)


def test_factor_captions_differ_in_one_factor_only():
    scene = S.sample_scene(np.random.default_rng(3), kind="face", color="red", expression="smiling")
    captions = S.factor_captions(scene, "expression")
    assert captions == [f"a photo of a face, {e}" for e in S.EXPRESSIONS]
    assert [S.parse_caption(c)["kind"] for c in S.factor_captions(scene, "kind")] == list(S.KINDS)


def test_default_budgets_leave_room_in_two_hours():
    """The issue's budget: one run in 2 hours on 2 CPU cores. Stages run in three phases (clip || vae, clip_text,
    unet || clip_vision); rendering, latent encoding, report and export took 3-4 minutes on 2026-11-26."""
    cfg = TrainConfig(out="unused")
    phases = [max(cfg.clip.minutes, cfg.vae.minutes), cfg.clip_text.minutes, max(cfg.unet.minutes, cfg.clip_vision.minutes)]
    assert sum(phases) <= 110
    assert cfg.unet.minutes >= cfg.clip_vision.minutes  # the UNet is the long pole; nothing waits on the vision tower
