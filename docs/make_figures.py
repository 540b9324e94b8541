"""Draw the README's pictures from the bundled toyworld model (about a minute on a laptop CPU).

    python docs/make_figures.py            # writes docs/images/switch_grid.png and docs/images/quickstart.png

Both figures are what the README's code makes: the teaser is `dk.sweep_switch` over seeds x switch steps, the
quickstart image is the quickstart's `dk.sample` call, run as written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import disentkit as dk
from disentkit.plotting import image_grid, result_grid, save_figure
from disentkit.toyworld.evaluator import Evaluator

HERE = Path(__file__).resolve().parent
C0, C1 = "a photo of a circle", "a photo of a circle, red"


SEEDS = [0, 1, 2, 3, 4, 5]
SWITCHES = [50, 20, 15, 13, 10, 5, 0]


def teaser(pipe, out: Path) -> Path:
    """Rows: the switch step k (c0 for steps 0..k-1, c1 after); columns: seeds. k = 50 is pure c0, k = 0 pure c1.

    Prints what the toyworld evaluator reads off each cell (P(red), and the object-mask IoU with the seed's pure-c0
    image), the numbers the README's caption is checked against.
    """
    cond = dk.encode(pipe, C0, C1)
    tape = dk.NoiseTape.from_seed(pipe, seed=SEEDS, steps=50)
    res = dk.sweep_switch(pipe, cond, tape, switch_steps=SWITCHES, guidance=7.5, progress=False)
    title = f"'{C0}' for the first k of 50 steps, then '{C1}'"
    path = save_figure(result_grid(res, rows="schedule", cols="seed", title=title), out)

    evaluator = Evaluator.load()
    runs = res.runs.reset_index(drop=True)
    runs["p_red"] = evaluator.style_reached(res.pixels, "color", "red").numpy()
    # schedule 0 is k = 50, the pure-c0 image each cell's content is compared with
    reference = res.pixels[[runs.index[(runs["schedule"] == 0) & (runs["seed"] == s)][0] for s in runs["seed"]]]
    runs["mask_iou"] = evaluator.content_kept(res.pixels, reference)["mask_iou"].to_numpy()
    table = runs.pivot(index="schedule", columns="seed", values=["p_red", "mask_iou"]).round(2)
    table.index = [f"k={k}" for k in SWITCHES]
    print(f"the evaluator on the teaser (P(red), and mask IoU with the c0 image):\n{table.to_string()}")
    return path


def quickstart(pipe, out: Path) -> Path:
    """The README's quickstart, as written: seed 0, a switch at 13 of 50, guidance 7.5, next to pure c0 and c1."""
    cond = dk.encode(pipe, C0, C1)
    tape = dk.NoiseTape.from_seed(pipe, seed=0, steps=50)
    schedules = [dk.MixSchedule.constant(50, 0.0), dk.MixSchedule.switch(50, at=13), dk.MixSchedule.constant(50, 1.0)]
    out_ = dk.sample(pipe, cond, schedules, tape, guidance=7.5, progress=False)
    fig = image_grid(out_.images, rows=1, col_labels=["c0 only", "switch at 13", "c1 only"])
    return save_figure(fig, out)


def main() -> int:
    pipe = dk.load_pipeline("toyworld")
    images = HERE / "images"
    print(teaser(pipe, images / "switch_grid.png"))
    print(quickstart(pipe, images / "quickstart.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
