"""NoiseTape: every Gaussian draw of a sampling run, fixed, saved and replayed.

The paper's method needs *all* the noise fixed: the start latent x_T and, for stochastic samplers, the noise
added at every step. A tape holds exactly that, with the sampler settings it was made for, so that
``sample(pipe, cond, schedule, tape)`` is a pure function of its inputs.

Draw order matches diffusers: one ``torch.Generator("cpu")`` per seed; x_T is its first draw, then one draw of
the latent's shape per step. Hence a tape from seed s reproduces ``pipe(..., generator=Generator().manual_seed(s))``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .errors import TapeFileError, TapeMismatchError
from .files import atomic_path
from .pipeline import latent_shape
from .samplers import is_stochastic, sampler_spec

TAPE_FORMAT = "disentkit.noisetape/1"


@dataclass(frozen=True)
class NoiseTape:
    """Fixed Gaussian noise for a batch of B runs of an N-step sampler.

    Attributes:
        x_T: (B, C, h, w) unit Gaussian start latents (the sampler scales them by its ``init_noise_sigma``).
        step_noise: (N, B, C, h, w) unit Gaussian noise for step i of a stochastic sampler, else ``None``.
        scheduler: sampler name (see ``disentkit.samplers.SAMPLERS``).
        steps: number of sampling steps N.
        eta: DDIM's eta (0 for other samplers).
        seeds: the seed of each run, or ``None`` for tapes that came from elsewhere (e.g. inversion).
        guidance: for a tape from :func:`disentkit.invert`, the guidance it was inverted under: the one that gives
            the image back (sampling with another warns). ``None`` for seeded tapes.
        exact: the per-step noise was solved to land on a recorded trajectory (``invert(method="exact")``). Such
            noise reaches |40| and amplifies any float rounding, including the rounding a UNet batch of another
            composition brings, so every sampler runs the rows of an exact tape one at a time, in the batch layout
            inversion used: the replay is then exact wherever the tape goes (beside other schedules, in a sweep).
    """

    x_T: torch.Tensor
    step_noise: torch.Tensor | None
    scheduler: str
    steps: int
    eta: float = 0.0
    seeds: tuple[int | None, ...] = ()
    guidance: float | None = None
    exact: bool = False

    def __post_init__(self):
        sampler_spec(self.scheduler)  # unknown names fail here, with the list of known ones
        if self.x_T.ndim != 4:
            raise TapeMismatchError(f"x_T must be (B, C, h, w), got shape {tuple(self.x_T.shape)}.")
        if self.step_noise is not None and self.step_noise.shape != (self.steps, *self.x_T.shape):
            raise TapeMismatchError(
                f"step_noise must be (steps, B, C, h, w) = {(self.steps, *self.x_T.shape)}, "
                f"got {tuple(self.step_noise.shape)}."
            )
        if is_stochastic(self.scheduler, self.eta) and self.step_noise is None:
            raise TapeMismatchError(
                f"sampler {self.scheduler!r} with eta={self.eta} draws noise at every step, but this tape has none; "
                "make it with NoiseTape.from_seed(...)."
            )
        if not self.seeds:
            object.__setattr__(self, "seeds", (None,) * self.batch)
        if len(self.seeds) != self.batch:
            raise TapeMismatchError(f"{len(self.seeds)} seeds for a batch of {self.batch}.")

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_seed(
        cls,
        pipe,
        seed: int | Sequence[int],
        steps: int = 50,
        scheduler: str = "ddim",
        eta: float = 0.0,
        height: int | None = None,
        width: int | None = None,
    ) -> "NoiseTape":
        """Draw the tape for one seed or a list of seeds (one run each) for ``pipe``'s latents of images of
        ``height`` x ``width`` pixels (default: the model's own size; both must be multiples of the VAE's factor,
        else :class:`~disentkit.errors.ImageSizeError`). Every image sampled from the tape has that size."""
        seeds = [seed] if isinstance(seed, int) else list(seed)
        if not seeds or not all(isinstance(s, int) for s in seeds):
            raise TapeMismatchError(f"seed must be an int or a non-empty list of ints, got {seed!r}.")
        if steps < 1:
            raise TapeMismatchError(f"steps must be at least 1, got {steps}.")
        shape = (1, *latent_shape(pipe, height, width))
        stochastic = is_stochastic(scheduler, eta)
        starts, noises = [], []
        for s in seeds:
            gen = torch.Generator("cpu").manual_seed(s)
            starts.append(torch.randn(shape, generator=gen, dtype=torch.float32))
            if stochastic:
                noises.append(torch.cat([torch.randn(shape, generator=gen, dtype=torch.float32) for _ in range(steps)]))
        step_noise = torch.stack(noises, dim=1) if stochastic else None  # (N, B, C, h, w)
        return cls(torch.cat(starts), step_noise, scheduler, steps, float(eta), tuple(seeds))

    @classmethod
    def concat(cls, tapes: Sequence["NoiseTape"]) -> "NoiseTape":
        """One tape whose batch is the runs of ``tapes`` in order (all for the same sampler settings)."""
        first = tapes[0]
        for t in tapes[1:]:
            first._check_same_sampler(t.scheduler, t.steps, t.eta)
        noise = None if first.step_noise is None else torch.cat([t.step_noise for t in tapes], dim=1)
        seeds = tuple(s for t in tapes for s in t.seeds)
        guidance = first.guidance if len({t.guidance for t in tapes}) == 1 else None  # mixed: none replays them all
        exact = any(t.exact for t in tapes)  # running every row alone keeps the exact ones exact
        return replace(first, x_T=torch.cat([t.x_T for t in tapes]), step_noise=noise, seeds=seeds, guidance=guidance,
                       exact=exact)  # fmt: skip

    def select(self, index: int | Sequence[int]) -> "NoiseTape":
        """The sub-batch of runs ``index``."""
        idx = [index] if isinstance(index, int) else list(index)
        noise = None if self.step_noise is None else self.step_noise[:, idx]
        return replace(self, x_T=self.x_T[idx], step_noise=noise, seeds=tuple(self.seeds[i] for i in idx))

    # ---- properties ---------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.x_T.shape[0]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_T.shape[1:])

    def __len__(self) -> int:
        return self.batch

    def image_size(self, pipe) -> tuple[int, int]:
        """(height, width) in pixels of the images this tape makes with ``pipe``'s VAE."""
        return tuple(n * pipe.vae_scale_factor for n in self.latent_shape[1:])

    def rows_per_call(self, max_batch: int | None) -> int | None:
        """How many runs of this tape a sampler may put into one UNet call: ``max_batch`` (None: all), or 1 for an
        exact tape (see ``exact``)."""
        return 1 if self.exact else max_batch

    # ---- checks -------------------------------------------------------------------------------------------
    def _check_same_sampler(self, scheduler: str, steps: int, eta: float) -> None:
        if (scheduler, steps, float(eta)) != (self.scheduler, self.steps, self.eta):
            raise TapeMismatchError(
                f"this tape was made for scheduler={self.scheduler!r}, steps={self.steps}, eta={self.eta}, "
                f"but scheduler={scheduler!r}, steps={steps}, eta={eta} was asked for. Make a matching tape: "
                f"NoiseTape.from_seed(pipe, seed, steps={steps}, scheduler={scheduler!r}, eta={eta})."
            )

    def check(self, pipe=None, scheduler: str | None = None, steps: int | None = None, eta: float | None = None):
        """Raise :class:`TapeMismatchError` unless the tape fits these sampler settings and ``pipe``'s latents."""
        self._check_same_sampler(
            self.scheduler if scheduler is None else scheduler,
            self.steps if steps is None else steps,
            self.eta if eta is None else eta,
        )
        if pipe is not None:
            channels = pipe.unet.config.in_channels
            if self.latent_shape[0] != channels:
                raise TapeMismatchError(
                    f"tape latents have {self.latent_shape[0]} channels but this model's UNet takes {channels}; "
                    "the tape was made for another model. Make one with NoiseTape.from_seed(pipe, ...)."
                )
        return self

    def warn_if_guidance_differs(self, guidance: float) -> None:
        """Warn when an inverted tape is sampled under another guidance than it was inverted with: the image does not
        come back (an edit at another guidance on purpose may ignore it)."""
        # Any scale <= 1 is "no guidance" to the sampler (the conditional prediction alone): those are the same.
        if self.guidance is not None and max(float(guidance), 1.0) != max(self.guidance, 1.0):
            warnings.warn(
                f"this tape was inverted under guidance {self.guidance:g} and gives its image back only under it; "
                f"sampling with guidance {float(guidance):g}. Pass guidance={self.guidance:g} to reconstruct and edit.",
                stacklevel=3,
            )

    # ---- files --------------------------------------------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "format": TAPE_FORMAT,
            "scheduler": self.scheduler,
            "steps": self.steps,
            "eta": self.eta,
            "latent_shape": list(self.latent_shape),
            "batch": self.batch,
            "seeds": list(self.seeds),
            "guidance": self.guidance,
            "exact": self.exact,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tape as one safetensors file (JSON metadata in its header), atomically."""
        tensors = {"x_T": self.x_T.detach().cpu().contiguous()}
        if self.step_noise is not None:
            tensors["step_noise"] = self.step_noise.detach().cpu().contiguous()
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"disentkit": json.dumps(self.metadata())})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NoiseTape":
        """Read a tape written by :meth:`save`; a missing, truncated or foreign file raises :class:`TapeFileError`."""
        path = Path(path)
        if not path.is_file():
            raise TapeFileError(f"no noise tape at {path}.")
        try:
            with safe_open(path, "pt") as f:
                meta = json.loads((f.metadata() or {})["disentkit"])
            tensors = load_file(path)
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError, ValueError) as err:
            raise TapeFileError(
                f"{path} is not a readable disentkit noise tape ({type(err).__name__}: {err}); "
                "it may be truncated or corrupt. Re-create it with NoiseTape.from_seed(...).save(path)."
            ) from err
        if meta.get("format") != TAPE_FORMAT:
            raise TapeFileError(f"{path} has tape format {meta.get('format')!r}; this disentkit reads {TAPE_FORMAT}.")
        tape = cls(
            x_T=tensors["x_T"],
            step_noise=tensors.get("step_noise"),
            scheduler=meta["scheduler"],
            steps=int(meta["steps"]),
            eta=float(meta["eta"]),
            seeds=tuple(meta["seeds"]),
            guidance=None if meta.get("guidance") is None else float(meta["guidance"]),  # absent in older tapes
            exact=bool(meta.get("exact", False)),  # absent in older tapes: such a tape replays as before
        )
        if list(tape.latent_shape) != meta["latent_shape"]:
            raise TapeFileError(f"{path}: header says latent shape {meta['latent_shape']}, data is {tape.latent_shape}.")
        return tape
