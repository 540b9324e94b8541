"""``learn_steps``: which sampling steps' weights an optimisation may move (the others keep their start values)."""

from __future__ import annotations

import operator

import torch

from .errors import LearnStepsError


def learn_mask(learn_steps, steps: int) -> torch.Tensor | None:
    """``learn_steps`` (None, an int k = "steps k.. only", a slice, step indices or a bool mask) -> (N,) bool mask,
    or None when every step is learned."""
    if learn_steps is None:
        return None
    if isinstance(learn_steps, bool):
        raise LearnStepsError("learn_steps is a step index, a slice, a list of steps or a bool mask, not a bool.")
    try:  # any integer (int, numpy int, 0-d tensor): "steps k..N-1"
        first = operator.index(learn_steps)
    except TypeError:
        first = None
    if first is not None:
        if not 0 <= first < steps:
            raise LearnStepsError(
                f"learn_steps={first} would learn steps {first}..{steps - 1}; give a step in 0..{steps - 1}."
            )
        learn_steps = slice(first, None)
    mask = torch.zeros(steps, dtype=torch.bool)
    if isinstance(learn_steps, slice):
        mask[learn_steps] = True
    else:
        given = torch.as_tensor(learn_steps)
        if given.dtype == torch.bool:
            if given.shape != (steps,):
                raise LearnStepsError(
                    f"a bool learn_steps mask needs {steps} entries (one per step), got {tuple(given.shape)}."
                )
            mask = given.clone()
        else:
            if given.is_floating_point() or given.is_complex():
                raise LearnStepsError(f"learn_steps indices must be integers, got {given.tolist()}.")
            if given.numel() and (given.min() < 0 or given.max() >= steps):
                raise LearnStepsError(f"learn_steps indices must lie in 0..{steps - 1}, got {given.tolist()}.")
            mask[given.long()] = True
    if not mask.any():
        raise LearnStepsError(f"learn_steps={learn_steps!r} leaves no step of {steps} to learn.")
    return None if mask.all() else mask
