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

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"  # the repository's notebooks/ folder

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
    """Write the executed notebook as a standalone HTML page (figures embedded)."""
    import nbformat
    from nbconvert import HTMLExporter

    from .files import write_text_atomic

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
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
        )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - any failure is reported in the summary, the next notebook still runs
        error, cell = _describe_failure(err)
    seconds = time.perf_counter() - start
    page = None
    if html and executed.is_file():  # a failed run is exported too: its HTML shows the traceback in place
        page = export_html(executed, out / f"{path.stem}.html")
    out_dir = Path(params["out_dir"])
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()) if out_dir.is_dir() else []
    return NotebookRun(path.stem, not error, seconds, executed, page, out_dir, files, error, cell)


def run_all(
    out: str | os.PathLike,
    parameters: dict[str, Any] | None = None,
    only: Sequence[str] | None = None,
    folder: str | os.PathLike = NOTEBOOK_DIR,
    html: bool = True,
) -> list[NotebookRun]:
    """Run every curated notebook (or ``only`` some) and write ``out/summary.csv``."""
    from .plotting import save_table

    runs = []
    for path in find_notebooks(folder, only):
        run = run_notebook(path, out, parameters, html=html)
        runs.append(run)
        status = "ok  " if run.ok else "FAIL"
        print(f"{status} {run.name:32s} {run.seconds:6.1f}s  {len(run.files):2d} files  {run.error}", flush=True)
    summary = pd.DataFrame(
        [{"notebook": r.name, "ok": r.ok, "seconds": round(r.seconds, 1), "files": len(r.files),
          "figures": sum(f.endswith(".png") for f in r.files), "error": r.error} for r in runs]
    )  # fmt: skip
    save_table(summary, Path(out) / "summary.csv")
    return runs


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

    runs = run_all(args.out, params, args.only, args.notebooks, html=not args.no_html)
    failed = [r for r in runs if not r.ok]
    total = sum(r.seconds for r in runs)
    print(f"\n{len(runs) - len(failed)}/{len(runs)} notebooks ran in {total:.0f}s; results in {args.out}/")
    for r in failed:
        print(f"  {r.name}: {r.error}  (see {r.executed})")
    return 1 if failed else 0


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


def style_target(c0: str, c1: str) -> tuple[str, str]:
    """The (factor, value) a toyworld caption ``c1`` adds to ``c0``: ("a photo of a face", "..., smiling") ->
    ("expression", "smiling"). The evaluator's question for "was the style reached?"."""
    from .toyworld.scenes import parse_caption

    base, styled = parse_caption(c0), parse_caption(c1)
    added = [(f, v) for f, v in styled.items() if base.get(f) != v]
    if len(added) != 1:
        raise ValueError(f"{c1!r} should add exactly one attribute to {c0!r}; it adds {added}.")
    return added[0]


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
