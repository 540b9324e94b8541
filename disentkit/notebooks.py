"""Run the curated notebooks, and the few defaults they share.

    python -m disentkit.notebooks --out outputs/notebooks            # every notebook, default parameters
    python -m disentkit.notebooks --out outputs/notebooks --quick    # few steps and seeds: a smoke run
    python -m disentkit.notebooks --only 03 04 -p steps=20 -p model=/path/to/pipeline

For each notebook ``NN_name.ipynb`` the runner executes it with papermill into ``OUT/NN_name.ipynb`` (parameters:
``out_dir=OUT/NN_name`` plus what was asked), exports ``OUT/NN_name.html`` with nbconvert, lists the figures and
tables the notebook wrote into ``OUT/NN_name/``, and prints a summary (also written to ``OUT/summary.csv``). A
failing notebook does not stop the others; the exit status is 1 if any failed, and the summary names the cell.

The second half of this module holds the defaults the notebooks share (prompts per model, the evaluator, the
paper's attribute pairs), so that each notebook's setup cell stays one screen long.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .targets import edit_target

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"  # the repository's notebooks/ folder

# Seconds each notebook took at its defaults, two kernels on a quiet 2-core CPU (2026-12-07; the course 101 s wall):
# only used to start the long ones first.
RUN_SECONDS = {"09_measuring_disentanglement": 35, "10_paper_pairs": 28, "06_learning_lambda": 26,
               "02_fixed_noise": 18, "03_switch_sweep": 18, "07_transfer": 16, "08_edit_your_image": 13,
               "01_tour": 12, "05_soft_mixing": 12, "04_when_does_it_appear": 11}  # fmt: skip

# Notebooks that read what an earlier one wrote (07 transfers the schedule 06 learned): run after it.
NEEDS = {"07_transfer": ("06_learning_lambda",)}

# A smoke run: small enough for a laptop CPU in a few minutes for all notebooks, big enough that every cell does
# real work (several steps, so a switch step lies strictly inside the trajectory).
QUICK_PARAMETERS = {"steps": 6, "seeds": [0], "scale": 0.2}


@dataclass
class NotebookRun:
    """The outcome of running one notebook."""

    name: str
    ok: bool
    seconds: float
    executed: Path
    html: Path | None
    out_dir: Path
    files: list[str] = field(default_factory=list)
    error: str = ""  # "cell N (id ...): ExceptionName: message" when a cell raised
    failed_cell: int | None = None
    setup_seconds: float = float("nan")  # the cells up to and including the setup cell (imports, model load)
    kernel_seconds: float = float("nan")  # what no cell accounts for: kernel start-up and papermill's own work
    claims: pd.DataFrame | None = None  # the claims the notebook checked (out_dir/claims.json)

    @property
    def claims_failed(self) -> list[str]:
        from .claims import failures

        return failures(self.claims) if self.claims is not None else []


def _cell_seconds(executed: Path) -> tuple[float, float]:
    """(seconds up to and including the setup cell, seconds of all cells) from papermill's per-cell metadata."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    durations, setup_end = [], 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        durations.append(float(cell.metadata.get("papermill", {}).get("duration") or 0.0))
        if "setup(" in cell.source and setup_end == 0:
            setup_end = len(durations)
    return sum(durations[:setup_end]), sum(durations)


def find_notebooks(folder: str | os.PathLike = NOTEBOOK_DIR, only: Sequence[str] | None = None) -> list[Path]:
    """The curated notebooks ``NN_*.ipynb`` in ``folder``, sorted; ``only`` keeps those whose name starts with
    one of the given prefixes (``["03", "04_when"]``)."""
    found = sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.stem.startswith(o) for o in only)]
    return found


def _describe_failure(err: Exception) -> tuple[str, int | None]:
    """Where and why a notebook failed; papermill's error carries the cell index and the exception."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        first = (err.evalue or "").splitlines()[0] if err.evalue else ""
        return f"cell {err.cell_index} (exec count {err.exec_count}): {err.ename}: {first}", err.cell_index
    return f"{type(err).__name__}: {err}", None


def export_html(executed: Path, html: Path) -> Path:
    """Write the executed notebook as a standalone HTML page (figures embedded).

    A widget needs a live kernel, which a page does not have: its output is shown by the static picture the
    disentkit widgets put beside the live view (``image/png``), not as an empty widget box."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    from .files import write_text_atomic

    priority = ["text/html", "text/markdown", "image/svg+xml", "text/latex", "image/png", "image/jpeg", "text/plain"]
    exporter = HTMLExporter(config=Config({"NbConvertBase": {"display_data_priority": priority}}))
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    return write_text_atomic(html, body)


def run_notebook(
    path: str | os.PathLike,
    out: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    html: bool = True,
    timeout: int = 1800,
    kernel_name: str = "python3",
) -> NotebookRun:
    """Execute one notebook with papermill into ``out``; never raises for a failing cell (see ``.error``).

    The notebook gets ``out_dir=out/<name>`` unless ``parameters`` sets it. The kernel runs in the repository root
    so relative paths in parameters mean the same as on the command line.
    """
    import papermill as pm

    path, out = Path(path), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = {"out_dir": str((out / path.stem).resolve()), **(parameters or {})}
    executed = out / path.name
    start = time.perf_counter()
    error, cell = "", None
    try:
        pm.execute_notebook(
            str(path), str(executed), parameters=params, kernel_name=kernel_name, cwd=str(Path.cwd()),
            progress_bar=False, execution_timeout=timeout, log_output=False,
            # the headless kernel's own log (its localhost TCP transport, its shutdown) is noise in the runner's
            # output; a failing cell still reaches us through papermill, with its traceback
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - any failure is reported in the summary, the next notebook still runs
        error, cell = _describe_failure(err)
    seconds = time.perf_counter() - start
    page = None
    if html and executed.is_file():  # a failed run is exported too: its HTML shows the traceback in place
        page = export_html(executed, out / f"{path.stem}.html")
    out_dir = Path(params["out_dir"])
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()) if out_dir.is_dir() else []
    run = NotebookRun(path.stem, not error, seconds, executed, page, out_dir, files, error, cell)
    if executed.is_file():
        run.setup_seconds, cells = _cell_seconds(executed)
        run.kernel_seconds = max(0.0, seconds - cells)
    if (out_dir / "claims.json").is_file():
        from .claims import load_claims

        run.claims = load_claims(out_dir)
    return run


def run_all(
    out: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    only: Sequence[str] | None = None,
    folder: str | os.PathLike = NOTEBOOK_DIR,
    html: bool = True,
    jobs: int = 1,
    per_notebook: dict[str, dict[str, Any]] | None = None,
) -> list[NotebookRun]:
    """Run every curated notebook (or ``only`` some), ``jobs`` kernels at a time, and write ``out/summary.csv``
    (see :func:`summary_frame`); prints one line per notebook with its time, its fixed cost and its claims.
    ``per_notebook`` adds parameters for single notebooks ({"07_transfer": {"seeds": [3]}})."""
    from .plotting import save_table

    from concurrent.futures import ThreadPoolExecutor

    paths = find_notebooks(folder, only)
    jobs = max(1, min(jobs, len(paths)))
    # With several kernels at once each gets one torch thread: two kernels on two cores beat one kernel whose
    # OpenMP threads wait for each other. The kernels inherit the variable; this process keeps its own setting.
    saved = os.environ.get("OMP_NUM_THREADS")
    if jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
    runs = []
    futures: dict[str, Any] = {}

    def run_after(path: Path) -> NotebookRun:
        # A notebook that reads another's output waits for it (submitted earlier, so it is already running).
        for before in NEEDS.get(path.stem, ()):
            if before in futures:
                futures[before].result()
        return run_notebook(path, out, {**(parameters or {}), **(per_notebook or {}).get(path.stem, {})}, html)

    # Longest first, so that two kernels finish together rather than one waiting for the last long notebook; a
    # notebook that needs another's output goes last, so its kernel does not sit waiting while that one runs.
    order = sorted(paths, key=lambda p: -RUN_SECONDS.get(p.stem, 0)) if jobs > 1 else list(paths)
    order = [p for p in order if p.stem not in NEEDS] + [p for p in order if p.stem in NEEDS]
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for p in order:
                futures[p.stem] = pool.submit(run_after, p)
            from concurrent.futures import as_completed

            for future in as_completed(list(futures.values())):  # a line as each one ends
                print(_summary_line(future.result()), flush=True)
            runs = [futures[p.stem].result() for p in paths]  # the summary in course order
    finally:
        if jobs > 1:
            os.environ.pop("OMP_NUM_THREADS") if saved is None else os.environ.update(OMP_NUM_THREADS=saved)
    save_table(summary_frame(runs), Path(out) / "summary.csv")
    return runs


def _summary_line(run: NotebookRun) -> str:
    status = "ok  " if run.ok else "FAIL"
    c = run.claims
    claims = "no claims" if c is None else (
        f"claims {int((c.status == 'holds').sum())}/{len(c)} hold" + (f", {int((c.status == 'not judged').sum())} not judged"
                                                                 if (c.status == "not judged").any() else "")
    )  # fmt: skip
    line = (f"{status} {run.name:30s} {run.seconds:6.1f}s (setup {run.setup_seconds:4.1f}s, kernel "
            f"{run.kernel_seconds:4.1f}s)  {len(run.files):2d} files  {claims}  {run.error}")  # fmt: skip
    return "\n".join([line, *[f"     does not hold: {f}" for f in run.claims_failed]])


def summary_frame(runs: Sequence[NotebookRun]) -> pd.DataFrame:
    """One row per notebook: ok, seconds (total; setup = up to the setup cell; kernel = start-up), files, claims."""
    rows = []
    for r in runs:
        c = r.claims if r.claims is not None else pd.DataFrame(columns=["status"])
        rows.append({"notebook": r.name, "ok": r.ok, "seconds": round(r.seconds, 1),
                     "setup_seconds": round(r.setup_seconds, 1), "kernel_seconds": round(r.kernel_seconds, 1),
                     "files": len(r.files), "figures": sum(f.endswith(".png") for f in r.files),
                     "claims": len(c), "claims_hold": int((c["status"] == "holds").sum()),
                     "claims_not_judged": int((c["status"] == "not judged").sum()),
                     "claims_failed": int((c["status"] == "does not hold here").sum()), "error": r.error})  # fmt: skip
    return pd.DataFrame(rows)


def _parse_value(text: str) -> Any:
    """``-p steps=20`` gives 20, ``-p seeds=[1,2]`` a list, ``-p model=toyworld`` the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disentkit.notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/notebooks", help="folder for executed notebooks, HTML and figures")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_PARAMETERS}")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 03 04")
    parser.add_argument("--model", help="model for every notebook (default: each notebook's own, toyworld)")
    parser.add_argument("--device", help="device for every notebook (default: cuda if present, else cpu)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any other notebook parameter (repeatable)")  # fmt: skip
    parser.add_argument("--no-html", action="store_true", help="skip the HTML export")
    parser.add_argument("--notebooks", default=str(NOTEBOOK_DIR), help="folder holding the notebooks")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="kernels at a time, one torch thread each (default: 2 on a machine with 2+ cores)")
    parser.add_argument("--thumbnails", metavar="DIR",
                        help="after the run, write each notebook's key figure, shrunk, into DIR (docs/images/course)")
    args = parser.parse_args(argv)

    params: dict[str, Any] = dict(QUICK_PARAMETERS) if args.quick else {}
    if args.model:
        params["model"] = args.model
    if args.device:
        params["device"] = args.device
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"-p expects NAME=VALUE, got {item!r}")
        params[name.strip()] = _parse_value(value.strip())
    if not find_notebooks(args.notebooks, args.only):
        parser.error(f"no notebooks NN_*.ipynb in {args.notebooks}" + (f" matching {args.only}" if args.only else ""))

    start = time.perf_counter()
    runs = run_all(args.out, params, args.only, args.notebooks, html=not args.no_html, jobs=args.jobs)
    wall = time.perf_counter() - start
    failed = [r for r in runs if not r.ok]
    total, fixed = sum(r.seconds for r in runs), sum(r.setup_seconds + r.kernel_seconds for r in runs)
    print(f"\n{len(runs) - len(failed)}/{len(runs)} notebooks ran in {wall:.0f}s wall ({args.jobs} at a time; "
          f"{total:.0f}s of notebook time, {fixed:.0f}s of it kernel start-up and setup); results in {args.out}/")
    for r in failed:
        print(f"  {r.name}: {r.error}  (see {r.executed})")
    wrong = [line for r in runs for line in r.claims_failed]
    if wrong:
        print(f"{len(wrong)} claims did not hold (the text around them needs rereading):")
        print("\n".join(f"  {w}" for w in wrong))
    if args.thumbnails:
        for path in write_thumbnails(runs, args.thumbnails):
            print(f"thumbnail: {path}")
    return 1 if failed else 0


# The figure that shows each lesson at a glance; the README's course table and docs/course.md show these.
KEY_FIGURES = {
    "01_tour": "edit.png",
    "02_fixed_noise": "guidance.png",
    "03_switch_sweep": "switch_grid.png",
    "04_when_does_it_appear": "trajectory.png",
    "05_soft_mixing": "soft_grid.png",
    "06_learning_lambda": "images.png",
    "07_transfer": "transfer_grid.png",
    "08_edit_your_image": "edit.png",
    "09_measuring_disentanglement": "windows.png",
    "10_paper_pairs": "pairs_grid.png",
}


def write_thumbnails(runs: Sequence[NotebookRun], folder: str | os.PathLike, width: int = 480) -> list[Path]:
    """Each run's key figure (:data:`KEY_FIGURES`) shrunk to ``width`` px into ``folder`` as ``NN_name.png``."""
    from PIL import Image

    from .files import atomic_path

    folder = Path(folder)
    written = []
    for run in runs:
        source = run.out_dir / KEY_FIGURES.get(run.name, "")
        if not run.ok or not source.is_file():
            continue
        image = Image.open(source).convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        with atomic_path(folder / f"{run.name}.png") as tmp:
            image.save(tmp, format="PNG", optimize=True)
        written.append(folder / f"{run.name}.png")
    return written


# ======================================================================================================================
# The setup cell: one call that loads everything a lesson needs, quietly


def quiet() -> None:
    """Keep library chatter out of the lesson: weight-loading bars and info logs of diffusers/transformers, and the
    deprecation warnings they raise at import or load time (none of which a student can act on). disentkit's own
    warnings (a tape replayed under another guidance, say) stay on: they are about the student's inputs."""
    import logging
    import warnings

    for module in ("diffusers", "transformers", "torch", "huggingface_hub", "accelerate"):
        warnings.filterwarnings("ignore", module=module)
        logging.getLogger(module).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


@dataclass
class Lesson:
    """Everything a notebook's setup cell makes: the model, prompts, noise, evaluator, output folder and claims.

    Attributes: ``pipe``, ``cond`` (c0/c1 encoded), ``tape`` (one noise tape for ``seeds``), ``evaluator`` (the
    toyworld ground truth, or None), ``out`` (the folder figures go to), ``claims``
    (:class:`~disentkit.claims.Claims`, written to ``out/claims.json``), and the parameters as given.
    """

    name: str
    model: str
    device: str
    steps: int
    seeds: list[int]
    height: int | None
    width: int | None
    guidance: float
    c0: str
    c1: str
    out: Path
    pipe: Any
    cond: Any
    tape: Any
    evaluator: Any
    claims: Any
    clip_source: str | None = None
    seconds: float = 0.0
    _clip: Any = None

    @property
    def toy(self) -> bool:
        return is_toyworld(self.model)

    @property
    def target(self) -> tuple[str, str] | None:
        """The (factor, value) ``c1`` adds to ``c0`` when both are toyworld captions, else None."""
        try:
            return style_target(self.c0, self.c1)
        except ValueError:
            return None

    def expect(self, expected: str, seen: str, holds: bool | None, truth: bool = False, why: str = "") -> None:
        """A checked claim (see :mod:`disentkit.claims`): printed and recorded in ``out/claims.json`` (and in
        ``self.claims.items``; nothing is returned, so a cell that ends with a claim shows only its line).

        ``truth=True``: the claim rests on the toyworld evaluator; without one it is recorded as *not judged*
        (the evaluator's columns are NaN then, so ``seen`` and ``holds`` were computed from nothing)."""
        if truth and self.evaluator is None:
            why = "needs the toyworld evaluator's ground truth, which exists only for toyworld images"
            self.claims.expect(expected, "no ground truth on this model", None, why)
        else:
            self.claims.expect(expected, seen, holds, why)

    def clip(self):
        """The CLIP the losses and metrics use (parameter ``clip``: a folder or hub id; None: the model's default),
        loaded once."""
        if self._clip is None:
            from .errors import ModelNotFoundError
            from .losses import default_clip, load_clip

            source = self.clip_source or default_clip(self.pipe)
            try:
                self._clip = load_clip(source, self.pipe.unet.device)
            except ModelNotFoundError as err:
                raise ModelNotFoundError(
                    f"this notebook needs a CLIP and could not load {source!r}: set its `clip` parameter to a "
                    f"CLIPModel folder or a hub id available offline (papermill: -p clip /path/to/clip). {err}"
                ) from err
        return self._clip

    def sample(self, schedules, tape=None, cond=None, **kwargs):
        """:func:`disentkit.sample` with this lesson's prompts, tape and guidance, without a progress bar."""
        from .sampling import sample

        return sample(self.pipe, cond or self.cond, schedules, tape if tape is not None else self.tape,
                      self.guidance, progress=False, **kwargs)  # fmt: skip

    def save(self, fig, name: str):
        """Save a figure (or a DataFrame as CSV) into ``out`` and return the figure, so a cell can end with it."""
        from .plotting import save_figure, save_table

        if isinstance(fig, pd.DataFrame):
            save_table(fig, self.out / name)
        else:
            save_figure(fig, self.out / name)
        return fig


def setup(
    name: str,
    model: str = "toyworld",
    device: str | None = None,
    steps: int = 50,
    seeds: Sequence[int] = (0, 1, 2),
    height: int | None = None,
    width: int | None = None,
    guidance: float = 7.5,
    c0: str | None = None,
    c1: str | None = None,
    use_evaluator: bool | None = None,
    out_dir: str | os.PathLike | None = None,
    clip: str | None = None,
    echo: bool = True,
) -> Lesson:
    """The setup cell of every notebook: quiet the libraries, load the model (float16 on a GPU for real SD), encode
    the prompts (the model's defaults when None), draw one noise tape for ``seeds``, load the evaluator on
    toyworld, create ``out_dir`` and start its ``claims.json``. Prints one line saying what was loaded."""
    import torch

    from .claims import CLAIMS_FILE, Claims
    from .conditioning import encode
    from .noise import NoiseTape
    from .pipeline import load_pipeline

    start = time.perf_counter()
    quiet()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    c0, c1 = default_prompts(model, c0, c1)
    out = Path(out_dir or f"outputs/notebooks/{name}")
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in seeds]
    pipe = load_pipeline(model, device=device, dtype=default_dtype(model, device))
    cond = encode(pipe, c0, c1)
    tape = NoiseTape.from_seed(pipe, seeds, steps=steps, height=height, width=width)
    evaluator = load_evaluator(model, use_evaluator)
    claims = Claims(name, out / CLAIMS_FILE, echo=echo)
    claims.path.unlink(missing_ok=True)  # a rerun starts its claims afresh
    lesson = Lesson(name, os.fspath(model), str(device), steps, seeds, height, width, float(guidance), c0, c1, out,
                    pipe, cond, tape, evaluator, claims, clip, time.perf_counter() - start)  # fmt: skip
    truth = "the toyworld evaluator judges the claims" if evaluator is not None else "no evaluator: claims that need ground truth are not judged"
    print(f"{lesson.model} on {device}, {steps} steps, seeds {seeds}; {truth}\nc0 = {c0!r}\nc1 = {c1!r}")
    return lesson


# ======================================================================================================================
# Defaults the notebooks share


def is_toyworld(model: str | os.PathLike) -> bool:
    """Whether ``model`` names the bundled toy model (by name or by its folder)."""
    from .pipeline import TOYWORLD, toyworld_dir

    name = os.fspath(model)
    if name == TOYWORLD:
        return True
    path = Path(name).expanduser()
    return path.exists() and path.resolve().is_relative_to(toyworld_dir().resolve())


def default_prompts(model: str | os.PathLike, c0: str | None = None, c1: str | None = None) -> tuple[str, str]:
    """The prompts a notebook uses when none are given: toyworld's captions, or the paper's first pair."""
    d0, d1 = (
        # The colour edit: the attribute the bundled toy model follows best (see the README's toyworld report).
        ("a photo of a circle", "a photo of a circle, red")
        if is_toyworld(model)
        else ("A photo of person", "A photo of person, smiling")
    )
    return c0 or d0, c1 or d1


def default_switch(model: str | os.PathLike, steps: int) -> int:
    """The switch step a notebook uses when it needs one: the paper's 20 of 50 (40%) on Stable Diffusion; 26% on
    toyworld, where the default colour edit's measured window lies (step 13 of 50, benchmarks/toyworld_report.py)."""
    return max(1, round((0.26 if is_toyworld(model) else 0.4) * steps))


def default_dtype(model: str | os.PathLike, device: str):
    """float16 for real Stable Diffusion on a GPU (half the memory), float32 otherwise (the toy model is tiny)."""
    import torch

    return torch.float16 if str(device).startswith("cuda") and not is_toyworld(model) else None


def load_evaluator(model: str | os.PathLike, use: bool | None = None):
    """The toyworld evaluator, or ``None`` when we cannot or should not measure.

    ``use=None`` measures only on the toy model (its images are the ones the evaluator knows) and only if its
    weights are installed; ``use=True`` insists (an error if the weights are missing), ``False`` never loads it.
    """
    from .toyworld.evaluator import DEFAULT_WEIGHTS, Evaluator

    if use is None:
        use = is_toyworld(model)
        if use and not (DEFAULT_WEIGHTS / "model.safetensors").is_file():
            print(f"(no toyworld evaluator weights in {DEFAULT_WEIGHTS}; measurements are skipped)")
            return None
    return Evaluator.load() if use else None


# The (factor, value) a toyworld caption c1 adds to c0, under the name the notebooks know it by.
style_target = edit_target


def default_attributes(model: str | os.PathLike, c0: str | None = None) -> list[str]:
    """Attributes appended to ``c0`` in the attribute x step map: one per toyworld factor, or the paper's."""
    if not is_toyworld(model):
        return ["smiling", "crying", "angry", "young", "Egyptian mural style", "renaissance style"]
    local = ["smiling"] if (c0 or default_prompts(model)[0]).endswith("face") else []
    return local + ["red", "striped", "at night", "in the snow"]


# The paper's pairs (Wu et al. 2023, Fig. 1/4): seed and how many of 50 steps use c0. Toy analogues pair a global
# change (rendering, background) with the paper's global styles and a local one (expression, colour, texture)
# with its local attributes, keeping the paper's seed and c0 steps.
_PAPER = [
    ("person", "smiling", 42, 20, "face", ", smiling"),
    ("face", "crying", 42, 20, "face", ", frowning"),
    ("person", "angry", 42, 20, "circle", ", red"),
    ("person", "young", 34, 20, "star", ", yellow"),
    ("person", "Egyptian mural style", 42, 10, "square", "sketch"),
    ("person", "renaissance style", 42, 12, "star", ", striped"),
    ("lake", "in milky galaxy", 21, 10, "triangle", ", at night"),
    ("church exterior", "golden", 52, 10, "square", ", orange"),
    ("church exterior", "covered by snow", 42, 12, "square", ", in the snow"),
    ("castle", "children's drawing style", 42, 10, "triangle", "sketch"),
    ("street view", "Cyberpunk style", 35, 12, "circle", ", at sunset"),
    ("forest", "cherry blossom", 66, 12, "triangle", ", dotted"),
]


def paper_pairs(model: str | os.PathLike) -> pd.DataFrame:
    """The paper's attribute pairs (columns c0, c1, seed, c0_steps, paper) for Stable Diffusion, or their toy
    analogues (same seed and c0 steps) for toyworld."""
    rows = []
    for thing, attribute, seed, c0_steps, toy_kind, toy_change in _PAPER:
        paper = f"{thing} -> {attribute}"
        if is_toyworld(model):
            c0 = f"a photo of a {toy_kind}"
            c1 = f"a sketch of a {toy_kind}" if toy_change == "sketch" else c0 + toy_change
        else:
            c0, c1 = f"A photo of {thing}", f"A photo of {thing}, {attribute}"
        rows.append({"c0": c0, "c1": c1, "seed": seed, "c0_steps": c0_steps, "paper": paper})
    return pd.DataFrame(rows)


def example_image(pipe, model, c0: str, image_path=None, seed: int = 0, steps: int = 50, guidance: float = 7.5,
                  height: int | None = None, width: int | None = None):
    """An image to invert and edit, at the model's size: ``image_path`` if given; else a toyworld scene rendered
    for ``c0`` (the toy model's "real photo"); else the model's own ``c0`` sample for ``seed``."""
    import numpy as np
    from PIL import Image

    from .pipeline import latent_shape

    _, h, w = latent_shape(pipe, height, width)
    size = (w * pipe.vae_scale_factor, h * pipe.vae_scale_factor)
    if image_path is not None:
        return Image.open(image_path).convert("RGB").resize(size, Image.BICUBIC)
    if is_toyworld(model):
        from .toyworld.scenes import render, scene_for_caption

        pixels, _ = render(scene_for_caption(c0, np.random.default_rng(seed)), size=size[0])
        return Image.fromarray(pixels).resize(size, Image.BICUBIC)
    from . import MixSchedule, NoiseTape, encode, sample

    tape = NoiseTape.from_seed(pipe, seed, steps=steps, height=height, width=width)
    return sample(pipe, encode(pipe, c0, c0), MixSchedule.constant(steps, 0.0), tape, guidance, progress=False).images[0]


if __name__ == "__main__":
    sys.exit(main())
