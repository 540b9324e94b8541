"""The toy scene generator: valid scenes, captions that round-trip, renders that show what the scene says."""

import numpy as np
import pytest

from disentkit.toyworld import scenes as S


def test_factors_table_matches_the_named_tuples():
    assert S.FACTORS == {
        "kind": S.KINDS,
        "color": S.COLORS,
        "texture": S.TEXTURES,
        "expression": S.EXPRESSIONS,
        "background": S.BACKGROUNDS,
        "rendering": S.RENDERINGS,
    }
    assert len(S.COLORS) >= 6


def test_sample_scene_respects_fixed_fields_and_faces_only_have_expressions():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = S.sample_scene(rng)
        assert (scene.expression is None) == (scene.kind != "face")
        half = scene.size / 2
        assert half <= scene.x <= 1 - half and half <= scene.y <= 1 - half
    scene = S.sample_scene(rng, color="red", background="night", rendering="sketch", x=0.5, y=0.5, size=0.4)
    assert (scene.color, scene.background, scene.rendering, scene.x, scene.y, scene.size) == (
        "red", "night", "sketch", 0.5, 0.5, 0.4)
    assert S.sample_scene(rng, expression="smiling").kind == "face"
    assert S.sample_scene(rng, kind="star", expression="smiling").expression is None  # kind wins


def test_fixing_one_field_does_not_change_the_others():
    a = S.sample_scene(np.random.default_rng(5))
    b = S.sample_scene(np.random.default_rng(5), color="blue" if a.color != "blue" else "red")
    assert (a.kind, a.texture, a.background, a.x, a.y) == (b.kind, b.texture, b.background, b.x, b.y)


def test_invalid_scenes_raise():
    with pytest.raises(ValueError, match="expression"):
        S.Scene("circle", "red", "plain", "smiling", "day", "photo", 0.5, 0.5, 0.4)
    with pytest.raises(ValueError, match="leaves the image"):
        S.Scene("circle", "red", "plain", None, "day", "photo", 0.1, 0.5, 0.4)
    with pytest.raises(ValueError, match="color"):
        S.Scene("circle", "pink", "plain", None, "day", "photo", 0.5, 0.5, 0.4)


def test_caption_forms_follow_the_paper():
    s = S.Scene("circle", "red", "striped", None, "night", "sketch", 0.5, 0.5, 0.4)
    assert S.caption(s) == "a photo of a circle"
    assert S.caption(s, ["color"]) == "a photo of a circle, red"
    assert S.caption(s, ["background"]) == "a photo of a circle, at night"
    assert S.caption(s, ["rendering"]) == "a sketch of a circle"
    assert S.caption(s, ["background", "color", "texture"]) == "a photo of a circle, red, striped, at night"
    face = S.Scene("face", "yellow", "plain", "smiling", "snow", "photo", 0.5, 0.5, 0.4)
    assert S.caption(face, ["expression", "background"]) == "a photo of a face, smiling, in the snow"
    assert S.caption(s, ["expression"]) == "a photo of a circle"  # no expression to say


def test_parse_caption_inverts_caption_for_every_mention_subset():
    rng = np.random.default_rng(1)
    for _ in range(300):
        scene = S.sample_scene(rng)
        text = S.random_caption(scene, rng)
        pinned = S.parse_caption(text)
        assert pinned["kind"] == scene.kind
        for name, value in pinned.items():
            assert scene.labels()[name] == value, text
        again = S.scene_for_caption(text, rng)
        assert all(again.labels()[k] == v for k, v in pinned.items())
    assert S.parse_caption("A Photo of a circle, RED") == {"kind": "circle", "color": "red"}
    with pytest.raises(ValueError):
        S.parse_caption("a photo of a dog")
    with pytest.raises(ValueError):
        S.parse_caption("a photo of a circle, smiling")


def test_random_captions_are_often_neutral_and_cover_every_attribute_word():
    rng = np.random.default_rng(2)
    captions = [S.random_caption(S.sample_scene(rng), rng) for _ in range(2000)]
    neutral = sum("," not in c and c.startswith("a photo") for c in captions) / len(captions)
    assert 0.08 < neutral < 0.4
    text = " ".join(captions)
    for word in S.COLORS + S.TEXTURES + S.EXPRESSIONS + ("sketch", "night", "snow", "sunset", "daylight"):
        assert word in text


def test_render_is_deterministic_with_the_mask_inside_the_image():
    rng = np.random.default_rng(3)
    for _ in range(50):
        scene = S.sample_scene(rng)
        image, mask = S.render(scene)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == bool
        assert mask.sum() > 0.03 * 64 * 64
        # The mask's centre of mass sits near the scene's centre (the object is where the scene says).
        ys, xs = np.nonzero(mask)
        assert abs(xs.mean() / 64 - scene.x) < 0.08 and abs(ys.mean() / 64 - scene.y) < 0.1
        again, mask_again = S.render(scene)
        assert np.array_equal(image, again) and np.array_equal(mask, mask_again)
    image, mask = S.render(scene, size=128)
    assert image.shape == (128, 128, 3)


def _object_mean(scene):
    image, mask = S.render(scene)
    return image[mask].astype(float).mean(axis=0)


def test_factors_are_visible_in_the_pixels():
    base = S.Scene("circle", "red", "plain", None, "day", "photo", 0.5, 0.5, 0.5)
    # Colour: the object's mean colour is nearest to its own colour among all colours.
    for color in S.COLORS:
        mean = _object_mean(S.Scene("square", color, "plain", None, "day", "photo", 0.5, 0.5, 0.5))
        nearest = min(S.COLORS, key=lambda c: np.linalg.norm(mean - np.array(S.RGB[c])))
        assert nearest == color
    # Background: night is dark, snow bright, day has a blue sky over green ground, sunset an orange horizon.
    corners = {bg: S.render(S.Scene("circle", "red", "plain", None, bg, "photo", 0.5, 0.5, 0.3))[0].astype(float)
               for bg in S.BACKGROUNDS}
    assert corners["night"].mean() < 60 < 200 < corners["snow"].mean()
    assert corners["day"][2, 2, 2] > corners["day"][2, 2, 0] and corners["day"][-2, 2, 1] > corners["day"][-2, 2, 2]
    assert corners["sunset"][40, 2, 0] > 200 > corners["sunset"][40, 2, 2]
    # Texture: stripes and dots add contrast inside the object.
    plain = S.render(base)
    for texture in ("striped", "dotted"):
        image, mask = S.render(S.Scene("circle", "red", texture, None, "day", "photo", 0.5, 0.5, 0.5))
        assert image[mask].astype(float).std(axis=0).mean() > plain[0][plain[1]].astype(float).std(axis=0).mean() + 15
    # Sketch: a light paper background, unlike the photo's.
    sketch, _ = S.render(S.Scene("circle", "red", "plain", None, "night", "sketch", 0.5, 0.5, 0.3))
    assert sketch.mean() > corners["night"].mean() + 60


def test_expressions_differ_in_the_mouth():
    images = [S.render(S.Scene("face", "yellow", "plain", e, "day", "photo", 0.5, 0.5, 0.6))[0] for e in S.EXPRESSIONS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(images[i].astype(int) - images[j].astype(int)).sum() > 2000


def test_render_speed_is_enough_to_train_on_the_fly():
    import time

    rng = np.random.default_rng(4)
    scenes = [S.sample_scene(rng) for _ in range(200)]
    start = time.process_time()  # CPU time, so a busy machine does not fail the test
    S.render_batch(scenes)
    assert time.process_time() - start < 1.0  # ~0.15 s on one laptop core
