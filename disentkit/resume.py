"""The files that let :func:`disentkit.optimize` resume: its state after every iteration, in ``checkpoint_dir``.

One file, ``optimize_state.pt``, written atomically after every Adam update: the weights, the optimiser's and the
loss scaler's state, the history and the best iterate so far, and the settings they belong to. Called again with the
same folder and settings, ``optimize`` goes on from there; with other settings it refuses
(:class:`~disentkit.errors.CheckpointMismatchError`) rather than mix two optimisations.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointMismatchError
from .files import torch_save_atomic

CHECKPOINT_FORMAT = "disentkit.optimize-checkpoint/1"
CHECKPOINT_FILE = "optimize_state.pt"


def save_state(
    folder: Path, config: dict, iteration: int, lam, adam, scaler, history: list[dict], best: dict | None
) -> None:
    """Write the state after ``iteration`` Adam updates to ``folder``; a crash mid-write keeps the previous file."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "iteration": iteration,  # number of Adam updates done
        "lam": lam.detach().cpu().clone(),
        "adam": adam.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history,
        "best": best,  # {"iteration", "loss", "lam"}: the lowest-loss weights seen so far
    }
    torch_save_atomic(state, folder / CHECKPOINT_FILE)


def load_state(folder: Path, config: dict) -> dict | None:
    """The saved state in ``folder`` (None if there is none); refused when it was made with other settings."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"{path} is not a disentkit optimisation checkpoint (format {state.get('format')!r})."
        )
    # Checkpoints from before these options existed were made with Adam on every step.
    state["config"].setdefault("optimizer", "adam")
    state["config"].setdefault("learn_steps", "all")
    # Before loss_terms were saved, nothing said which CLIP or prompts the terms used: such a checkpoint is trusted.
    state["config"].setdefault("loss_terms", config.get("loss_terms"))
    if state["config"] != config:
        diff = sorted(k for k in config.keys() | state["config"].keys() if config.get(k) != state["config"].get(k))
        raise CheckpointMismatchError(
            f"{path} belongs to another optimisation (differs in {diff}); use another checkpoint_dir or delete it."
        )
    return state


def resume(folder: Path | None, config: dict, iters: int, lam, adam, scaler) -> tuple[list[dict], int, dict | None]:
    """Load the state in ``folder`` into ``lam``, ``adam`` and ``scaler``. Returns (history, iterations done, best);
    ``([], 0, None)`` when there is nothing to resume."""
    state = load_state(folder, config) if folder is not None else None
    if state is None:
        return [], 0, None
    if state["iteration"] > iters:
        raise CheckpointMismatchError(
            f"{folder} already holds {state['iteration']} iterations, more than iters={iters}; "
            "ask for more or use another folder."
        )
    with torch.no_grad():
        lam.copy_(state["lam"].to(lam.device))
    adam.load_state_dict(state["adam"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    return list(state["history"]), state["iteration"], state.get("best")
