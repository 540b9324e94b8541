"""invert() gives a tape that sample() turns back into the image: exactly for the "exact" method, approximately
for DDIM inversion; images come in any common form, and non-images are refused with a typed error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import disentkit as dk
from disentkit.errors import InvalidImageError
from disentkit.inversion import InversionError, encode_image, invert, load_image
from disentkit.losses import psnr
from disentkit.testing import tiny_pipeline

PROMPT = "a photo of a circle"
STEPS = 6


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def pipe(request):
    return tiny_pipeline(request.param, seed=0)


@pytest.fixture(scope="module")
def photo():
    """A smooth 32x32 test picture (a disc on a gradient) as uint8 RGB."""
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    disc = ((xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.08).astype(float)
    rgb = np.stack([0.2 + 0.6 * disc, 0.3 + 0.4 * yy, 0.8 - 0.5 * disc], axis=2)
    return (rgb * 255).round().astype(np.uint8)


def _replay(pipe, tape, guidance):
    cond = dk.encode(pipe, PROMPT, PROMPT + ", red")
    return dk.sample(pipe, cond, dk.MixSchedule.constant(tape.steps, 0.0), tape, guidance, progress=False)


def _vae_round_trip(pipe, image):
    # The best any inversion can do: the image as the VAE sees it (a random tiny VAE loses a lot).
    with torch.no_grad():
        return dk.decode(pipe, encode_image(pipe, image)).float().cpu()


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_exact_inversion_reproduces_the_image(pipe, photo, guidance):
    tape = invert(pipe, photo, PROMPT, steps=STEPS, method="exact", guidance=guidance, progress=False)
    assert (tape.scheduler, tape.steps, tape.eta) == ("ddim", STEPS, 1.0)
    assert tape.step_noise.shape == (STEPS, 1, 4, 16, 16)
    out = _replay(pipe, tape, guidance)
    target = encode_image(pipe, photo).cpu()
    assert (out.latents - target).abs().max() < 1e-3
    assert psnr(out.pixels, _vae_round_trip(pipe, photo)).item() > 50


class GaussianDenoiser(torch.nn.Module):
    """A stand-in UNet that is the exact denoiser of Gaussian data N(0, I) (epsilon or v prediction).

    A random UNet's predictions are not consistent from one noise level to the next, so DDIM inversion has
    nothing to be accurate about; with the exact denoiser of a known data distribution it must converge to the
    image as the step count grows (and a timestep misalignment would show as an error that does not shrink).
    """

    def __init__(self, unet, scheduler):
        super().__init__()
        self.config = unet.config
        self.register_buffer("acp", scheduler.alphas_cumprod.clone())
        self.kind = scheduler.config.prediction_type

    device = property(lambda self: self.acp.device)
    dtype = property(lambda self: self.acp.dtype)

    def forward(self, x, t, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        a = self.acp[int(t)]
        x0 = a.sqrt() * x  # E[x0 | x_t] for x0 ~ N(0, I): sqrt(a) x_t / (a + 1 - a)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return (eps if self.kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0,)


class GaussianWorld:
    """Just enough of a pipeline for encode/invert/sample: the tiny pipeline's VAE and text encoder, our UNet."""

    def __init__(self, base):
        self.base, self.vae, self.scheduler, self.vae_scale_factor = base, base.vae, base.scheduler, base.vae_scale_factor
        self.unet = GaussianDenoiser(base.unet, base.scheduler)

    def encode_prompt(self, *args, **kwargs):
        return self.base.encode_prompt(*args, **kwargs)


def test_ddim_inversion_converges_with_an_exact_denoiser(pipe, photo):
    world = GaussianWorld(pipe)
    z0 = encode_image(world, photo).cpu()
    errors = {}
    for steps in (5, 20):
        tape = invert(world, photo, PROMPT, steps=steps, method="ddim", guidance=1.0, progress=False)
        assert tape.step_noise is None and tape.eta == 0.0
        errors[steps] = ((_replay(world, tape, 1.0).latents - z0).norm() / z0.norm()).item()
    assert errors[20] < 0.6 * errors[5]
    limit = 0.02 if pipe.scheduler.config.prediction_type == "epsilon" else 0.2  # v: eps is read at the wrong level
    assert errors[20] < limit


def test_ddim_inversion_of_a_random_model_is_finite(pipe, photo):
    tape = invert(pipe, photo, PROMPT, steps=STEPS, method="ddim", guidance=3.0, progress=False)
    assert tape.x_T.shape == (1, 4, 16, 16) and torch.isfinite(tape.x_T).all()
    assert torch.isfinite(_replay(pipe, tape, 3.0).pixels).all()


def test_the_inverted_tape_saves_and_edits(pipe, photo, tmp_path):
    tape = invert(pipe, photo, PROMPT, steps=STEPS, method="exact", progress=False)
    again = dk.NoiseTape.load(tape.save(tmp_path / "tape.safetensors"))
    torch.testing.assert_close(again.step_noise, tape.step_noise, rtol=0, atol=0)
    cond = dk.encode(pipe, PROMPT, PROMPT + ", red")
    out = dk.sample(pipe, cond, [dk.MixSchedule.constant(STEPS, 0.0), dk.MixSchedule.switch(STEPS, 3)], again, 1.0, progress=False)
    assert (out.pixels[0] - out.pixels[1]).abs().max() > 0  # the edit changes the image


def test_images_in_any_form_give_the_same_pixels(photo, tmp_path):
    Image.fromarray(photo).save(tmp_path / "p.png")
    from_array = load_image(photo)
    for other in [tmp_path / "p.png", str(tmp_path / "p.png"), Image.fromarray(photo), photo.astype(np.float32) / 255,
                  from_array[0], np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)]),
                  torch.from_numpy(photo).permute(2, 0, 1)]:  # fmt: skip  (the last: a uint8 tensor, 0..255)
        torch.testing.assert_close(load_image(other), from_array, rtol=0, atol=1e-6)
    assert from_array.shape == (1, 3, 32, 32) and from_array.dtype == torch.float32


def test_other_sizes_are_kept_unless_another_size_is_asked_for(sd1_pipe, photo):
    import warnings

    big = np.asarray(Image.fromarray(photo).resize((48, 40)))  # 48 wide, 40 tall; the model makes 32x32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encode_image(sd1_pipe, big).shape == (1, 4, 20, 24)  # its own size (the tiny VAE's factor is 2)
    with pytest.warns(UserWarning, match="aspect ratio"):
        assert encode_image(sd1_pipe, big, 32, 32).shape == (1, 4, 16, 16)  # asked for: resized, and it says so
    assert encode_image(sd1_pipe, big, 32, 32, fit="crop").shape == (1, 4, 16, 16)
    with pytest.raises(InvalidImageError, match="fit"):
        encode_image(sd1_pipe, big, 32, 32, fit="stretch")


@pytest.mark.parametrize("bad", ["no-such-file.png", 3.0, np.zeros((4, 4, 2)), np.full((4, 4, 3), 2.0), torch.zeros(2, 3, 4, 4)])
def test_non_images_raise_a_typed_error(bad, tmp_path, photo):
    with pytest.raises(InvalidImageError):
        load_image(tmp_path / bad if isinstance(bad, str) else bad)
    with pytest.raises(ValueError):  # InvalidImageError is a ValueError for callers that do not know it
        load_image(tmp_path / bad if isinstance(bad, str) else bad)


def test_a_text_file_is_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(InvalidImageError, match="cannot read"):
        load_image(tmp_path / "notes.png")


def test_unsupported_settings_are_refused(sd1_pipe, photo):
    with pytest.raises(InversionError, match="ddim"):
        invert(sd1_pipe, photo, PROMPT, steps=4, scheduler="euler", progress=False)
    with pytest.raises(InversionError, match="method"):
        invert(sd1_pipe, photo, PROMPT, steps=4, method="null-text", progress=False)


def test_exact_inversion_on_sdxl(sdxl_pipe, photo):
    # SDXL adds pooled text embeddings and size/crop time ids to every model call; the replay must match them.
    tape = invert(sdxl_pipe, photo, PROMPT, steps=4, method="exact", guidance=5.0, progress=False)
    out = _replay(sdxl_pipe, tape, 5.0)
    assert (out.latents - encode_image(sdxl_pipe, photo).cpu()).abs().max() < 1e-3


def test_an_inverted_tape_remembers_its_guidance_and_warns_when_replayed_under_another(sd1_pipe, photo, tmp_path):
    import warnings

    tape = invert(sd1_pipe, photo, PROMPT, steps=4, method="exact", guidance=7.5, progress=False)
    assert tape.guidance == 7.5
    again = dk.NoiseTape.load(tape.save(tmp_path / "tape.safetensors"))
    assert again.guidance == 7.5
    cond = dk.encode(sd1_pipe, PROMPT, PROMPT + ", red")
    plain = dk.MixSchedule.constant(4, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the guidance it was inverted with: silent
        dk.sample(sd1_pipe, cond, plain, again, 7.5, progress=False)
    with pytest.warns(UserWarning, match="inverted under guidance 7.5 .* Pass guidance=7.5"):
        dk.sample(sd1_pipe, cond, plain, again, 1.0, progress=False)
    with pytest.warns(UserWarning, match="inverted under guidance 7.5"):  # sweeps and optimize check it too
        dk.sweep_switch(sd1_pipe, cond, again, [1, 2], guidance=3.0, progress=False)
    with pytest.warns(UserWarning, match="inverted under guidance 7.5"):
        dk.optimize(sd1_pipe, cond, dk.MixSchedule.switch(4, 2), again, losses={"l1": lambda e, r: (e - r).abs().mean()},
                    iters=1, guidance=1.0, progress=False)  # fmt: skip
    # transfer replays an inverted tape under its own guidance unless told otherwise: the c0 run is the image again
    schedule = dk.MixSchedule.switch(4, 2).with_meta(prompts=[PROMPT, PROMPT + ", red"], guidance=1.0, steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moved = dk.transfer(sd1_pipe, schedule, again, clip=False, progress=False)
    replay = dk.sample(sd1_pipe, cond, [plain, schedule], again, 7.5, progress=False)  # transfer's batch, at 7.5
    torch.testing.assert_close(moved.reference_pixels, replay.pixels[:1], rtol=0, atol=1e-6)
    loose = invert(sd1_pipe, photo, PROMPT, steps=4, method="ddim", guidance=1.0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every scale <= 1 means no guidance: the same replay, no warning
        dk.sample(sd1_pipe, cond, plain, loose, 0.5, progress=False)
    seeded = dk.NoiseTape.from_seed(sd1_pipe, 0, steps=4, eta=1.0)
    assert seeded.guidance is None  # a seeded tape replays nothing: any guidance is fine
    assert dk.NoiseTape.concat([tape, tape]).guidance == 7.5
    assert dk.NoiseTape.concat([tape, seeded]).guidance is None
    assert tape.select([0]).guidance == 7.5


def test_a_tape_saved_before_guidance_was_recorded_still_loads(sd1_pipe, tmp_path):
    import json

    from safetensors.torch import save_file

    tape = dk.NoiseTape.from_seed(sd1_pipe, 0, steps=4)
    meta = tape.metadata()
    del meta["guidance"]
    save_file({"x_T": tape.x_T.contiguous()}, tmp_path / "old.safetensors", metadata={"disentkit": json.dumps(meta)})
    assert dk.NoiseTape.load(tmp_path / "old.safetensors").guidance is None
