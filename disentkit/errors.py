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


class SceneError(DisentkitError, ValueError):
    """A toyworld scene has a factor value outside its vocabulary, or an object that leaves the image."""


class SceneFieldError(DisentkitError, TypeError):
    """A toyworld scene was asked for with a field that scenes do not have."""


class CaptionError(DisentkitError, ValueError):
    """A toyworld caption that the scene grammar cannot read ("a photo of a <kind>, <attribute>, ...")."""


class UnknownKeyError(DisentkitError, KeyError):
    """A name that is not there: a DataFrame column a plot needs, an image a widget was asked to show."""

    def __str__(self) -> str:  # KeyError's str() is the repr of its argument: quotes around the whole message
        return str(self.args[0]) if self.args else ""


class UnknownFactorError(UnknownKeyError):
    """A toyworld factor or factor value that the evaluator does not know."""


class TrainingConfigError(DisentkitError, ValueError):
    """A toyworld training setting is unknown or contradicts the saved training state it would resume."""


class MaskInputError(DisentkitError, ValueError):
    """Masks passed to mask_iou / centroid_shift are not (H,W) or (B,H,W) boolean-like arrays of equal shapes."""


class TrainingFailedError(DisentkitError, RuntimeError):
    """A toyworld training stage running in a child process failed (its log says why)."""


class UnknownMetricError(DisentkitError, ValueError):
    """A metric name that disentkit does not know (the message lists the known ones)."""


class PairsFileError(DisentkitError, ValueError):
    """A pairs file (c0, c1 per row) is missing, has no c0/c1 columns, or holds an empty or repeated pair."""


class MapMismatchError(DisentkitError, ValueError):
    """A disentanglement map's output folder holds partial results made with other settings than this run's."""


class OptionError(DisentkitError, ValueError):
    """An argument that takes one of a few values (``keep``, ``optimizer``, a grid axis, a recipe field...) got
    another, or a number outside its range."""


class LossError(DisentkitError, ValueError):
    """A loss term cannot be built as asked (no alternative prompt, floors for images that do not match...)."""


class LossTypeError(LossError, TypeError):
    """A loss term is not a callable ``fn(edited, reference)``."""


class LearnStepsError(DisentkitError, ValueError):
    """``learn_steps`` names no step, a step the sampler does not have, or is not a step index, slice or mask."""


class CheckpointMismatchError(DisentkitError, ValueError):
    """A ``checkpoint_dir`` holds the saved state of a different optimisation (other prompts, seeds, steps, losses...)."""


class ScheduleModelError(DisentkitError, ValueError):
    """A schedule learned on one model is applied to a different model."""


class InversionError(DisentkitError, ValueError):
    """Inversion was asked for with settings it does not support (another sampler, an unknown method)."""


class LayoutError(DisentkitError, ValueError):
    """Images or labels do not fit the grid or plot they are given to (counts or shapes disagree, nothing to show)."""



class ImageSizeError(DisentkitError, ValueError):
    """An image size the model cannot make (not a multiple of the VAE's factor), or a schedule or tape made at another
    size than the one asked for."""


class MapSettingsError(DisentkitError, ValueError):
    """A disentanglement map's seeds, switch steps or step count are empty, repeated or out of range."""


class MapIncompleteError(DisentkitError, RuntimeError):
    """A disentanglement map's folder lacks the results of some of its units (run the map again to finish it)."""


class MissingResultError(DisentkitError, FileNotFoundError):
    """A result a function reads back (a map's thumbnail strip, say) was never written."""
