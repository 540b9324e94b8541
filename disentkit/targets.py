"""Which attribute does a prompt pair edit? For toyworld captions the answer can be read off the two prompts.

    edit_target("a photo of a face", "a photo of a face, smiling")  ->  ("expression", "smiling")

It is the question the toyworld evaluator is asked ("was the style reached?") by transfer, the notebooks and the
reports. Other prompts (real Stable Diffusion ones) have no such answer: give the target yourself there.
"""

from __future__ import annotations

from .errors import PromptError


def edit_target(c0: str, c1: str) -> tuple[str, str]:
    """The one (factor, value) that the toyworld caption ``c1`` pins and ``c0`` does not.

    Raises :class:`~disentkit.errors.PromptError` (a ``ValueError``) when either prompt is not a toyworld caption or
    ``c1`` adds no attribute or several."""
    from .toyworld.scenes import parse_caption  # only toyworld captions can be read this way

    try:
        base, styled = parse_caption(c0), parse_caption(c1)
    except ValueError as err:
        hint = "the edit's target can be read from toyworld captions only: give it yourself"
        raise PromptError(f"{err}; {hint}.") from err
    added = [(factor, value) for factor, value in styled.items() if base.get(factor) != value]
    if len(added) != 1:
        raise PromptError(f"{c1!r} should add exactly one attribute to {c0!r}; it adds {added}.")
    return added[0]


def edit_target_or_none(c0: str, c1: str) -> tuple[str, str] | None:
    """:func:`edit_target`, or None where the prompts say no single target (not toyworld captions, say)."""
    try:
        return edit_target(c0, c1)
    except PromptError:
        return None


def caption_alternatives(c1: str, target: tuple[str, str]) -> list[str]:
    """What a prompt loss weighs ``c1`` against: ``c1`` with each other value of the target factor, as toyworld
    captions say them ("a photo of a circle, red" -> "..., green", "..., blue", ...; "a sketch of a star" -> "a photo
    of a star"). Raises :class:`~disentkit.errors.PromptError` when ``c1`` is not the caption of that target."""
    from dataclasses import replace

    import numpy as np

    from .toyworld.scenes import FACTORS, factor_captions, scene_for_caption

    factor, value = target
    scene = scene_for_caption(c1, np.random.default_rng(0))
    captions = factor_captions(replace(scene, **{factor: value}), factor)  # each says only the factor and the kind
    if captions[FACTORS[factor].index(value)] != c1:
        raise PromptError(f"{c1!r} is not a caption that says {factor}={value} and nothing else; give the pair's c1 "
                          "and its target")  # fmt: skip
    return [c for c in captions if c != c1]


def edit_alternatives(c0: str, c1: str) -> list[str]:
    """:func:`caption_alternatives` of the pair's own target for toyworld captions; ``[c0]`` for any other prompts
    (the neutral prompt is then the only alternative the styled one is told apart from)."""
    target = edit_target_or_none(c0, c1)
    return [c0] if target is None else caption_alternatives(c1, target)

