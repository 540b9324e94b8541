"""Procedural toy scenes with captions: the ground truth of the toy text-to-image world.

A `Scene` is one object (kind, colour, texture, facial expression) on a background, drawn either as a shaded
photo or as a pencil sketch. Content (what object, where, how big) and style (colour, texture, expression,
background, rendering) are separate fields, so anything the diffusion model makes from a caption can be
checked against the truth.

Captions follow the paper (Wu et al., CVPR 2023): a neutral caption "a photo of a circle" leaves every attribute
unsaid (it is then random in the image); a styled caption adds attributes after commas, "a photo of a circle,
red, at night"; a sketch says so in the prefix, "a sketch of a square". Position and size are never said.

Rendering is plain vectorised numpy on a pixel grid, deterministic for a given Scene, a few thousand 64x64 scenes
per second on one core.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Iterable

import numpy as np

from disentkit.errors import CaptionError, SceneError, SceneFieldError

KINDS = ("circle", "square", "triangle", "star", "face")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
TEXTURES = ("plain", "striped", "dotted")
EXPRESSIONS = ("neutral", "smiling", "frowning")  # faces only; a non-face scene has expression None
BACKGROUNDS = ("day", "night", "snow", "sunset")
RENDERINGS = ("photo", "sketch")

FACTORS: dict[str, tuple[str, ...]] = {
    "kind": KINDS,
    "color": COLORS,
    "texture": TEXTURES,
    "expression": EXPRESSIONS,
    "background": BACKGROUNDS,
    "rendering": RENDERINGS,
}

# How often sample_scene draws a sketch when the rendering is not fixed. A caption says "a photo of ..." unless it
# mentions the sketch, so photos are the common case (as "a photo of" suggests) and sketches the style to reach.
SKETCH_PROBABILITY = 0.3

# Object size (bounding diameter as a fraction of the image side) and the margin kept to the image border.
SIZE_RANGE = (0.36, 0.6)
BORDER_MARGIN = 0.03

# The words a caption uses for each background; the other attributes are said by their own name.
BACKGROUND_PHRASES = {"day": "in daylight", "night": "at night", "snow": "in the snow", "sunset": "at sunset"}
_PHRASE_TO_BACKGROUND = {phrase: bg for bg, phrase in BACKGROUND_PHRASES.items()}

# Factors that can follow the comma in a caption, in the order they are written. Rendering is said in the prefix.
CAPTION_ATTRIBUTES = ("color", "texture", "expression", "background")

RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 215, 40),
    "purple": (145, 55, 185),
    "orange": (245, 130, 25),
}
PAPER_RGB = (246, 241, 226)  # the cream paper a sketch is drawn on
HORIZON = 0.68  # ground starts at this fraction of the image height


@dataclass(frozen=True)
class Scene:
    """One object on a background. x, y: object centre in [0, 1] image coordinates (y down); size: the object's
    bounding diameter as a fraction of the image side."""

    kind: str
    color: str
    texture: str
    expression: str | None
    background: str
    rendering: str
    x: float
    y: float
    size: float

    def __post_init__(self):
        for name, values in FACTORS.items():
            value = getattr(self, name)
            if name == "expression":
                if (self.kind == "face") != (value is not None):
                    raise SceneError(
                        f"expression={value!r} with kind={self.kind!r}: faces need one of {EXPRESSIONS}, "
                        "other kinds need expression=None"
                    )
                if value is None:
                    continue
            if value not in values:
                raise SceneError(f"{name}={value!r} is not one of {values}")
        half = self.size / 2
        if not (0 < self.size <= 1 and half <= self.x <= 1 - half and half <= self.y <= 1 - half):
            raise SceneError(
                f"object at x={self.x}, y={self.y} with size={self.size} leaves the image; "
                "keep size/2 <= x, y <= 1 - size/2"
            )

    def labels(self) -> dict[str, str | None]:
        """The six factor labels, keyed like FACTORS."""
        return {name: getattr(self, name) for name in FACTORS}

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------
# Sampling


def sample_scene(rng: np.random.Generator, **fixed) -> Scene:
    """A random scene; keyword arguments (any Scene field) fix those fields. Unfixed factors are uniform, except
    rendering (sketch with probability SKETCH_PROBABILITY). Fixing expression implies a face."""
    unknown = set(fixed) - set(Scene.__dataclass_fields__)
    if unknown:
        raise SceneFieldError(f"sample_scene got unknown fields {sorted(unknown)}; use {list(Scene.__dataclass_fields__)}")
    # Draw every random number, always in the same order, so a fixed field never shifts the others.
    kind = KINDS[rng.integers(len(KINDS))]
    color = COLORS[rng.integers(len(COLORS))]
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    expression = EXPRESSIONS[rng.integers(len(EXPRESSIONS))]
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    rendering = "sketch" if rng.random() < SKETCH_PROBABILITY else "photo"
    size_u, x_u, y_u = rng.random(3)

    if fixed.get("expression") is not None:
        kind = "face"
    kind = fixed.get("kind", kind)
    expression = fixed.get("expression", expression) if kind == "face" else None
    size = fixed.get("size", SIZE_RANGE[0] + size_u * (SIZE_RANGE[1] - SIZE_RANGE[0]))
    lo, hi = size / 2 + BORDER_MARGIN, 1 - size / 2 - BORDER_MARGIN
    lo, hi = min(lo, 0.5), max(hi, 0.5)
    return Scene(
        kind=kind,
        color=fixed.get("color", color),
        texture=fixed.get("texture", texture),
        expression=expression,
        background=fixed.get("background", background),
        rendering=fixed.get("rendering", rendering),
        x=float(fixed.get("x", lo + x_u * (hi - lo))),
        y=float(fixed.get("y", lo + y_u * (hi - lo))),
        size=float(size),
    )


# --------------------------------------------------------------------------------------------------------------
# Captions


def caption(scene: Scene, mention: Iterable[str] = ()) -> str:
    """The caption of `scene` that says the factors in `mention` (kind is always said; position and size never).

    caption(s) -> "a photo of a circle"; caption(s, ["color", "background"]) -> "a photo of a circle, red, at night";
    mentioning "rendering" of a sketch gives "a sketch of a ..." (a photo's rendering is the neutral prefix).
    "expression" is ignored for objects that are not faces.
    """
    mention = set(mention)
    unknown = mention - set(FACTORS)
    if unknown:
        raise CaptionError(f"cannot mention {sorted(unknown)}; factors are {list(FACTORS)}")
    medium = "sketch" if ("rendering" in mention and scene.rendering == "sketch") else "photo"
    parts = [f"a {medium} of a {scene.kind}"]
    for name in CAPTION_ATTRIBUTES:
        value = getattr(scene, name)
        if name in mention and value is not None:
            parts.append(BACKGROUND_PHRASES[value] if name == "background" else value)
    return ", ".join(parts)


@lru_cache(maxsize=None)
def _word_to_factor() -> dict[str, tuple[str, str]]:
    table = {}
    for name in ("color", "texture", "expression"):
        for value in FACTORS[name]:
            table[value] = (name, value)
    for phrase, bg in _PHRASE_TO_BACKGROUND.items():
        table[phrase] = ("background", bg)
    return table


def parse_caption(text: str) -> dict[str, str]:
    """The factors a caption pins down: parse_caption("a sketch of a face, smiling") ->
    {"kind": "face", "rendering": "sketch", "expression": "smiling"}. "a photo of" pins nothing (neutral prefix).
    Raises CaptionError (a ValueError) for text that is not a toy caption."""
    parts = [p.strip() for p in text.strip().lower().split(",")]
    words = parts[0].split()
    if len(words) != 5 or words[0] != "a" or words[2:4] != ["of", "a"] or words[1] not in ("photo", "sketch"):
        raise CaptionError(f"{text!r} does not start like 'a photo of a <kind>' or 'a sketch of a <kind>'")
    if words[4] not in KINDS:
        raise CaptionError(f"{text!r}: unknown object {words[4]!r}; kinds are {KINDS}")
    pinned = {"kind": words[4]}
    if words[1] == "sketch":
        pinned["rendering"] = "sketch"
    for part in parts[1:]:
        if part not in _word_to_factor():
            raise CaptionError(f"{text!r}: unknown attribute {part!r}; known are {sorted(_word_to_factor())}")
        name, value = _word_to_factor()[part]
        if name in pinned and pinned[name] != value:
            raise CaptionError(f"{text!r} says two different values for {name}")
        pinned[name] = value
    if "expression" in pinned and pinned["kind"] != "face":
        raise CaptionError(f"{text!r}: only a face has an expression")
    return pinned


def scene_for_caption(text: str, rng: np.random.Generator) -> Scene:
    """A random scene consistent with the caption: the factors it says are fixed, the rest random."""
    return sample_scene(rng, **parse_caption(text))


def random_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption of `scene`: often neutral, otherwise a random subset of its attributes mentioned.

    Each factor is said with probability 0.35 on its own (so ~18% of captions are fully neutral and captions with
    one or two attributes are the common case); a sketch is said a little more often (0.5) so the model learns
    the word. A caption may only leave out attributes; it never says a wrong one.
    """
    u = rng.random(5)
    mention = [name for name, ui in zip(CAPTION_ATTRIBUTES, u[:4]) if ui < 0.35]
    if u[4] < 0.5:
        mention.append("rendering")
    return caption(scene, mention)


def factor_captions(scene: Scene, factor: str) -> list[str]:
    """Captions of `scene` that differ only in `factor`, one per value in FACTORS order: the zero-shot question
    "which of these fits?" (kind: each kind's neutral caption; rendering: "a photo of" vs "a sketch of")."""
    values = FACTORS[factor]
    if factor == "kind":
        return [caption(replace(scene, kind=k, expression="neutral" if k == "face" else None)) for k in values]
    if factor == "rendering":
        return [caption(replace(scene, rendering=v), ["rendering"]) for v in values]
    return [caption(replace(scene, **{factor: v}), [factor]) for v in values]


def all_attribute_captions(kind: str) -> list[str]:
    """Every caption that says exactly one attribute of a `kind` object, plus its neutral caption (for tests and
    evaluation grids)."""
    rng = np.random.default_rng(0)
    base = sample_scene(rng, kind=kind, rendering="photo")
    captions = [caption(base)]
    for name in CAPTION_ATTRIBUTES + ("rendering",):
        if name == "expression" and kind != "face":
            continue
        for value in FACTORS[name]:
            if name == "rendering" and value == "photo":
                continue
            captions.append(caption(replace(base, **{name: value}), [name]))
    return captions


# --------------------------------------------------------------------------------------------------------------
# Rendering. Geometry is in pixel units; shapes are signed distances (negative inside), so one function gives
# the fill, the antialiased edge and the outline.


def _coverage(dist: np.ndarray) -> np.ndarray:
    """Antialiased coverage in [0, 1] of a signed distance in pixels (one pixel of soft edge)."""
    return np.clip(0.5 - dist, 0.0, 1.0)


def _polygon_distance(px, py, radius, n_sides, rotation):
    """Signed distance (exact inside, close outside) to a regular polygon with circumradius `radius`."""
    apothem = radius * np.cos(np.pi / n_sides)
    angles = rotation + np.pi / n_sides + 2 * np.pi * np.arange(n_sides) / n_sides  # edge normals
    proj = px[..., None] * np.cos(angles) + py[..., None] * np.sin(angles)
    return proj.max(axis=-1) - apothem


def _star_distance(px, py, radius):
    """Signed distance to a five-pointed star with one point up. The plane is folded into the wedge between a
    point (angle pi/5 in the fold) and the next inner corner (angle 0), where the star's edge is one line."""
    inner = radius * 0.45
    theta = np.arctan2(py, px) + np.pi / 2  # 0 at the top point (y points down)
    a = np.mod(theta, 2 * np.pi / 5)
    b = np.pi / 5 - np.abs(a - np.pi / 5)  # in [0, pi/5]: 0 at a point, pi/5 at an inner corner
    b = np.pi / 5 - b  # now 0 at an inner corner, pi/5 at a point
    r = np.hypot(px, py)
    qx, qy = r * np.cos(b), r * np.sin(b)
    p_in = np.array([inner, 0.0])
    p_out = np.array([radius * np.cos(np.pi / 5), radius * np.sin(np.pi / 5)])
    edge = p_out - p_in
    normal = np.array([edge[1], -edge[0]]) / np.hypot(*edge)  # points away from the centre
    return (qx - p_in[0]) * normal[0] + (qy - p_in[1]) * normal[1]


def _shape_distance(kind, px, py, radius):
    if kind in ("circle", "face"):
        return np.hypot(px, py) - radius
    if kind == "square":
        return _polygon_distance(px, py, radius * 1.15, 4, -np.pi / 4)  # half side 0.81 radius
    if kind == "triangle":
        # One point up; the triangle's centroid sits a little low so it fills its bounding box evenly.
        return _polygon_distance(px, py - radius * 0.2, radius * 1.05, 3, np.pi / 6)
    if kind == "star":
        return _star_distance(px, py, radius)
    raise SceneError(f"unknown kind {kind!r}")


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return xs, ys


@lru_cache(maxsize=8)
def _sparkles(size: int, seed: int, count: int) -> np.ndarray:
    """A fixed pattern of small dots (stars at night, snowflakes): (H, W) coverage in [0, 1]."""
    rng = np.random.default_rng(seed)
    xs, ys = _grid(size)
    pts = rng.random((count, 2)) * size
    scale = size / 64
    dist = np.min(np.hypot(xs[..., None] - pts[:, 0], ys[..., None] - pts[:, 1]), axis=-1)
    cov = _coverage(dist - 0.6 * scale)
    cov.setflags(write=False)
    return cov


def _vertical_gradient(size, top, bottom, start, stop):
    """(H, 1, 3) colours going from `top` at row fraction `start` to `bottom` at `stop`."""
    t = np.clip((np.arange(size, dtype=np.float32) + 0.5) / size, start, stop)
    t = (t - start) / max(stop - start, 1e-6)
    return (np.asarray(top, np.float32) * (1 - t[:, None]) + np.asarray(bottom, np.float32) * t[:, None])[:, None]


def _background(background: str, size: int) -> np.ndarray:
    """The photo background, (H, W, 3) float in [0, 255] (a fresh copy, safe to draw on)."""
    return _cached_background(background, size, "photo").copy()


def _paper_background(background: str, size: int) -> np.ndarray:
    """The sketch background (a fresh copy, safe to draw on)."""
    return _cached_background(background, size, "sketch").copy()


@lru_cache(maxsize=64)
def _cached_background(background: str, size: int, rendering: str) -> np.ndarray:
    img = _draw_background(background, size) if rendering == "photo" else _draw_sketch_background(background, size)
    img.setflags(write=False)
    return img


def _draw_background(background: str, size: int) -> np.ndarray:
    img = np.empty((size, size, 3), np.float32)
    h = int(round(HORIZON * size))
    if background == "day":
        img[:h] = _vertical_gradient(size, (90, 155, 235), (185, 220, 250), 0, HORIZON)[:h]
        img[h:] = _vertical_gradient(size, (95, 175, 75), (60, 135, 50), HORIZON, 1)[h:]
    elif background == "night":
        img[:h] = _vertical_gradient(size, (8, 10, 35), (30, 35, 80), 0, HORIZON)[:h]
        img[h:] = (20, 28, 30)
        stars = _sparkles(size, 1, 14)[..., None]
        img[:h] = img[:h] * (1 - stars[:h]) + 235 * stars[:h]
    elif background == "snow":
        img[:h] = _vertical_gradient(size, (190, 200, 215), (225, 230, 238), 0, HORIZON)[:h]
        img[h:] = (250, 250, 252)
        flakes = _sparkles(size, 2, 40)[..., None]
        img[:] = img * (1 - flakes) + np.array((255, 255, 255), np.float32) * flakes
        img[h:] -= 25 * flakes[h:]  # flakes on the white ground stay visible as a faint grey
    elif background == "sunset":
        img[:h] = _vertical_gradient(size, (95, 40, 120), (250, 150, 50), 0, HORIZON)[:h]
        img[h:] = _vertical_gradient(size, (125, 60, 30), (80, 35, 25), HORIZON, 1)[h:]
    else:
        raise SceneError(f"unknown background {background!r}")
    return img


def _draw_sketch_background(background: str, size: int) -> np.ndarray:
    """Cream paper washed with the background's colours, faint pencil hatching and a pencil horizon."""
    photo = _draw_background(background, size)
    paper = np.asarray(PAPER_RGB, np.float32)
    weight = 0.6 if background == "night" else 0.45  # keep night clearly darker than day on paper
    img = paper * (1 - weight) + photo * weight
    xs, ys = _grid(size)
    scale = size / 64
    hatch = _coverage(np.abs(np.mod(xs - ys, 5 * scale) - 2.5 * scale) - 0.4 * scale)
    img *= 1 - 0.10 * hatch[..., None]
    horizon = _coverage(np.abs(ys - HORIZON * size) - 0.5 * scale)
    img = img * (1 - 0.6 * horizon[..., None]) + 60 * 0.6 * horizon[..., None]
    return img


def _texture_pattern(texture: str, px, py, scale) -> np.ndarray:
    """Where the pattern's second colour goes, coverage in [0, 1]; coordinates relative to the object centre so
    the pattern moves with the object."""
    if texture == "plain":
        return np.zeros_like(px)
    if texture == "striped":
        period = 6.0 * scale
        u = np.mod(px + py, period) - period / 2  # diagonal stripes
        return _coverage(np.abs(u) - period / 4)
    if texture == "dotted":
        period = 6.0 * scale
        u = np.mod(px, period) - period / 2
        v = np.mod(py, period) - period / 2
        return _coverage(np.hypot(u, v) - 1.5 * scale)
    raise SceneError(f"unknown texture {texture!r}")


def _face_features(expression, px, py, radius, scale) -> np.ndarray:
    """Coverage of the eyes and mouth of a face centred at the origin."""
    eye_r = max(0.11 * radius, 1.2 * scale)
    eyes = np.hypot(np.abs(px) - 0.36 * radius, py + 0.25 * radius) - eye_r
    half_width = 0.5 * radius
    # The mouth is a parabola through its two corners: y = corner_y + bend * (1 - t^2), t in [-1, 1] across it.
    # y points down, so a positive bend drops the middle (a smile) and a negative one lifts it (a frown).
    corner_y, bend = {"smiling": (0.25, 0.24), "neutral": (0.42, 0.0), "frowning": (0.58, -0.24)}[expression]
    t = np.clip(px / half_width, -1, 1)
    curve_y = (corner_y + bend * (1 - t**2)) * radius
    width = max(0.07 * radius, 0.9 * scale)
    dist = np.hypot(np.maximum(np.abs(px) - half_width, 0), py - curve_y) - width
    return np.maximum(_coverage(eyes), _coverage(dist))


def render(scene: Scene, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene. Returns the image, (size, size, 3) uint8, and the object mask, (size, size) bool (pixels at
    least half covered by the object)."""
    xs, ys = _grid(size)
    scale = size / 64
    radius = scene.size * size / 2
    px, py = xs - scene.x * size, ys - scene.y * size  # pixel coordinates relative to the object centre
    dist = _shape_distance(scene.kind, px, py, radius)
    inside = _coverage(dist)[..., None]
    colour = np.asarray(RGB[scene.color], np.float32)
    pattern = _texture_pattern(scene.texture, px, py, scale)[..., None]
    features = (
        _face_features(scene.expression, px, py, radius, scale)[..., None] if scene.kind == "face" else None
    )

    if scene.rendering == "photo":
        img = _background(scene.background, size)
        # Drop shadow down-right of the object, then the object lit from the top left.
        shadow = _coverage(_shape_distance(scene.kind, px - 2 * scale, py - 2 * scale, radius))[..., None]
        img *= 1 - 0.45 * shadow
        light = np.clip(1.1 - 0.3 * (px + py) / (np.sqrt(2) * radius) - 0.15 * np.hypot(px, py) / radius, 0.65, 1.25)
        second = colour * 0.3 + 255 * 0.7  # pale stripes and dots, so the main colour still reads
        body = (colour * (1 - pattern) + second * pattern) * light[..., None]
        if features is not None:
            body = body * (1 - features) + 25 * features
        outline = _coverage(np.abs(dist + 0.5 * scale) - 0.5 * scale)[..., None]
        body = body * (1 - outline) + colour * 0.35 * outline
        img = img * (1 - inside) + body * inside
    else:
        img = _paper_background(scene.background, size)
        paper = np.asarray(PAPER_RGB, np.float32)
        wash = paper * 0.35 + colour * 0.65  # a light colour wash inside, patterns drawn in the full colour
        body = wash * (1 - pattern) + colour * pattern
        if features is not None:
            body = body * (1 - features) + 40 * features
        img = img * (1 - inside) + body * inside
        # A dark pencil outline, a little wobbly-looking thanks to a doubled line.
        outline = np.maximum(
            _coverage(np.abs(dist) - 0.7 * scale), 0.5 * _coverage(np.abs(dist - 1.5 * scale) - 0.35 * scale)
        )[..., None]
        img = img * (1 - outline) + 35 * outline

    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return image, dist <= 0


def render_batch(scenes: Iterable[Scene], size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Render several scenes: images (N, size, size, 3) uint8 and masks (N, size, size) bool."""
    pairs = [render(s, size) for s in scenes]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
