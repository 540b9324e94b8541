"""Typed errors. Each one says what was wrong and how to fix it.

Every error derives from :class:`DisentkitError`, and also from the builtin it refines (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` keeps working for callers that do not know us.
"""

from __future__ import annotations


class DisentkitError(Exception):
    """Base class of every error disentkit raises on purpose."""


class ScheduleLengthError(DisentkitError, ValueError):
    """A mixing schedule has a different number of weights than the sampler has steps."""


class InvalidScheduleError(DisentkitError, ValueError):
    """A mixing schedule holds NaN/inf weights or has the wrong shape."""


class TapeMismatchError(DisentkitError, ValueError):
    """A noise tape was made for another scheduler, step count, eta or latent shape."""


class TapeFileError(DisentkitError, OSError):
    """A saved noise tape or schedule file is missing, truncated or corrupt."""


class ModelNotFoundError(DisentkitError, FileNotFoundError):
    """A model folder does not exist, or a hub id cannot be reached (offline) and is not cached."""


class DeviceUnavailableError(DisentkitError, RuntimeError):
    """The requested device (e.g. ``cuda``) is not available on this machine."""


class PromptError(DisentkitError, ValueError):
    """Prompts are empty, of mismatched lengths, or of the wrong type."""


class InvalidImageError(DisentkitError, ValueError):
    """An input is not an image (or an array/tensor that can be read as one)."""


class UnknownSchedulerError(DisentkitError, ValueError):
    """A sampler name that disentkit does not know."""


class MissingDependencyError(DisentkitError, ImportError):
    """An optional package a feature needs is not installed (the message names it and the alternative)."""
