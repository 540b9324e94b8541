"""Building the tiny test pipelines (``disentkit.testing``) and loading pipelines with ``dk.load_pipeline``."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

import disentkit as dk
from disentkit.errors import DeviceUnavailableError, ModelNotFoundError
from disentkit.pipeline import locate, model_fingerprint, same_model
from disentkit.testing import build_tokenizer, save_tiny_pipeline, sd_architecture, tiny_pipeline


def torch_modules(pipe) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- disentkit.testing ---------------------------------------------------------------------------------------
def test_char_tokenizer_gives_one_token_per_character(tmp_path):
    tok = build_tokenizer(tmp_path)
    ids = tok("A cat, red").input_ids
    tokens = tok.convert_ids_to_tokens(ids)
    # Lower-cased, split into words and punctuation, one token per character, </w> on each word's last one.
    assert tokens == ["<|startoftext|>", "a</w>", "c", "a", "t</w>", ",</w>", "r", "e", "d</w>", "<|endoftext|>"]
    assert tok.decode(ids, skip_special_tokens=True) == "a cat , red"
    assert (tok.bos_token_id, tok.eos_token_id) == (len(tok) - 2, len(tok) - 1)  # last two ids, as in CLIP
    assert len(tok("x", padding="max_length").input_ids) == tok.model_max_length == 77


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_tiny_pipelines_are_small_frozen_sd_pipelines(kind, request):
    pipe = request.getfixturevalue(f"{kind}_pipe")
    assert isinstance(pipe, StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline)
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if kind == "sd2" else "epsilon")
    sched = pipe.scheduler.config
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end, sched.num_train_timesteps) == (
        "scaled_linear", 0.00085, 0.012, 1000)  # fmt: skip
    assert (sched.steps_offset, sched.set_alpha_to_one, sched.clip_sample) == (1, False, False)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32  # 32x32 px images
    assert pipe.unet.config.in_channels == 4
    for name, module in torch_modules(pipe).items():
        assert not module.training, f"{name} is in training mode"
        assert not any(p.requires_grad for p in module.parameters()), f"{name} has weights that want gradients"
        assert module.dtype == torch.float32 and module.device.type == "cpu"
    # SD pads every prompt to the tokenizer's length; the text encoder must have as many positions.
    encoders = [(pipe.tokenizer, pipe.text_encoder)] + (
        [(pipe.tokenizer_2, pipe.text_encoder_2)] if kind == "sdxl" else []
    )
    for tok, enc in encoders:
        assert tok.model_max_length == enc.config.max_position_embeddings
        assert tok.eos_token_id == enc.config.eos_token_id  # CLIP pools at this id
    if kind == "sdxl":
        assert pipe.config.force_zeros_for_empty_prompt  # as SDXL base: no negative prompt = zero embedding
        assert pipe.tokenizer_2.pad_token == "!"


def test_tiny_pipeline_weights_are_fixed_by_the_seed_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = tiny_pipeline("sd1", seed=0), tiny_pipeline("sd1", seed=0), tiny_pipeline("sd1", seed=1)
    assert torch.equal(torch.rand(3), expected_next)
    for name in torch_modules(a):
        assert same_weights(a.components[name], b.components[name]), name
        assert not same_weights(a.components[name], c.components[name]), name


def test_tiny_pipeline_samples_quickly(sd1_pipe):
    # The budget that keeps the suite fast: a 4-step sample runs in ~0.1 s on one laptop core. The bound is loose
    # on purpose (shared CI machines); what it catches is a tiny pipeline that grew into a real one.
    run = lambda: sd1_pipe("a photo of person", num_inference_steps=4, output_type="np")  # noqa: E731
    run()  # the first call pays one-off costs (allocator, kernels)
    start = time.perf_counter()
    image = run().images[0]
    assert time.perf_counter() - start < 3.0
    assert image.shape == (32, 32, 3)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="sd1"):
        tiny_pipeline("sd3")


def test_sd_architecture_has_the_published_sizes():
    # Built on the meta device: shapes without memory. Counts are those of the published checkpoints.
    sd1 = sd_architecture("sd1", device="meta")
    assert isinstance(sd1, StableDiffusionPipeline)
    assert n_params(sd1.unet) == pytest.approx(859.52e6, rel=1e-3)
    assert n_params(sd1.text_encoder) == pytest.approx(123.06e6, rel=1e-3)  # CLIP ViT-L/14 text tower
    assert n_params(sd1.vae) == pytest.approx(83.65e6, rel=1e-3)
    assert sd1.unet.config.cross_attention_dim == sd1.text_encoder.config.hidden_size == 768

    xl = sd_architecture("sdxl", device="meta")
    assert isinstance(xl, StableDiffusionXLPipeline)
    assert n_params(xl.unet) == pytest.approx(2567.46e6, rel=1e-3)
    assert n_params(xl.text_encoder_2) == pytest.approx(694.66e6, rel=1e-3)  # OpenCLIP ViT-bigG/14 text tower
    assert xl.unet.config.cross_attention_dim == 768 + 1280
    # The UNet's added embedding takes 6 time ids of 256 plus the pooled embedding of the second encoder.
    assert xl.unet.config.projection_class_embeddings_input_dim == 6 * 256 + xl.text_encoder_2.config.projection_dim


# ---- dk.load_pipeline --------------------------------------------------------------------------------------------
def test_load_pipeline_reads_a_saved_folder(tiny_pipe_dir, sd1_pipe):
    pipe = dk.load_pipeline(str(tiny_pipe_dir), device="cpu")
    assert isinstance(pipe, StableDiffusionPipeline)
    for name, module in torch_modules(pipe).items():
        assert same_weights(module, sd1_pipe.components[name]), f"{name} weights changed in the round trip"
        assert module.dtype == torch.float32 and module.device.type == "cpu"  # the default: float32
        assert not module.training and not any(p.requires_grad for p in module.parameters()), f"{name} not frozen"
    assert pipe.scheduler.config.prediction_type == "epsilon"


def test_loaded_folder_gives_the_same_image_bit_for_bit(tiny_pipe_dir, sd1_pipe):
    loaded = dk.load_pipeline(tiny_pipe_dir)  # a Path works as well as a str
    images = []
    for pipe in (sd1_pipe, loaded):
        cond = dk.encode(pipe, "A photo of person", "A photo of person, smiling")
        tape = dk.NoiseTape.from_seed(pipe, seed=7, steps=4)
        images.append(dk.sample(pipe, cond, dk.MixSchedule.switch(4, at=2), tape, progress=False).pixels)
    assert torch.equal(images[0], images[1])


def test_load_pipeline_reads_an_sdxl_folder(tmp_path):
    folder = save_tiny_pipeline("sdxl", tmp_path / "xl")
    pipe = dk.load_pipeline(folder)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert pipe.config.force_zeros_for_empty_prompt
    assert pipe.tokenizer_2.pad_token == "!"


def test_load_pipeline_applies_dtype(tiny_pipe_dir):
    pipe = dk.load_pipeline(tiny_pipe_dir, dtype=torch.bfloat16)
    for name, module in torch_modules(pipe).items():
        assert module.dtype == torch.bfloat16, name


def test_missing_folder_raises_model_not_found(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelNotFoundError, match="does not exist") as info:
        dk.load_pipeline(str(missing))
    assert isinstance(info.value, FileNotFoundError)  # callers that only know the builtin still catch it


def test_folder_that_is_not_a_pipeline_raises_model_not_found(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        dk.load_pipeline(tmp_path)


def test_uncached_hub_id_raises_model_not_found_offline(monkeypatch):
    # Never touches the network: local_files_only, and HF_HUB_OFFLINE for any code path that reads it.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="disentkit-tests/no-such-model"):
        dk.load_pipeline("disentkit-tests/no-such-model", local_files_only=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_unavailable_cuda_raises_device_unavailable(tiny_pipe_dir):
    with pytest.raises(DeviceUnavailableError, match="cpu") as info:
        dk.load_pipeline(tiny_pipe_dir, device="cuda")
    assert isinstance(info.value, RuntimeError)


def test_toyworld_loads_when_its_weights_are_bundled():
    from disentkit.pipeline import toyworld_dir

    if not (toyworld_dir() / "pipeline" / "model_index.json").is_file():
        pytest.skip("toyworld weights are not built in this checkout yet")
    pipe = dk.load_pipeline("toyworld")
    assert pipe.unet.dtype == torch.float32
    assert not any(p.requires_grad for p in pipe.unet.parameters())


def test_an_uncached_hub_id_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch):
    # No HF_HUB_OFFLINE: the endpoint is a closed local port, as on a machine without network. huggingface_hub's own
    # retries took ~23 s before this failed; the cache is tried first, then one TCP connection decides.
    for var in [v for v in os.environ if "PROXY" in v.upper()]:
        monkeypatch.delenv(var)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="cannot be reached"):
        dk.load_pipeline("disentkit-tests/no-such-model")
    with pytest.raises(ModelNotFoundError, match="pass --clip"):
        locate("disentkit-tests/no-such-clip", what="CLIP", fix="pass --clip FOLDER")
    assert time.perf_counter() - start < 5


def test_the_fingerprint_follows_the_weights_not_the_object(sd1_pipe, tiny_pipe_dir):
    loaded = dk.load_pipeline(tiny_pipe_dir)
    assert same_model(model_fingerprint(loaded), model_fingerprint(sd1_pipe))
    assert not same_model(model_fingerprint(tiny_pipeline("sd1", seed=1)), model_fingerprint(sd1_pipe))
    assert not same_model(model_fingerprint(tiny_pipeline("sd2", seed=0)), model_fingerprint(sd1_pipe))
    before = model_fingerprint(loaded)
    with torch.no_grad():
        loaded.unet.conv_in.weight.mul_(1.01)  # an in-place change (a merged LoRA, say) is seen
    assert not same_model(model_fingerprint(loaded), before)
    json.dumps(before)  # plain data: it goes into a schedule's JSON file
