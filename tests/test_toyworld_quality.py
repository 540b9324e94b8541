"""The report's window rule and the CLIP-on-generated-images check, on tables and a stand-in CLIP whose answers
are known."""

import numpy as np
import pandas as pd
import pytest
import torch

from disentkit.toyworld import scenes as S
from disentkit.toyworld.quality import clip_agreement, switch_windows


def sweep_rows(iou: dict, hit: dict, seeds=16, steps=10, c0_hits=()) -> pd.DataFrame:
    """Per-image rows of one pair: mask_iou[k] for every seed, style_hit[k] for seeds not in c0_hits; the c0 image
    (k = steps) hits the target exactly for the seeds in c0_hits, which hit at every k."""
    rows = []
    for seed in range(seeds):
        for k in range(steps + 1):
            on = seed in c0_hits or (k < steps and hit.get(k, False))
            rows.append(dict(pair="p", k=k, seed=seed, mask_iou=iou.get(k, 1.0), style_hit=on))
    return pd.DataFrame(rows)


def test_a_window_is_the_longest_run_that_keeps_content_and_reaches_the_style():
    iou = {k: 0.5 for k in range(3)}  # content settles at k = 3
    hit = {k: True for k in range(7)}  # the style is reachable up to k = 6
    w = switch_windows(sweep_rows(iou, hit), steps=10).iloc[0]
    assert (w.start, w.end, w.length, w.window, w.seeds, w.lacking) == (3, 6, 4, True, 16, 16)
    # Two steps are not a window; nor are enough steps on too few seeds.
    hit2 = {k: True for k in range(5)}
    assert not switch_windows(sweep_rows(iou, hit2), steps=10).iloc[0].window
    assert switch_windows(sweep_rows(iou, hit2), steps=10).iloc[0].length == 2
    assert not switch_windows(sweep_rows(iou, hit, seeds=8), steps=10).iloc[0].window


def test_reach_counts_only_seeds_whose_c0_image_lacks_the_target():
    # Half the seeds show the target with c0 alone; the switch reaches it on none of the others. Counted over all
    # seeds that is a 50% "reach" at every k, counted honestly it is 0%: no window.
    iou = {k: 0.9 for k in range(10)}
    rows = sweep_rows(iou, {}, c0_hits=tuple(range(8)))
    w = switch_windows(rows, steps=10, reach_bar=0.5).iloc[0]
    assert w.lacking == 8 and w.length == 0 and not w.window


class WordClip:
    """A stand-in CLIP: a text's embedding counts its words; every image's embedding points at one word, so for a
    factor whose captions differ in that word it always answers that word's value."""

    def __init__(self, word: str):
        self.vocab = sorted({w for c in S.all_attribute_captions("circle") + S.all_attribute_captions("face")
                             for w in c.replace(",", " ").split()} | set(S.KINDS))  # fmt: skip
        self.word = word

    def encode_texts(self, texts):
        out = torch.zeros(len(texts), len(self.vocab))
        for i, t in enumerate(texts):
            for w in t.replace(",", " ").split():
                out[i, self.vocab.index(w)] += 1
        return out

    def encode_images(self, pixels):
        out = torch.zeros(len(pixels), len(self.vocab))
        out[:, self.vocab.index(self.word)] = 1
        return out


def test_clip_agreement_compares_clip_with_the_evaluators_reading():
    rng = np.random.default_rng(0)
    scenes = [S.sample_scene(rng) for _ in range(40)]
    seen = pd.DataFrame([s.labels() for s in scenes])
    images = np.zeros((len(scenes), 64, 64, 3), np.uint8)
    table = clip_agreement(WordClip("red"), images, seen).set_index("factor")
    assert table.loc["color", "agreement"] == pytest.approx(np.mean([s.color == "red" for s in scenes]))
    assert table.loc["color", "n"] == 40
    faces = sum(s.kind == "face" for s in scenes)
    assert table.loc["expression", "n"] == faces  # asked on faces only
    smiling = clip_agreement(WordClip("smiling"), images, seen).set_index("factor")
    assert smiling.loc["expression", "agreement"] == pytest.approx(
        np.mean([s.expression == "smiling" for s in scenes if s.kind == "face"]))  # fmt: skip


def test_the_schedule_diagnostic_reads_steps_as_noise_levels():
    from disentkit.toyworld.diagnostics import RESOLUTION_SHIFT, step_log_snr, steps_between, switch_window_steps

    snr = step_log_snr(50)
    assert list(snr["step"]) == list(range(50)) and snr["t"].iloc[0] > snr["t"].iloc[-1]  # step 0 is noisiest
    assert np.all(np.diff(snr["log_snr"]) > 0)
    assert RESOLUTION_SHIFT == pytest.approx(2 * np.log(4))
    lo, hi = snr["log_snr"].iloc[10], snr["log_snr"].iloc[19]
    assert steps_between(lo, hi, 50) == 10
    # Shifting the schedule towards less noise moves every step to a higher log-SNR: the noisy end of the interval
    # is then reached earlier and the clean end passes sooner, so fewer steps land inside this early interval.
    assert steps_between(lo, hi, 50, shift=RESOLUTION_SHIFT) < 10
    table = pd.DataFrame({"pair": "p", "k": range(51), "mask_iou": [0.5] * 5 + [0.9] * 46,
                          "style_hit": [1.0] * 9 + [0.0] * 42})  # fmt: skip
    row = switch_window_steps(table, 50).iloc[0]
    assert (row.content_k, row.style_k, row.window_steps, row.longest_run) == (5, 8, 4, 4)


def test_an_expression_changes_a_handful_of_latent_pixels():
    from disentkit.toyworld.diagnostics import expression_pixels

    px = expression_pixels(n=8)
    assert 0 < px["latent_pixels_mean"] < 256 and px["image_pixels_mean"] > px["latent_pixels_mean"]


def test_offset_noise_delays_only_what_lies_in_the_channel_means():
    from disentkit.toyworld.diagnostics import difference_visibility

    rng = np.random.default_rng(0)
    scenes = [S.sample_scene(rng).to_dict() for _ in range(400)]
    latents = torch.zeros(len(scenes), 4, 16, 16)
    night = torch.tensor([s["background"] == "night" for s in scenes])
    latents[night] += 0.1  # night shifts every pixel: all of the difference is in the channel means
    sketch = torch.tensor([s["rendering"] == "sketch" for s in scenes])
    latents[sketch, :, :8] += 0.1  # a sketch brightens the top half only: half of it is a mean shift
    latents[sketch, :, 8:] -= 0.1  # ...and darkens the bottom: the means do not move at all
    table = difference_visibility(latents, scenes).set_index("change")
    bg, rendering = table.loc["background: day -> night"], table.loc["rendering: photo -> sketch"]
    # (the night and day groups hold slightly different shares of sketches, whose pattern leaks in a little)
    assert bg["share_in_means"] == pytest.approx(1.0, abs=0.01)
    assert rendering["share_in_means"] == pytest.approx(0.0, abs=0.01)
    assert bg["log_snr_visible_offset_0"] == pytest.approx(-np.log(4 * 256 * 0.01), abs=0.05)
    shift = bg["log_snr_visible_offset_0.1"] - bg["log_snr_visible_offset_0"]
    assert shift == pytest.approx(np.log(1 + 256 * 0.01), abs=0.05)
    assert rendering["log_snr_visible_offset_0.2"] == pytest.approx(rendering["log_snr_visible_offset_0"], abs=0.05)
