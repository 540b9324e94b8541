"""Interactive widgets for notebooks: a switch-step explorer, a lambda-curve editor, a side-by-side compare.

Each widget is a small class that owns its state and builds an ipywidgets tree in ``.widget``; every callback is
a plain method, so the logic runs (and is tested) without a browser: ``explorer.set_switch(12)`` does what moving
the slider does. Images are shown as ``ipywidgets.Image`` PNG bytes.

Sampling happens only where the user asks for a new image: :class:`SwitchExplorer` samples every switch step once,
up front, in one batched :func:`disentkit.sample` call (or takes a finished result), so the slider afterwards only
looks images up; :class:`LambdaEditor` samples when its "preview" button is pressed.

    ex = SwitchExplorer(pipe, cond, tape)
    ex.widget          # last expression of a cell: shows the slider and the image
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd
from PIL import Image

from .errors import InvalidScheduleError, LayoutError, OptionError, UnknownKeyError
from .plotting import figure_to_png, lambda_curves, metric_curves, to_array
from .sampling import SampleResult, sample
from .schedules import MixSchedule

DISPLAY_PX = 256  # small models make 32-64 px images; they are enlarged (pixel-exact) to this side for display


def to_png(image: Any, size: int | None = DISPLAY_PX) -> bytes:
    """PNG bytes of an image (PIL, (3, H, W) tensor or array), enlarged with nearest-neighbour to ``size`` px
    on its longer side when it is smaller (never shrunk)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray((to_array(image) * 255).round().astype(np.uint8))
    if size and max(image.size) < size:
        k = size / max(image.size)
        image = image.resize((round(image.width * k), round(image.height * k)), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class _Shown:
    """Makes the object itself displayable: a widget owner as the last expression of a cell shows its widget."""

    widget: W.Widget

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        png = self.snapshot()
        if png:
            # A static copy beside the live view: a page without a kernel (nbconvert's HTML, a notebook viewer)
            # cannot draw the widget and shows this picture of it instead; JupyterLab prefers the widget.
            import base64

            bundle = {**bundle, "image/png": base64.b64encode(png).decode("ascii")}
        else:
            # Nothing drawn yet: a page without a kernel would print the widget's bare repr, ``VBox(...)``.
            bundle = {**bundle, "text/plain": f"{type(self).__name__}: nothing drawn yet (it fills in as rows arrive)"}
        return bundle

    def snapshot(self) -> bytes:
        """PNG bytes of what the widget shows now (its main image), or b"" when it shows none yet."""
        image = getattr(self, "image", None)
        return bytes(getattr(image, "value", b"") or b"")


def _image_widget(image: Any = None) -> W.Image:
    return W.Image(value=to_png(image) if image is not None else b"", format="png")


# ---- switch-step explorer ------------------------------------------------------------------------------------
def _switch_images(result: SampleResult, seed_index: int) -> dict[int, Image.Image]:
    """{switch step: image} of one seed of a result made of switch schedules (first pair)."""
    images = {}
    runs = result.runs.reset_index(drop=True)
    for i, row in runs[(runs["seed_index"] == seed_index) & (runs["pair"] == 0)].iterrows():
        k = result.schedules[row["schedule"]].meta.get("switch")
        if k is None:
            raise InvalidScheduleError(f"schedule {row['label']!r} is not a switch schedule (no meta['switch']).")
        images[int(k)] = result.images[i]
    return images


class SwitchExplorer(_Shown):
    """A slider over the switch step k: c0 for steps 0..k-1, c1 from step k on, with the image for each k.

    Args:
        pipe, cond, tape: as for :func:`disentkit.sample`; the first seed of ``tape`` (``seed_index``) is shown.
        switch_steps: the k values on the slider (default every k in 0..N; k=N is pure c0, k=0 pure c1).
        guidance: classifier-free guidance scale.
        max_batch: passed to :func:`disentkit.sample` (lower it on a small GPU).
        result: a finished :class:`SampleResult` of switch schedules to show instead of sampling (its schedules
            must carry ``meta["switch"]``, as ``MixSchedule.switch`` and the switch sweeps make them).
        images: or images already made, ``{switch step: PIL image}`` (e.g. a map's thumbnail strip), with ``steps``
            the number of sampling steps they were made with; nothing is sampled and ``result`` stays None.

    Every image is made (or taken) when the explorer is built, so moving the slider is instant.
    """

    def __init__(
        self,
        pipe=None,
        cond=None,
        tape=None,
        switch_steps: Sequence[int] | None = None,
        guidance: float = 7.5,
        seed_index: int = 0,
        max_batch: int | None = None,
        result: SampleResult | None = None,
        images: Mapping[int, Image.Image] | None = None,
        steps: int | None = None,
    ):
        if images is None:
            if result is None:
                if pipe is None or cond is None or tape is None:
                    raise OptionError("SwitchExplorer needs pipe, cond and tape, a finished result=..., or images=...")
                n = tape.steps
                ks = list(range(n + 1)) if switch_steps is None else sorted(set(int(k) for k in switch_steps))
                schedules = [MixSchedule.switch(n, k) for k in ks]
                result = sample(pipe, cond, schedules, tape.select(seed_index), guidance, max_batch=max_batch,
                                progress=False)  # fmt: skip
                seed_index = 0
            images, steps = _switch_images(result, seed_index), result.schedules[0].steps
        elif result is not None:
            raise OptionError("SwitchExplorer takes result=... or images=..., not both.")
        elif not images or steps is None:
            raise OptionError("SwitchExplorer(images=...) needs at least one image and steps= (the sampling steps).")
        elif not all(0 <= int(k) <= steps for k in images):
            raise OptionError(f"SwitchExplorer(images=...): switch steps run from 0 to steps={steps}, got {sorted(images)}.")
        self.result = result
        self.images = {int(k): v for k, v in images.items()}  # switch step -> image; the cache the slider reads
        self.steps = int(steps)
        self.switch_steps = sorted(self.images)

        self.slider = W.SelectionSlider(
            options=self.switch_steps, value=self.switch_steps[len(self.switch_steps) // 2],
            description="switch k", continuous_update=True, layout=W.Layout(width="420px"),
        )  # fmt: skip
        self.image = _image_widget()
        self.caption = W.HTML()
        self.slider.observe(self._on_slider, names="value")
        self.widget = W.VBox([self.slider, self.image, self.caption])
        self._show(self.slider.value)

    @property
    def switch(self) -> int:
        """The switch step now shown."""
        return int(self.slider.value)

    def set_switch(self, k: int) -> None:
        """Show switch step ``k`` (what moving the slider does)."""
        if k not in self.images:
            raise OptionError(f"switch step {k} was not sampled; choose one of {self.switch_steps}.")
        self.slider.value = k  # the observer updates the image

    def _on_slider(self, change: Mapping) -> None:
        self._show(int(change["new"]))

    def _show(self, k: int) -> None:
        self.image.value = to_png(self.images[k])
        self.caption.value = (
            f"<b>switch@{k}</b>: c0 for steps 0..{k - 1} ({k} steps), c1 for the last {self.steps - k}"
            if 0 < k < self.steps
            else f"<b>switch@{k}</b>: {'pure c1' if k == 0 else 'pure c0'}"
        )


# ---- lambda-curve editor ---------------------------------------------------------------------------------------
def curve_from_points(points: Sequence[float], steps: int, label: str = "edited") -> MixSchedule:
    """A schedule through control ``points`` spread evenly over sampling time (first point at step 0, last at
    step N-1), linearly interpolated in between."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 1 or len(points) < 2:
        raise InvalidScheduleError(f"need at least two control points, got {points.tolist()}.")
    where = np.linspace(0, steps - 1, len(points))
    weights = np.interp(np.arange(steps), where, points)
    return MixSchedule.from_array(weights, label, {"control_points": points.tolist()})


class LambdaEditor(_Shown):
    """Sliders for a few control points of a lambda curve, the curve itself, and a sampled preview on request.

    Moving a slider redraws the curve only (cheap); the "preview" button samples the image with the curve
    (``on_preview``). ``lo``/``hi`` bound the sliders: the paper lets lambda leave [0, 1] (e.g. 1.2 late).
    """

    def __init__(
        self,
        pipe,
        cond,
        tape,
        points: Sequence[float] = (0.0, 0.0, 1.0, 1.0, 1.0),
        guidance: float = 7.5,
        lo: float = -0.5,
        hi: float = 1.5,
        seed_index: int = 0,
    ):
        self.pipe, self.cond, self.tape, self.guidance = pipe, cond, tape.select(seed_index), guidance
        self.steps = tape.steps
        self.sliders = [
            W.FloatSlider(value=float(p), min=lo, max=hi, step=0.05, description=f"t={k / (len(points) - 1):.2f}",
                          continuous_update=False, orientation="vertical")
            for k, p in enumerate(points)
        ]  # fmt: skip
        for s in self.sliders:
            s.observe(self._on_points, names="value")
        self.button = W.Button(description="preview", icon="play", button_style="primary")
        self.button.on_click(self.on_preview)
        self.curve = _image_widget()
        self.image = _image_widget()
        self.status = W.HTML("press <i>preview</i> to sample with this curve")
        self.last_result: SampleResult | None = None
        preview = W.HBox([self.curve, W.VBox([self.button, self.image])])
        self.widget = W.VBox([W.HBox(self.sliders), preview, self.status])
        self._draw_curve()

    @property
    def points(self) -> list[float]:
        return [float(s.value) for s in self.sliders]

    @property
    def schedule(self) -> MixSchedule:
        """The curve the sliders describe, as a schedule of the tape's step count."""
        return curve_from_points(self.points, self.steps)

    def set_points(self, points: Sequence[float]) -> None:
        """Set every control point at once (what dragging the sliders does), redrawing the curve once."""
        if len(points) != len(self.sliders):
            raise InvalidScheduleError(f"this editor has {len(self.sliders)} control points, got {len(points)} values.")
        for s in self.sliders:
            s.unobserve(self._on_points, names="value")
        try:
            for s, p in zip(self.sliders, points):
                s.value = float(p)  # the slider clips to its range, as the UI would
        finally:
            for s in self.sliders:
                s.observe(self._on_points, names="value")
        self._draw_curve()

    def _on_points(self, change=None) -> None:
        self._draw_curve()

    def _draw_curve(self) -> None:
        fig = lambda_curves(self.schedule, title=None, width=3.6, height=2.4)
        self.curve.value = figure_to_png(fig, dpi=80)

    def on_preview(self, button=None) -> SampleResult:
        """Sample with the current curve and show the image (the button's callback; tests call it directly)."""
        self.status.value = "sampling..."
        self.last_result = sample(self.pipe, self.cond, self.schedule, self.tape, self.guidance, progress=False)
        self.image.value = to_png(self.last_result.images[0])
        w = self.schedule.weights
        self.status.value = f"sampled with lambda from {w.min():.2f} to {w.max():.2f} over {self.steps} steps"
        return self.last_result


# ---- side-by-side compare ------------------------------------------------------------------------------------
class Compare(_Shown):
    """Two images side by side, each picked from a dict of named images, with their absolute difference.

    ``Compare({"c0": img0, "switch@20": img1, "learned": img2})``; ``.select("c0", "learned")`` is what the two
    dropdowns do. ``.difference`` is the mean absolute pixel difference of the pair shown, in [0, 1].
    """

    def __init__(self, images: Mapping[str, Any], left: str | None = None, right: str | None = None):
        if len(images) < 1:
            raise LayoutError("Compare needs at least one named image.")
        self.images = dict(images)
        names = list(self.images)
        self.left = W.Dropdown(options=names, value=left or names[0], description="left")
        self.right = W.Dropdown(options=names, value=right or names[-1], description="right")
        self.left_image, self.right_image, self.diff_image = _image_widget(), _image_widget(), _image_widget()
        self.caption = W.HTML()
        for d in (self.left, self.right):
            d.observe(self._update, names="value")
        self.widget = W.VBox([
            W.HBox([self.left, self.right]),
            W.HBox([self.left_image, self.right_image, self.diff_image]),
            self.caption,
        ])  # fmt: skip
        self.difference = float("nan")
        self._update()

    def select(self, left: str, right: str) -> None:
        for name in (left, right):
            if name not in self.images:
                raise UnknownKeyError(f"no image named {name!r}; names are {list(self.images)}.")
        self.left.value, self.right.value = left, right

    def _update(self, change=None) -> None:
        a, b = to_array(self.images[self.left.value]), to_array(self.images[self.right.value])
        self.left_image.value, self.right_image.value = to_png(a), to_png(b)
        if a.shape == b.shape:
            diff = np.abs(a - b)
            self.difference = float(diff.mean())
            # scaled so the largest difference is white: small edits would be invisible at true scale
            self.diff_image.value = to_png(diff / max(diff.max(), 1e-8))
            self.caption.value = f"left: <b>{self.left.value}</b> | right: <b>{self.right.value}</b> | " \
                                 f"|difference| (normalised): mean {self.difference:.3f}"
        else:
            self.difference = float("nan")
            self.diff_image.value = b""
            self.caption.value = f"sizes differ ({a.shape[:2]} vs {b.shape[:2]}); no difference image"


# ---- live loss plot ------------------------------------------------------------------------------------------
class LivePlot(_Shown):
    """A metric plot that redraws as rows arrive, e.g. as the ``callback`` of :func:`disentkit.optimize.optimize`.

    Call it with a mapping (``{"iter": 3, "loss": 0.41, ...}``), a one-row DataFrame / Series, or anything with a
    ``to_dict()``; numeric values named in ``ys`` (default: every numeric column except ``x``) are plotted against
    ``x``. ``.history`` is the DataFrame of all rows so far.
    """

    def __init__(self, x: str = "iter", ys: Sequence[str] | None = None, title: str = "loss"):
        self.x, self.ys, self.title = x, list(ys) if ys else None, title
        self.rows: list[dict] = []
        self.image = _image_widget()
        self.widget = W.VBox([self.image])

    @property
    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def __call__(self, row: Any, *args, **kwargs) -> None:
        if isinstance(row, pd.DataFrame):
            row = row.iloc[-1].to_dict()
        elif hasattr(row, "to_dict"):
            row = row.to_dict()
        elif not isinstance(row, Mapping):
            row = dict(vars(row))  # a dataclass-like record
        row = dict(row)
        row.setdefault(self.x, len(self.rows))
        self.rows.append(row)
        self.redraw()

    def redraw(self) -> None:
        df = self.history
        ys = self.ys or [c for c in df.columns if c != self.x and pd.api.types.is_numeric_dtype(df[c])]
        ys = [y for y in ys if y in df]
        if not ys or df.empty:
            return
        self.image.value = figure_to_png(metric_curves(df, self.x, ys, title=self.title), dpi=80)


def show(widget_owner: Any) -> None:
    """Display a disentkit widget object (or any ipywidget) in the notebook."""
    from IPython.display import display

    display(getattr(widget_owner, "widget", widget_owner))


__all__ = ["Compare", "LambdaEditor", "LivePlot", "SwitchExplorer", "curve_from_points", "show", "to_png"]
