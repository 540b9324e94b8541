"""Write the curated notebooks (notebooks/NN_name.ipynb) from the cell sources below.

    python notebooks/_build.py          # rewrite every notebook
    python notebooks/_build.py --check  # exit 1 if a committed notebook differs from what this script writes

Why a script: a notebook's JSON is hard to review, a Python list of cells is not. The notebooks are written
without outputs or execution counts; `python -m disentkit.notebooks` executes them.

Every notebook has the same shape: a `parameters` cell (papermill overrides it: the tests pass a tiny model and
few steps; `model="CompVis/stable-diffusion-v1-4"` with `device="cuda"` runs the real thing), a setup cell that is
one call (`notebooks.setup`), then short cells that call the library. Markdown says what we expect and *why*; every
statement that counts, compares or names a step is a checked claim made by a code cell (`ctx.expect`), printed as
"expected: ... / seen: ... (holds | does not hold here)" and recorded in `out_dir/claims.json`. Markdown never
writes a number the run did not compute. Each notebook ends with an exercise (its answer folded) and a link to
the next one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
ORDER = ["01_tour", "02_fixed_noise", "03_switch_sweep", "04_when_does_it_appear", "05_soft_mixing",
         "06_learning_lambda", "07_transfer", "08_edit_your_image", "09_measuring_disentanglement",
         "10_paper_pairs"]  # fmt: skip


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def parameters(name: str, extra: str = "", steps: int = 50, seeds: str = "[0, 1, 2]") -> object:
    """The papermill `parameters` cell: the same knobs in every notebook, plus a few of its own."""
    text = f'''
model = "toyworld"   # the bundled toy model, or a diffusers folder / hub id (CompVis/stable-diffusion-v1-4 on a GPU)
device = None        # None: cuda if there is a GPU, else cpu
steps = {steps}           # sampling steps (the paper: 50)
seeds = {seeds}
height = None        # image size in px; None: the model's own (64 for toyworld, 512 for SD v1.4)
width = None
guidance = 7.5       # classifier-free guidance (the paper: 7.5)
c0 = None            # neutral prompt; None: the model's default (toyworld: "a photo of a circle")
c1 = None            # styled prompt; None: the model's default (toyworld: "a photo of a circle, red")
scale = 1.0          # < 1 samples fewer grid points and iterations (the tests use ~0.1)
use_evaluator = None # None: judge claims with the toyworld evaluator when the model is toyworld
out_dir = "outputs/notebooks/{name}"
{extra}'''
    cell = code(text)
    cell.metadata["tags"] = ["parameters"]
    return cell


def setup_cell(name: str, clip: bool = False):
    extra = ", clip=clip" if clip else ""
    return code(f'''
%matplotlib inline
import numpy as np
import pandas as pd
import torch

import disentkit as dk
from disentkit import lessons, notebooks, plotting, widgets
from disentkit.claims import fmt

ctx = notebooks.setup("{name}", model=model, device=device, steps=steps, seeds=seeds, height=height, width=width,
                      guidance=guidance, c0=c0, c1=c1, use_evaluator=use_evaluator, out_dir=out_dir{extra})
''')


def exercise(task: str, answer: str):
    """A "try it yourself" cell and its answer, folded (click to open; it stays folded in the HTML export too)."""
    return md(f"""
**Try it yourself.** {task.strip()}

<details><summary>Answer (click to open)</summary>

{answer.strip()}

</details>
""")


def next_up(name: str, why: str = ""):
    k = ORDER.index(name)
    if k + 1 == len(ORDER):
        return md("**End of the course.** Back to the roadmap: [01_tour](01_tour.ipynb), or `docs/course.md`.")
    nxt = ORDER[k + 1]
    return md(f"**Next:** [{nxt}]({nxt}.ipynb){': ' + why if why else ''}")


NOTEBOOKS: dict[str, list] = {}
COURSE_TABLE = """
| # | notebook | what it teaches | runtime |
|---|---|---|---|
| 1 | [01_tour](01_tour.ipynb) | the whole idea in four pictures: fixed noise, a switch, a learned schedule | 12 s |
| 2 | [02_fixed_noise](02_fixed_noise.ipynb) | what "all noise fixed" means; replay bit for bit; what guidance does | 18 s |
| 3 | [03_switch_sweep](03_switch_sweep.ipynb) | the switch-step sweep: content kept vs style reached, the window, a seed without one | 18 s |
| 4 | [04_when_does_it_appear](04_when_does_it_appear.ipynb) | reading x_t and the predicted x0: when layout and colour are decided | 11 s |
| 5 | [05_soft_mixing](05_soft_mixing.ipynb) | ramps, weights above 1 and below 0, per-token weights | 12 s |
| 6 | [06_learning_lambda](06_learning_lambda.ipynb) | learning one weight per step: two objectives, per loss term, against the switch | 26 s |
| 7 | [07_transfer](07_transfer.ipynb) | a learned schedule on the seeds it was learned on and on new ones | 16 s |
| 8 | [08_edit_your_image](08_edit_your_image.ipynb) | inverting an image into noise, reconstructing it, editing it | 13 s |
| 9 | [09_measuring_disentanglement](09_measuring_disentanglement.ipynb) | the ground-truth map: every attribute family x switch step | 35 s |
| 10 | [10_paper_pairs](10_paper_pairs.ipynb) | the paper's pairs: its switch steps against the toy model's own | 28 s |
"""

GLOSSARY = """
- **x_T, x_t**: the latent image at sampling step t; x_T is pure Gaussian noise, the sampler removes noise step by step
  (step 0 = noisiest, step N-1 = last). **Predicted x0**: at every step the model's guess of the final clean image,
  `x0_pred = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)`; decoding it shows what the model "has in mind" at that step.
- **DDIM and eta**: the sampler used throughout (Song et al. 2021). With eta = 0 it is deterministic given x_T;
  with eta > 0 it adds fresh noise at every step, which the `NoiseTape` also fixes.
- **Classifier-free guidance** (scale w): every step runs the model twice, with the prompt and with the empty prompt,
  and uses `eps = eps_uncond + w * (eps_cond - eps_uncond)`; w > 1 exaggerates what the prompt adds.
  `02_fixed_noise` shows it in a picture. Only the conditional branch gets the mixed prompt `c_i`.
- **Switch at k**: `c0` for steps 0..k-1, `c1` from step k on; lambda (the weight of `c1`) is 0 then 1.
- **Mask IoU**: the overlap of two object masks, |A and B| / |A or B| (1 = the same pixels, 0 = disjoint); here the
  evaluator's masks of an edit and of the pure-`c0` image: *content kept*.
- **Style reached**: the evaluator's probability that an image shows the attribute `c1` adds (P(red), P(striped)...).
- **Directional CLIP loss**: `1 - cos(E_img(edit) - E_img(c0 image), E_txt(c1) - E_txt(c0))`: the image should
  move in CLIP space the way the text moves.
- **Perceptual loss**: a distance between deep features (here CLIP's vision layers) of the edit and the `c0` image:
  content preservation. The **structure loss** compares which patches resemble which (layout, blind to colour).
"""

NOTEBOOKS["01_tour"] = [
    md(f"""
# 1. A tour of disentkit

Wu et al. (CVPR 2023) found that a text-to-image diffusion model already *separates* content from style across
its denoising steps: keep all the sampler's noise fixed, use a neutral prompt `c0` for the first (noisiest) steps
and a styled prompt `c1` for the rest, and the picture can keep its content while taking the style. This
notebook shows the idea in four pictures on the bundled toy model (`toyworld`: a miniature Stable Diffusion
trained on procedural scenes, with an evaluator that knows the truth about every image it makes), and checks what
it says: every "expected / seen" line below is computed by the run, not written by us.

## The course

{COURSE_TABLE.strip()}

Runtimes: the default parameters, two notebooks at a time on a quiet 2-core CPU, each including about 7 s of kernel
start-up and setup (the whole course: 101 s; measured 2026-12-07). `python -m disentkit.notebooks` runs the course
and prints each notebook's time, its fixed cost and how many of its claims held.

## Words we use

{GLOSSARY.strip()}
"""),
    parameters("01_tour", seeds="[0]", extra=(
        "switch = None        # the edit's switch step; None: the default for the model (toyworld: 13 of 50)\n"
        "late_switch = None   # a switch too late for the style, where learning starts; None: 16 of 50 on toyworld\n"
        "iters = 1            # optimisation iterations (multiplied by scale)\n"
        "clip = None          # CLIP for the loss: a folder or hub id; None: the model's default (toyworld: the toy CLIP)\n"
    )),
    setup_cell("01_tour", clip=True),
    md("""
**1. Fixed noise, two prompts.** The same noise tape (seed 0) under `c0` everywhere and under `c1` everywhere. We
expect the `c1` image to show the attribute (a red circle) and the `c0` image not to: the prompt steers every step.
"""),
    code("""
k = switch or notebooks.default_switch(ctx.model, ctx.steps)
k_late = late_switch or round(0.32 * ctx.steps)
S = [dk.MixSchedule.constant(ctx.steps, 0.0), dk.MixSchedule.constant(ctx.steps, 1.0),
     dk.MixSchedule.switch(ctx.steps, k), dk.MixSchedule.switch(ctx.steps, k_late)]
pics = ctx.sample(S)
score = lessons.score(ctx, pics.pixels, reference=pics.pixels[0])
ctx.expect("c1 everywhere shows the style, c0 everywhere does not",
           f"P(target) {score['style'][1]:.2f} for c1, {score['style'][0]:.2f} for c0",
           score["style"][1] >= 0.8 and score["style"][0] < 0.5, truth=True)
"""),
    md(f"""
**2. One edit.** `c0` for the first k steps, then `c1`. The paper switches at 20 of 50 on Stable Diffusion; on
the toy model the colour edit's window lies earlier (this notebook uses k = 26% of the steps, 13 of 50;
`03_switch_sweep` measures the window on its own seeds and prints its own best k). We expect the *content* of the `c0` image (where the circle is, its size: mask IoU >= 0.8)
with the *style* of `c1` (P(red) >= 0.8).
"""),
    code("""
ctx.expect(f"the switch at k={k} keeps the c0 content (IoU >= 0.8) and reaches the style (P >= 0.8)",
           f"IoU {score['iou'][2]:.2f}, P(target) {score['style'][2]:.2f}",
           score["iou"][2] >= 0.8 and score["style"][2] >= 0.8, truth=True)
ctx.expect(f"a later switch (k={k_late}) keeps the content but loses the style: there is a window, not a free lunch",
           f"IoU {score['iou'][3]:.2f}, P(target) {score['style'][3]:.2f}",
           score["iou"][3] >= 0.8 and score["style"][3] < 0.5, truth=True)
"""),
    md("""
**3. A learned schedule.** Instead of a hard switch, learn one weight per step by gradient descent through the
whole sampler (the model stays frozen). We start from the switch that was too late (content kept, no style) and
learn only the weights *after* it, so the content-deciding first steps stay pure `c0`; the loss asks CLIP to see
`c1` rather than its alternatives, plus a layout term to the `c0` image (`06_learning_lambda` explains both and
compares them with the paper's objective). We expect the style to appear while the content stays.
"""),
    code("""
learned = lessons.learn(ctx, k_late, iters=max(1, round(iters * scale)), recipe="prompt")
after = lessons.score(ctx, learned.pixels, reference=pics.pixels[0])
ctx.expect(f"learning the weights after step {k_late} brings the style in (P >= 0.8) and keeps the content (IoU >= 0.8)",
           f"P(target) {score['style'][3]:.2f} -> {after['style'][0]:.2f}, IoU {score['iou'][3]:.2f} -> "
           f"{after['iou'][0]:.2f}", after["style"][0] >= 0.8 and after["iou"][0] >= 0.8, truth=True)
"""),
    code("""
labels = ["c0 everywhere", "c1 everywhere", f"switch at {k}", f"switch at {k_late}", f"learned from {k_late}"]
fig = plotting.image_grid([*pics.images, learned.images[0]], col_labels=lessons.labelled(labels, score, after),
                          title=f"seed {ctx.seeds[0]}: {ctx.c0!r} -> {ctx.c1!r}")
ctx.save(fig, "edit.png")
"""),
    code("""
ctx.save(plotting.lambda_curves([lessons.named(S[3], f"switch at {k_late}"), lessons.named(learned.schedule, "learned")]),
         "lambda.png")
"""),
    md("""
**Why.** The first, noisiest steps decide *where things are* and the later steps *how they look*, so the switch
keeps the `c0` layout and takes the `c1` colour, as long as the switch comes before the colour is decided and after
the place is. The learned curve keeps lambda at 0 in the first steps and raises it above 1 after the switch: more
`c1` than `c1` itself, late, is how it brings the colour back without touching the layout. The numbers on the
figure and in the lines above are this run's.
"""),
    exercise(
        "Set `seeds = [2]` and rerun. Does the switch at 13 still keep the content and reach the style?",
        "The claims answer it for your run: on the bundled model the edit claim does not hold on seed 2 (the red "
        "circle is drawn somewhere else, so the IoU is low). `03_switch_sweep` shows that seed 2 has no working "
        "switch at all, and why."),
    next_up("01_tour", "what exactly is fixed when we say all the noise is fixed"),
]
NOTEBOOKS["02_fixed_noise"] = [
    md("""
# 2. Fixed noise: the same inputs give the same image

*Course: [roadmap](01_tour.ipynb#The-course).*

The method only works if *all* the randomness of the sampler is fixed: the start latent `x_T` and, for a
stochastic sampler (DDIM with eta > 0), the fresh noise it adds at every step. A `NoiseTape` holds all of it.
**What we expect, and why:** the image is then a pure function of (model, prompts, schedule, tape), so the same
tape gives the same image bit for bit, also after saving and loading it; and with eta > 0, redrawing only the
per-step noise changes the image, which is why fixing `x_T` alone is not enough. Then a picture of
classifier-free guidance, the knob that decides how strongly each prompt pulls every seed.
"""),
    parameters("02_fixed_noise", extra=(
        "guidance_scales = [1.0, 3.0, 7.5]  # the guidance picture's rows (1.0: no guidance)\n"
    )),
    setup_cell("02_fixed_noise"),
    code("""
replay = ctx.save(lessons.replay(ctx), "replay.csv")
for row in replay.itertuples():
    ctx.expect(f"eta={row.eta:g}: the same tape gives the same image, also saved and loaded (max difference 0)",
               f"max |difference| {row.again:g} again, {row.loaded:g} loaded", row.again == 0 and row.loaded == 0)
stochastic = replay[replay.eta > 0].iloc[0]
ctx.expect("eta>0: other per-step noise with the same x_T gives another image (mean |difference| > 0.01)",
           f"mean |difference| {stochastic.other_step_noise:.3f}", stochastic.other_step_noise > 0.01)
"""),
    md("""
**Classifier-free guidance in a picture.** At every step the model predicts the noise twice, with the prompt
(`eps_cond`) and with the empty prompt (`eps_uncond`), and the sampler follows
`eps = eps_uncond + w * (eps_cond - eps_uncond)`. With w = 1 that is the plain conditional model; w > 1 steps
*further* in the direction the prompt adds, which makes the prompt's attribute more certain and every seed's
picture more like the prompt's most typical one. Below: one column per seed (the same noise down each column), the
two prompts at growing w. **What we expect:** at w = 7.5 (the paper's value) the `c1` images of different seeds
look more alike than without guidance, and the `c0` and `c1` images of one seed share less of their layout, since
each prompt pulls harder towards its own typical picture.
"""),
    code("""
fig, spread = lessons.guidance_sweep(ctx, guidance_scales)
ctx.save(spread, "guidance.csv")
ctx.save(fig, "guidance.png")
"""),
    code("""
low, high = spread.iloc[0], spread.iloc[-1]
several = len(ctx.seeds) > 1 or None  # None: one seed has no spread, the claim cannot be judged
ctx.expect(f"stronger guidance makes the c1 images of different seeds more alike (pixel spread, w={high.guidance:g} "
           f"below w={low.guidance:g})", f"spread {low.spread_c1:.3f} -> {high.spread_c1:.3f}",
           several and high.spread_c1 < low.spread_c1, why="needs two seeds or more")
ctx.expect("... and their objects overlap more (mask IoU between seeds' c1 images)",
           f"IoU {low.seed_iou_c1:.2f} -> {high.seed_iou_c1:.2f}", several and high.seed_iou_c1 > low.seed_iou_c1,
           truth=True, why="needs two seeds or more")
ctx.expect("... while c0 and c1 of the same seed share less layout (mask IoU of the two images)",
           f"IoU {low.same_seed_iou:.2f} -> {high.same_seed_iou:.2f}", high.same_seed_iou < low.same_seed_iou, truth=True)
"""),
    md("""
**Why this matters for the rest of the course.** The switch edit relies on the `c0` and `c1` trajectories
sharing their early steps; guidance decides how soon they part. At w = 7.5 the pure `c1` image is not "the `c0`
image, recoloured": it is the prompt's typical picture for that noise. That is why the next notebook compares
each edit with the pure-`c0` image of its seed, and why the window (where the edit keeps the `c0` content) exists
only for some switch steps.
"""),
    exercise(
        "Set `guidance_scales = [1.0, 7.5, 12.0]`. Does the spread of the c1 images keep falling above 7.5?",
        "Read the `guidance.csv` table of your run (the column `spread_c1`) and the claims: the first guidance claim "
        "compares the first and the last scale you asked for. Very high guidance also saturates colours, which "
        "`guidance.png` shows."),
    next_up("02_fixed_noise", "switching from c0 to c1 at every step k: where content and style part"),
]
NOTEBOOKS["03_switch_sweep"] = [
    md("""
# 3. The switch-step sweep: content first, style later

*Course: [roadmap](01_tour.ipynb#The-course).*

For every switch step k we sample with `c0` for steps 0..k-1 and `c1` from step k on, from the same noise. k = 0 is
the pure `c1` image and k = N the pure `c0` image. **What we expect, and why:** the first, noisiest steps decide
*where* things are (the layout) and the later ones *how they look*, so a small k gives the style but loses the
content, a large k keeps the content but loses the style, and somewhere in between there may be a *window* of k
where both hold (the paper finds one at 10-20 of 50 steps on Stable Diffusion). `dk.disentanglement_map` makes
and scores every image: it samples the shared `c0` prefix once per seed, forks it at every k, and keeps the images
as thumbnail strips beside its CSV (`map/` in this notebook's output folder).

On toyworld the evaluator judges every image: *style reached* = its probability that the circle is red;
*content kept* = the overlap (IoU) of the object's mask with the mask in the pure-`c0` image of the same seed.
We call an edit *working* when P(red) >= 0.8 and IoU >= 0.8. The default seeds are 0, 1, 2 and 4: three where the
colour edit has a window and one (seed 2) where it has none, to show why.
"""),
    parameters("03_switch_sweep", seeds="[0, 1, 2, 4]", extra=(
        "switch_steps = None  # None: 0, 5, 10, 12-16, 20, 30 and N (of 50; scaled to other step counts)\n"
        "clip = None          # CLIP for the map's proxies: a folder or hub id; None: the model's default (toyworld: the toy CLIP)\n"
    )),
    setup_cell("03_switch_sweep", clip=True),
    code("""
ks = lessons.default_switches(ctx.steps, switch_steps, scale)
table, images = lessons.run_map(ctx, pd.DataFrame({"c0": [ctx.c0], "c1": [ctx.c1]}), ks)
ctx.save(table, "switch_metrics.csv")
win = lessons.windows(table).iloc[0]
window = lessons.window_steps(ks, win)
ctx.save(lessons.switch_grid(table, images, window=window, title=f"{ctx.c0!r} for k steps, then {ctx.c1!r}"),
         "switch_grid.png")
"""),
    md("""
Each column is one switch step (pure `c1` first, pure `c0` last; its title gives k, and `*` marks the switch
steps where the most seeds work); the caption under each image gives that seed's P(target) and mask IoU (on a model
without the evaluator, the proxies: CLIP's P(c1) and the pixel change). Read a row from left to right: the
object settles into the `c0` image's place and size, and at some k the colour stops being red.
"""),
    code("""
shade = "window: works on every seed" if win["first"] is not None else f"best switch: works on {win['seeds_ok']} of {win['seeds']} seeds"
ctx.save(lessons.window_curves(table, window=window, title="mean over seeds (band: min-max)", window_label=shade),
         "switch_curves.png")
"""),
    md("""
**What we see, checked.** The two ends first (the trade-off), then the window, then the seeds without one.
"""),
    code("""
ends = table[table.switch == 0], table[table.switch == ctx.steps]
ctx.expect("pure c1 (k=0) shows the style on every seed and pure c0 (k=N) on none",
           f"P(target) {fmt(ends[0]['style'])} at k=0, {fmt(ends[1]['style'])} at k=N",
           (ends[0]["style"] >= 0.8).all() and (ends[1]["style"] < 0.5).all(), truth=True)
per_k = table.groupby("switch")[["style", "iou"]].mean()
rho = lessons.spearman(per_k.index, per_k["iou"])
ctx.expect("more c0 steps keep more content: mean mask IoU rises with k (rank correlation >= 0.8)",
           f"rank correlation {rho:.2f}; IoU {per_k['iou'].iloc[0]:.2f} at k=0, {per_k['iou'].iloc[-2]:.2f} at "
           f"k={per_k.index[-2]}", rho >= 0.8, truth=True)
ctx.expect(f"some switch step works (P >= 0.8 and IoU >= 0.8) on at least {len(ctx.seeds) - 1} of {len(ctx.seeds)} seeds",
           f"best k = {win['best']}: {win['seeds_ok']} of {win['seeds']} seeds work; on every seed: "
           f"{'k = ' + lessons.ks_text(window) if win['first'] is not None else 'no k'}",
           win["seeds_ok"] >= len(ctx.seeds) - 1, truth=True)
"""),
    md("""
**A seed without a window, and why.** The window is a property of the noise as well as of the attribute. On some
seeds the model decides the circle's colour and its place *in the same steps*: under `c1` from early on the red
circle is drawn somewhere else, and once `c0` has had enough steps to fix the place it has also fixed a colour
that is not red. No k can then give both. The cell below finds such seeds and shows what happens at their
latest red switch.
"""),
    code("""
bad = win["no_window"]
detail = lessons.failure_detail(table, bad)
ctx.expect("not every seed has a window: on at least one seed no sampled k gives both the style and the content",
           detail or "every seed has a working k", len(bad) > 0, truth=True)
"""),
    md("""
**The same map without an evaluator.** On Stable Diffusion nothing knows the truth, so the map's *proxies*
(`disentkit.metrics`) stand in: the style as CLIP's probability of `c1`'s attribute against its other values
(`clip_prob`), the content as the RMS pixel difference with the `c0` image (`pixel`), the pair that
[docs/metrics.md](../docs/metrics.md) recommends after checking every proxy against this evaluator. `dk.find_windows`
rescales each curve to 0 at pure `c0` and 1 at pure `c1` and calls a switch a window where the style is more than
halfway to `c1`'s and the content has changed less than halfway.
"""),
    code("""
proxy = lessons.proxy_windows(table)
if lessons.has_truth(table):  # without an evaluator the curves above are already the proxies'
    display(ctx.save(lessons.proxy_curves(table), "proxy_curves.png"))
proxy[["name", "start", "end", "best"]]
"""),
    md("""
**Interactive.** Move the slider to walk along the switch steps of the first seed (all images were sampled above,
so the slider only looks them up). In a page without a kernel (the HTML export) the widget shows a still of it.
"""),
    code("""
widgets.SwitchExplorer(images={k: images[(0, ctx.seeds[0], k)] for k in ks}, steps=ctx.steps)
"""),
    exercise(
        "Run the sweep for the stripes, `c0=\"a photo of a square\"`, `c1=\"a photo of a square, striped\"` (set them in "
        "the parameters cell, or `python -m disentkit.notebooks --only 03 -p c0='a photo of a square' -p "
        "c1='a photo of a square, striped'`). Is the window earlier or later than the colour's, and on how many "
        "seeds does it hold?",
        "The claims cell answers it for your run: the third claim names the best k and how many seeds work there, "
        "the fourth the seeds with no window. `09_measuring_disentanglement` maps every family at once: compare the "
        "`works_at` column of its `windows.csv` for the colour and the texture."),
    next_up("03_switch_sweep", "why the window sits where it does: reading the predicted clean image step by step"),
]
NOTEBOOKS["04_when_does_it_appear"] = [
    md("""
# 4. When is the layout decided, and when the colour? Reading the trajectory

*Course: [roadmap](01_tour.ipynb#The-course).*

At every step t the model predicts the clean image, `x0_pred`, from the noisy latent `x_t`. Sampling `c0` and `c1`
from the same noise with `record=True` we can decode both predictions step by step. **What we expect, and why:**
`x_t` is mostly noise for a long time, but `x0_pred` already shows a blurry guess of the final picture; the guess
first fixes *where* the object is, then sharpens. For the switch edit to work, the `c0` layout must be settled by
the switch step k, and the colour must still be open to change after it. The evaluator tells us, at every step,
how close each prediction's object mask is to its own final mask (the layout) and how red it looks.
"""),
    parameters("04_when_does_it_appear", seeds="[0]", extra=(
        "switch = None        # the switch step to mark; None: the model's default (toyworld: 13 of 50)\n"
    )),
    setup_cell("04_when_does_it_appear"),
    code("""
both = ctx.sample([dk.MixSchedule.constant(ctx.steps, 0.0), dk.MixSchedule.constant(ctx.steps, 1.0)],
                  tape=ctx.tape.select(0), record=True)
table, x0 = lessons.trajectory_table(ctx, both)
ctx.save(table, "trajectory.csv")
shown = sorted({round(s) for s in np.linspace(0, ctx.steps - 1, max(4, round(9 * scale)))})
xt = both.trajectory.decode(ctx.pipe, "x_t", steps=shown)[:, 1:]  # the noisy latent itself, c1's run
fig = plotting.trajectory_strip(torch.cat([xt, x0[shown]], dim=1), shown, run_labels=["x_t (c1)", "x0_pred (c0)",
                                "x0_pred (c1)"], title="what the sampler holds (x_t) and what it predicts (x0)")
ctx.save(fig, "trajectory.png")
"""),
    code("""
k = switch or notebooks.default_switch(ctx.model, ctx.steps)
layout_c0 = lessons.settled(table["layout_c0"], 0.8)
red_c1 = lessons.settled(table["p_c1"], 0.5)
layout_c1 = lessons.settled(table["layout_c1"], 0.8)
marks = {"c0 layout settled": layout_c0, "c1 turns red": red_c1, f"switch k={k}": k}
ctx.save(lessons.trajectory_curves(table, marks, title=f"seed {ctx.seeds[0]}: {ctx.c0!r} vs {ctx.c1!r}"),
         "parting.png")
"""),
    md("""
**What we see, checked.** First a model-free fact about predictions; then, with the evaluator, when the layout
settles and when the colour appears.
"""),
    code("""
far, mid = table["to_final_c1"].iloc[0], table["to_final_c1"].iloc[ctx.steps // 2]
ctx.expect("the first prediction is far from the final image, the middle one close (distance at step 0 > 3x step N/2)",
           f"mean |difference| {far:.3f} at step 0, {mid:.3f} at step {ctx.steps // 2}", far > 3 * mid)
ctx.expect(f"c0's layout has settled by the switch step (IoU >= 0.8 with its final mask from step <= {k} on)",
           f"settled from step {layout_c0}", layout_c0 is not None and layout_c0 <= k, truth=True)
ctx.expect("the c0 prediction never looks red (P < 0.5 at every step)",
           f"max P(target) {table['p_c0'].max():.2f}", table["p_c0"].max() < 0.5, truth=True)
ctx.expect("c1's prediction turns red before its own layout has settled: colour shows early on this model",
           f"red from step {red_c1}, layout settled from step {layout_c1}",
           red_c1 is not None and layout_c1 is not None and red_c1 < layout_c1, truth=True)
"""),
    md("""
**Why.** The prediction at step 0 is the model's average guess for that noise: a blur at roughly the right place.
The object's mask in the `c0` prediction stops moving early, which is why a switch after that step keeps the
content. The colour of a flat toy circle is a single number per pixel region, so the model can commit to it early,
even before the exact outline is final; that it still *can* be changed after the switch (as `03_switch_sweep`
shows for this seed) means that committing in the prediction is not the same as being fixed: the later steps
under `c1` repaint it. On Stable Diffusion the paper finds the same order: layout first, then style.
"""),
    exercise(
        "Set `c0 = \"a photo of a face\"`, `c1 = \"a photo of a face, smiling\"` (and `seeds = [1]`). Does the smile "
        "appear in the prediction before or after the layout settles?",
        "The claims name both steps for your run (\"red\" stands for the target attribute: here the smile). "
        "`09_measuring_disentanglement` checks which family can be switched latest; on the bundled model it is the "
        "expression."),
    next_up("04_when_does_it_appear", "schedules that are not a hard switch: ramps, weights above 1, per-token weights"),
]
NOTEBOOKS["05_soft_mixing"] = [
    md("""
# 5. Soft mixing: ramps, weights outside [0, 1], per-token weights

*Course: [roadmap](01_tour.ipynb#The-course).*

The schedule is one number per step, the weight lambda of `c1` in `c_i = (1 - lambda_i) c0 + lambda_i c1`. Nothing
forces it to be a hard switch, or to stay in [0, 1]: the paper starts its optimisation at 1.1-1.2 late. We work
on seed 0, whose colour edit works for a switch at 13 and is lost at 16 (`03_switch_sweep`). **What we expect,
and why:** a late weight above 1 *extrapolates* past `c1` (more of what `c1` adds), so it can bring the colour back
at 16; a late weight below 0 pushes away from `c1`, so it can remove the colour a switch at 13 gives; a ramp
spreads the change over several steps and gives an image between the hard switches at its two ends.
"""),
    parameters("05_soft_mixing", seeds="[0]", extra=(
        "early = 13           # a switch that works on this seed (of 50; scaled to other step counts)\n"
        "late = 16            # a switch too late for the style on this seed\n"
    )),
    setup_cell("05_soft_mixing"),
    code("""
schedules = lessons.soft_schedules(ctx.steps, round(early * ctx.steps / 50), round(late * ctx.steps / 50))
ke, kl = schedules[1].meta["switch"], schedules[5].meta["switch"]
ctx.save(plotting.lambda_curves(schedules, title="the schedules below (lambda: weight of c1)", width=7), "schedules.png")
"""),
    code("""
mixed = dk.sweep(ctx.pipe, ctx.cond, schedules, ctx.tape, ctx.guidance, progress=False)
soft = lessons.score(ctx, mixed.pixels, reference=mixed.pixels[0])
fig = plotting.image_grid(mixed.images, col_labels=lessons.labelled([s.label for s in schedules], soft),
                          title=f"seed {ctx.seeds[0]}: {ctx.c0!r} -> {ctx.c1!r}", cell_inches=1.4)
ctx.save(fig, "soft_grid.png")
"""),
    code("""
i = {s.label: n for n, s in enumerate(schedules)}
P = soft["style"]
ctx.expect(f"a late weight of 1.5 brings the style back at k={kl}, where the plain switch has lost it",
           f"P(target) {P[i[f'switch {kl}']]:.2f} plain, {P[i[f'switch {kl}, late 1.5']]:.2f} with 1.5",
           P[i[f"switch {kl}, late 1.5"]] >= 0.8 and P[i[f"switch {kl}"]] < 0.5, truth=True)
ctx.expect(f"a late weight of -1 removes the style the switch at {ke} gives",
           f"P(target) {P[i[f'switch {ke}']]:.2f} plain, {P[i[f'switch {ke}, late -1']]:.2f} with -1",
           P[i[f"switch {ke}, late -1"]] < 0.5 and P[i[f"switch {ke}"]] >= 0.8, truth=True)
d = lessons.pixel_distances(mixed.pixels, [i[f"ramp {ke}-{kl}"], i[f"switch {ke}"], i[f"switch {kl}"]])
ctx.expect(f"the ramp from {ke} to {kl} lies between the two switches: nearer each of them than they are to each other",
           f"ramp to switch {ke}: {d[0, 1]:.3f}, to switch {kl}: {d[0, 2]:.3f}; switch to switch: {d[1, 2]:.3f}",
           d[0, 1] < d[1, 2] and d[0, 2] < d[1, 2])
"""),
    md("""
**Per-token mixing: where in the prompt does the edit live?** A schedule can weigh each text token on its own
(`MixSchedule.on_tokens`). We take the working switch at 13 and let only some tokens follow it, the rest staying at
`c0`: (a) the attribute words (the tokens where `c1`'s text differs from `c0`'s: `,` and `red`), (b) the
end-of-text token and the padding after it, (c) all tokens (the plain switch). **What we expect, and why:** a CLIP
text encoder is causal, so the end-of-text and padding tokens have read the whole prompt, attribute included, and
the UNet's cross-attention looks at every position,
padding included; the edit may ride on them rather than on the attribute word.
"""),
    code("""
token_schedules, masks = lessons.token_schedules(ctx, schedules[i[f"switch {ke}"]])
tokens = ctx.sample(token_schedules, tape=ctx.tape.select(0))
tok = lessons.score(ctx, tokens.pixels, reference=mixed.pixels[0])
fig = plotting.image_grid([mixed.images[0], *tokens.images, mixed.images[-1]], cell_inches=1.5,
                          title=f"the switch at {ke}, applied to some tokens only (the others stay c0)",
                          col_labels=lessons.labelled(["c0", *[s.label for s in token_schedules], "c1"],
                                                      {k: v[:1] for k, v in soft.items()}, tok,
                                                      {k: v[-1:] for k, v in soft.items()}))
ctx.save(fig, "per_token.png")
"""),
    code("""
n_attr, n_eot = int(masks["attribute"].sum()), int(masks["end"].sum())
ctx.expect(f"the {n_attr} attribute tokens alone give less of the edit than the {n_eot} end-of-text and padding tokens",
           f"P(target) {tok['style'][0]:.2f} attribute tokens, {tok['style'][1]:.2f} end tokens, {tok['style'][2]:.2f} all",
           tok["style"][0] < tok["style"][1], truth=True)
ctx.expect("the end-of-text and padding tokens alone carry the edit (P >= 0.8)",
           f"P(target) {tok['style'][1]:.2f}", tok["style"][1] >= 0.8, truth=True)
"""),
    md("""
**Try the curve yourself.** The editor below has five sliders, the weight of `c1` at five evenly spaced points of
the sampling (t=0.00 is step 0, the noisiest; t=1.00 the last step), joined by straight lines. Drag them (the curve
redraws) and press *preview* to sample seed 0 with that curve (a second or two). The cell sets a curve from code
and previews it once, so the saved notebook shows a result; a page without a kernel (the HTML export) shows a
still of the editor's image.
"""),
    code("""
editor = widgets.LambdaEditor(ctx.pipe, ctx.cond, ctx.tape, points=(0.0, 0.0, 1.2, 1.2, 1.2), guidance=ctx.guidance)
editor.on_preview()
plotting.save_grid([editor.last_result.images[0]], ctx.out / "editor_preview.png", col_labels=["editor preview"])
editor
"""),
    md("""
**Why.** The mixed embedding is a straight line between `c0` and `c1`; lambda = 1.5 walks half a step *beyond*
`c1`, which in guidance terms is like a stronger `c1` prompt in the late steps, enough to repaint the colour after
a late switch. The per-token result says that in this model the difference between the two prompts is stored mostly
in the tokens after the words, not in the word `red` itself: editing only the attribute word is not the same as
editing the prompt.
"""),
    exercise(
        "Find the smallest late weight that brings the colour back at k = 16: try `switch 16, late 1.2` and "
        "`late 1.1` (edit `lessons.soft_schedules` in your copy). The editor cannot make a sharp switch: it joins its "
        "five points by straight lines, so points (0, 0, 1.1, 1.1, 1.1) are a ramp from 0 at t = 0.25 to 1.1 at "
        "t = 0.50, not a switch at 16 of 50.",
        "The learned schedule of `01_tour` and `06_learning_lambda` answers it for the seeds it was learned on: its "
        "`lambda.png` shows how far above 1 it raised the late weights. Below some weight the switch at 16 stays "
        "un-red; the evaluator's P(target) under each image tells you which side you are on."),
    next_up("05_soft_mixing", "learning the curve instead of drawing it"),
]
NOTEBOOKS["06_learning_lambda"] = [
    md("""
# 6. Learning lambda: two objectives, term by term, against the switch they start from

*Course: [roadmap](01_tour.ipynb#The-course).*

Instead of drawing the curve, learn one weight per step by gradient descent through the whole sampler (the model
is frozen; only the ~N lambdas move). We start from a switch that is too late for the style on the chosen seeds
(content kept, colour lost: switch at 16 of 50 on seeds 0 and 4, from `03_switch_sweep`) and compare two
objectives on the same seeds:

- **the paper's**: `L = L_dir + 0.05 * L_perc`, the directional CLIP loss (the image should move in CLIP space the
  way the text moves) plus a perceptual loss to the `c0` image (keep the content), Adam on every step's weight;
- **the prompt loss**: `-log P(c1)`, CLIP's zero-shot probability of `c1` against its alternatives (the other
  colours), plus 50 x a *layout* term (CLIP's patch self-similarity, blind to colour), learning only the steps
  after the switch with one step size for all weights (tensorwise Adam), so the first, content-deciding steps stay
  pure `c0`.

**What we expect, and why:** both lower their own loss, but a loss is only a proxy: the evaluator says whether
the style came and the content stayed. A loss term can also get worse while the total falls; the per-term curves
show it.
"""),
    parameters("06_learning_lambda", seeds="[0, 4]", extra=(
        "start = 16           # the switch the learning starts from (of 50; scaled to other step counts)\n"
        "iters = 2            # Adam iterations per objective (the paper: ~10); multiplied by scale\n"
        'recipes = ["paper", "prompt"]  # objectives to compare (disentkit.lessons.RECIPES)\n'
        "clip = None          # CLIP for the losses: a folder or hub id; None: the model's default (toyworld: the toy CLIP)\n"
    )),
    setup_cell("06_learning_lambda", clip=True),
    code("""
k = round(start * ctx.steps / 50)
live = widgets.LivePlot(x="iteration", title="total loss per iteration (each objective has its own scale)")
live
"""),
    code("""
learned = {}
for recipe in recipes:
    learned[recipe] = lessons.learn(ctx, k, iters=max(1, round(iters * scale)), recipe=recipe,
                                    callback=lambda s, r=recipe: live({"iteration": s.iteration, r: s.losses["loss"]}))
    learned[recipe].schedule.save(ctx.out / f"learned_{recipe}.json")
    ctx.save(learned[recipe].history, f"history_{recipe}.csv")
_ = learned[recipes[-1]].schedule.save(ctx.out / "learned_schedule.json")  # what 07_transfer picks up
live  # the finished plot again, so a page without a kernel shows a still of it
"""),
    md("""
**Every loss term, per objective** (one panel per term, its own axis: the terms have different scales).
"""),
    code("""
ctx.save(lessons.term_curves(learned), "loss_terms.png")
"""),
    code("""
init = dk.reference_init(ctx.steps, k)
ctx.save(plotting.lambda_curves([lessons.named(init, f"start: switch at {k}"),
                                 *[lessons.named(r.schedule, f"learned: {n}") for n, r in learned.items()]],
                                title="initial and learned lambda", width=7), "lambda.png")
"""),
    code("""
start_px = ctx.sample(init).pixels
fig, scores = lessons.learned_grid(ctx, learned, start_px, k)
ctx.save(scores, "scores.csv")
ctx.save(fig, "images.png")
"""),
    md("""
**What we see, checked.** Each line compares the learned schedule with the switch it started from, on the same
seeds.
"""),
    code("""
for name, res in learned.items():
    h = res.history
    ctx.expect(f"{name}: the total loss falls below the start's", f"{h.loss.iloc[0]:.3f} -> "
               f"{h.loss.iloc[res.best_iteration]:.3f} (best iteration {res.best_iteration})",
               h.loss.iloc[res.best_iteration] < h.loss.iloc[0])
s = scores.set_index("schedule")
ctx.expect(f"the start (switch at {k}) keeps the content but misses the style on every seed",
           f"P(target) {s.loc['start', 'style']}, IoU {s.loc['start', 'iou']}", lessons.all_below(s.loc["start", "style"], 0.5)
           and lessons.all_at_least(s.loc["start", "iou"], 0.8), truth=True)
"""),
    code("""
if "paper" in learned:
    h, b = learned["paper"].history, learned["paper"].best_iteration
    ctx.expect("paper: the directional term falls while the perceptual (content) term rises: the total hides a trade",
               f"L_dir {h.dir.iloc[0]:.3f} -> {h.dir.iloc[b]:.3f}, L_perc {h.perc.iloc[0]:.3f} -> {h.perc.iloc[b]:.3f}",
               h.dir.iloc[b] < h.dir.iloc[0] and h.perc.iloc[b] > h.perc.iloc[0])
    moved = lessons.early_change(learned["paper"].schedule, init, k)
    ctx.expect(f"paper: Adam moves the early, content-deciding weights too (max |change| before step {k} >= 0.05)",
               f"max |change| {moved:.2f}", moved >= 0.05)
"""),
    code("""
if "prompt" in learned:
    w = learned["prompt"].schedule.weights
    ctx.expect(f"prompt loss: the weights before step {k} stay 0 and the late ones rise above 1 (more c1 than c1)",
               f"max |weight| before {k}: {w[:k].abs().max():.2f}; mean after: {w[k:].mean():.2f}",
               float(w[:k].abs().max()) == 0 and float(w[k:].mean()) > 1)
    ctx.expect("prompt loss: the style comes on every seed (P >= 0.8) and the content stays (IoU >= 0.8)",
               f"P(target) {s.loc['prompt', 'style']}, IoU {s.loc['prompt', 'iou']}",
               lessons.all_at_least(s.loc["prompt", "style"], 0.8) and lessons.all_at_least(s.loc["prompt", "iou"], 0.8),
               truth=True)
"""),
    md("""
**Why.** The directional loss rewards *any* change that moves CLIP's image embedding the way the text moves, and
with Adam every weight moves by about the learning rate in the first step, the early ones included; so the image
drifts, and the perceptual term, which measures exactly that drift, gets worse while the total improves. The
prompt loss asks a narrower question (is it red rather than another colour?) and, learning only the steps after
the switch, leaves the first, layout-deciding steps as they were: it raises the late weights above 1, as
`05_soft_mixing` did by hand. Its layout term still rises a little (the per-term curves): repainting the colour late
also redraws the outline. On Stable
Diffusion with OpenAI's CLIP (`model=`, `clip=` parameters) the same cells run the paper's setting; there is no
evaluator there, and the claims that need one are reported as not judged.
"""),
    exercise(
        "Set `recipes = [\"paper\"]`, `iters = 10` (the paper's count). Does the style come on both seeds, and what "
        "happens to the content?",
        "Read the claims and `scores.csv`: the paper claim lines report L_dir and L_perc, and the table the "
        "evaluator's P(target) and IoU for each seed. More iterations move the early weights further; watch the "
        "IoU."),
    next_up("06_learning_lambda", "does a schedule learned on two seeds work on others?"),
]
NOTEBOOKS["07_transfer"] = [
    md("""
# 7. Transfer: one learned schedule, new seeds, against the switch it started from

*Course: [roadmap](01_tour.ipynb#The-course).*

The paper reports that learned lambdas are not tied to the image they were learned on: applied unchanged to other
seeds they give the same kind of edit. We take the schedule `06_learning_lambda` learned on seeds 0 and 4 (the
prompt objective; if that notebook has not run, the switch it starts from is used and the last claim says so) and
apply it to the two seeds it was learned on and to four new ones, next to the switch it started from (16) and the
default switch (13). The new seeds are chosen to make the test sharp: on some of them even the switch at 16 brings
the colour, while on others the switch at 13 works and the one at 16 comes too late, exactly the situation the
schedule was learned to fix on seeds 0 and 4 (the cell after the table prints which new seeds are which). **What we expect, and why:** if the "when" that the
schedule learned is a property of the model's denoising, it should fix those seeds too; if it is a property of
seeds 0 and 4, it will not.
"""),
    parameters("07_transfer", seeds="[0, 4, 8, 14, 17, 22]", extra=(
        'schedule_path = None # a learned schedule (JSON); None: 06_learning_lambda\'s output next to out_dir, if any\n'
        "learned_on = [0, 4]  # the seeds 06 learned on (the others are new)\n"
        "start = 16           # the switch 06 started from (of 50)\n"
        "clip = None          # CLIP for the clip_direction metric: a folder or hub id; None: the model's default\n"
    )),
    setup_cell("07_transfer", clip=True),
    code("""
k, k0 = round(start * ctx.steps / 50), notebooks.default_switch(ctx.model, ctx.steps)
schedule, source = lessons.find_learned(ctx, schedule_path, k)
print(f"transferring the schedule {source}")
fig, table = lessons.transfer_table(ctx, {f"switch at {k0}": dk.MixSchedule.switch(ctx.steps, k0),
                                          f"switch at {k}": dk.reference_init(ctx.steps, k), "learned": schedule},
                                    learned_on)
ctx.save(table, "transfer_metrics.csv")
ctx.save(fig, "transfer_grid.png")
"""),
    md("""
One row per seed and schedule: `new` = a seed the schedule was not learned on; `style` = the evaluator's P(target);
`iou` = the mask IoU with the pure-`c0` image of that seed; `works` = both (P >= 0.8 and IoU >= 0.8);
`clip_direction` = the cosine between the image change and the text change in CLIP space (the paper's directional
similarity; higher is more "towards `c1`"; computed on any model).
"""),
    code("""
lessons.transfer_pivot(table, ["style", "iou"]).round(2)
"""),
    code("""
v = lessons.transfer_verdicts(table, f"switch at {k0}", f"switch at {k}")
new_rows = table[table.new & (table.schedule == f"switch at {k}")]
print(f"new seeds styled already by the switch at {k}: {[int(s) for s in new_rows.seed[new_rows.style_ok]]}; "
      f"new seeds where the switch at {k0} works and the one at {k} is too late: {v['need']}")
ctx.expect(f"on the seeds it was learned on, the learned schedule brings the style the switch at {k} misses",
           f"seeds {v['fixed_old']} of {v['missed_old']}", len(v["missed_old"]) > 0 and v["fixed_old"] == v["missed_old"], truth=True)
ctx.expect(f"on new seeds it does no harm: the style on at least as many as with the switch at {k}, content within 0.05",
           f"style on {v['new_learned']} vs {v['new_start']} of {v['new']} new seeds; largest IoU change {v['iou_change']:.2f}",
           v["new_learned"] >= v["new_start"] and v["iou_change"] <= 0.05, truth=True)
ctx.expect(f"but its gain does not transfer: on the new seeds where {k0} works and {k} is too late, it does not help",
           f"such seeds {v['need']}; fixed by the learned schedule: {v['fixed_new'] or 'none'}",
           len(v["need"]) > 0 and not v["fixed_new"], truth=True)
ctx.expect("the schedule transferred is a learned one (06_learning_lambda ran first)", source, source.startswith("learned"))
"""),
    md("""
**Why.** The learned weights are 0 before the switch and a little above 1 after it (see `06`): on a new seed that is
"a switch at 16 with a slightly stronger `c1`". How much stronger a late `c1` must be to repaint a colour that `c0`
has already settled depends on the seed; the schedule learned the amount seeds 0 and 4 needed, and the new seeds
need more (or cannot be repainted after step 16 at all). The paper's transfer was shown on Stable Diffusion with
its CLIP; on this toy model a schedule learned on two seeds is specific to them. Learning on more seeds at once
(`06` with `seeds=[...]`: one shared schedule, mean loss) is the fix to try.
"""),
    exercise(
        "Run `06_learning_lambda` with `seeds = [0, 4, 14, 17]` and then this notebook with `learned_on = [0, 4, 14, "
        "17]`. Does a schedule learned on more seeds fix seed 22?",
        "The claims of your run answer it (the third claim lists the new seeds that need help and those the learned "
        "schedule fixed). Learning on more seeds costs proportionally more per iteration."),
    next_up("07_transfer", "editing an image you bring: inversion"),
]
NOTEBOOKS["08_edit_your_image"] = [
    md("""
# 8. Edit your own image: inversion, reconstruction, edit

*Course: [roadmap](01_tour.ipynb#The-course).*

To edit an existing picture we need the noise that would make it. Encode it with the VAE and either run the
sampler backwards under `c0` (**DDIM inversion**), or record a stochastic (eta = 1) trajectory and solve for every
step's noise so that sampling retraces it (**exact inversion**). The result is a `NoiseTape`: sampling it with pure
`c0` should give the picture back, and sampling it with a switch edits it. **What we expect, and why:** DDIM
inversion assumes the model's noise prediction barely changes from one step to the next, which guidance makes
less true, so it reconstructs only approximately; exact inversion reconstructs what the VAE can represent (its own
round trip, encode then decode) up to rounding. The edit should keep the object and the background of the input,
because the first steps, still under `c0`, rebuild them from the inverted noise.

The input here is a toyworld scene rendered by the scene generator (the toy world's "photograph"; set
`image_path` to use your own file; on other models the default input is the model's own `c0` sample).
"""),
    parameters("08_edit_your_image", seeds="[0]", extra=(
        'image_path = None    # your image; None: a toyworld scene rendered for c0 (or, on other models, a c0 sample)\n'
        "image_seed = 2       # which random scene (or sample) the default input is\n"
        "failure_seed = 0     # a second input, on which the edit changes the background (None: skip it)\n"
        'methods = ["ddim", "exact"]  # inversion methods to compare\n'
    )),
    setup_cell("08_edit_your_image"),
    code("""
image = notebooks.example_image(ctx.pipe, ctx.model, ctx.c0, image_path, seed=image_seed, steps=ctx.steps,
                                guidance=ctx.guidance, height=ctx.height, width=ctx.width)
k = notebooks.default_switch(ctx.model, ctx.steps)
fig, rec = lessons.invert_and_edit(ctx, image, methods, k)
ctx.save(rec, "reconstruction.csv")
ctx.save(fig, "edit.png")
"""),
    code("""
rec
"""),
    code("""
r = rec.set_index("method")
if "exact" in r.index:
    ctx.expect("exact inversion gives back what the VAE can represent (mean |difference| to its round trip < 0.01)",
               f"{r.loc['exact', 'mae_to_vae_roundtrip']:.4f}", r.loc["exact", "mae_to_vae_roundtrip"] < 0.01)
if {"exact", "ddim"} <= set(r.index):
    ctx.expect("DDIM inversion reconstructs less well than exact inversion",
               f"{r.loc['ddim', 'mae_to_vae_roundtrip']:.4f} vs {r.loc['exact', 'mae_to_vae_roundtrip']:.4f}",
               r.loc["ddim", "mae_to_vae_roundtrip"] > r.loc["exact", "mae_to_vae_roundtrip"])
best = r.index[-1]
ctx.expect(f"the edit ({best} inversion, switch at {k}) keeps the input's object (IoU >= 0.8) and reaches the style",
           f"IoU {r.loc[best, 'edit_iou']:.2f}, P(target) {r.loc[best, 'edit_style']:.2f}",
           r.loc[best, "edit_iou"] >= 0.8 and r.loc[best, "edit_style"] >= 0.8, truth=True)
ctx.expect("the edit keeps the input's background", f"{r.loc[best, 'background_input']} -> {r.loc[best, 'background_edit']}",
           r.loc[best, "background_input"] == r.loc[best, "background_edit"], truth=True)
print(lessons.background_changes(rec))  # every inversion's edit: a looser inversion can lose the background
"""),
    md("""
**A case where it fails.** The same exact inversion and edit on another scene (`failure_seed`); the claim prints
its background before and after the edit.
"""),
    code("""
if failure_seed is not None:
    other = notebooks.example_image(ctx.pipe, ctx.model, ctx.c0, None, seed=failure_seed, steps=ctx.steps,
                                    guidance=ctx.guidance, height=ctx.height, width=ctx.width)
    fig, rec2 = lessons.invert_and_edit(ctx, other, ["exact"], k)
    ctx.save(fig, "edit_failure.png")
    f = rec2.iloc[0]
    ctx.expect("on this input the edit reaches the style but changes the background", f"P(target) "
               f"{f.edit_style:.2f}; background {f.background_input} -> {f.background_edit}",
               f.edit_style >= 0.8 and f.background_input != f.background_edit, truth=True)
    display(fig)
"""),
    md("""
**Why the background can change, and when it does not.** The background is a *global* attribute: on this model it
is decided in the very first steps (`09_measuring_disentanglement` maps it), and the edit keeps it only when the
switch comes after those steps and `c1` does not pull towards another background. The colour prompt says nothing
about the background, but guidance on `c1` pulls every image towards `c1`'s most typical picture (`02_fixed_noise`):
whether a scene keeps its background then depends on the scene as a whole, not only on which
background it has: compare the backgrounds the two inputs' claims print. Try other `image_seed` values and read
the claims.
"""),
    exercise(
        "Save a picture of your own (a 64 x 64 PNG of a coloured shape on a plain background works best on toyworld) "
        "and set `image_path` to it. Does the exact inversion still reconstruct it, and does the edit work?",
        "The reconstruction claims do not depend on the picture: exact inversion gives back the VAE's round trip of "
        "any image. Whether the edit works depends on how far your picture is from the scenes the toy model was "
        "trained on; the evaluator's last two claims tell you."),
    next_up("08_edit_your_image", "every attribute family against every switch step: the map"),
]
NOTEBOOKS["09_measuring_disentanglement"] = [
    md("""
# 9. Measuring disentanglement: every attribute family x switch step

*Course: [roadmap](01_tour.ipynb#The-course).*

Toyworld renders its scenes itself, so an independent evaluator network knows the truth for every image: what
object, where, what colour, texture, expression, background and rendering. That lets us *measure* what no tool for
real Stable Diffusion can: for each attribute and each switch step, was the content kept and was the style
reached? We take one pair per family: colour (circle -> red), texture (square -> striped), expression (face ->
smiling), background (triangle -> at night) and rendering (star -> a sketch). **What we expect, and why:** an
attribute that changes large areas (background, rendering: *global*) has to enter while the whole picture is still
being laid out, so only early switches bring it; a *local* detail (colour, texture, expression) can enter later.
An attribute that `c0`'s own image already shows on a seed is no edit there: those seeds are flagged and left out
of the windows.
"""),
    parameters("09_measuring_disentanglement", extra=(
        "families = None      # None: colour, texture, expression, background, rendering (or the paper's on other models)\n"
        "switch_steps = None  # None: 0, 6, 10, 14, 18, 24, 32, 40, N (of 50)\n"
        "clip = None          # CLIP for the map's proxies: a folder or hub id; None: the model's default (toyworld: the toy CLIP)\n"
    )),
    setup_cell("09_measuring_disentanglement", clip=True),
    code("""
pairs = lessons.family_pairs(ctx, families)
ks = lessons.default_switches(ctx.steps, switch_steps, scale, base=lessons.MAP_SWITCHES)
table, images = lessons.run_map(ctx, pairs.assign(name=pairs.family), ks)
table = ctx.save(table.merge(pairs[["pair", "family", "scope"]], on="pair"), "attribute_by_step.csv")
win = ctx.save(lessons.family_windows(table), "windows.csv")
win
"""),
    md("""
`windows.csv`, one row per family: `c0_shows` = seeds whose pure-`c0` image already shows the attribute (left out
below); `latest` = the median over the other seeds of the latest switch step that still brings the style;
`works_at` = switch steps where the edit works (P >= 0.8 and IoU >= 0.8) on every counted seed; `best`/`seeds_ok`
= the switch where it works on the most of them.
"""),
    code("""
ctx.save(lessons.family_grid(table, images, win), "windows.png")
"""),
    code("""
for value, name in lessons.map_values(table):
    display(ctx.save(lessons.family_heatmap(table, value, name, win), f"{value}_heatmap.png"))
"""),
    md("""
**The proxies against the truth.** Without an evaluator (Stable Diffusion, your own model) the same map is drawn
from the proxies: CLIP's probability of `c1`'s attribute (`clip_prob`) for the style and the RMS pixel difference
with the `c0` image (`pixel`) for the content. Here we can check them against the evaluator on the same images:
`style_rho` / `content_rho` = rank correlation of each proxy with the evaluator's value (+1: the same order);
`truth` / `proxies` = the window one rule (`dk.find_windows`: more than halfway to `c1`'s style, less than halfway
to `c1`'s content change) finds on each side; `match` = the same window within 2 steps, or none on both.
[docs/metrics.md](../docs/metrics.md) makes this check at scale (16 seeds, every switch step).
"""),
    code("""
agree = lessons.proxy_agreement(table, win) if lessons.has_truth(table) and "clip_prob" in table else None
agree
"""),
    md("""
**What we see, checked.**
"""),
    code("""
c1_ok = win.c1_reaches >= 0.5 * win.counted
ctx.expect("pure c1 shows its attribute on at least half the counted seeds, for every family",
           "; ".join(f"{r.family} {r.c1_share}" for r in win.itertuples()), bool(c1_ok.all()), truth=True)
rho = lessons.content_trend(table)
ctx.expect("more c0 steps keep more content, for every family (rank correlation of mean IoU with k >= 0.6)",
           ", ".join(f"{f} {v:.2f}" for f, v in rho.items()), min(rho.values()) >= 0.6, truth=True)
g, l = win[win.scope == "global"].latest.mean(), win[win.scope == "local"].latest.mean()
ctx.expect("global styles need earlier switches than local attributes (mean of each family's latest styled switch)",
           f"global {g:.1f}, local {l:.1f}", g < l, truth=True)
last = win.sort_values("latest").iloc[-1]
ctx.expect("expression is decided last: its latest styled switch is the latest of all families",
           f"latest: {last.family} at {last.latest:g}; " + ", ".join(f"{r.family} {r.latest:g}" for r in win.itertuples()),
           last.family == "expression", truth=True)
"""),
    md("""
And the proxies against the evaluator, on the same images (the table above):
"""),
    code("""
if agree is not None:
    ctx.expect("the pixel distance orders the content like the mask IoU (rank correlation >= 0.7), for every family",
               ", ".join(f"{r.family} {r.content_rho:.2f}" for r in agree.itertuples()),
               bool((agree.content_rho >= 0.7).all()), truth=True)
    low = agree[agree.style_rho < 0.7]
    ctx.expect("CLIP's probability orders the style like the evaluator (>= 0.7) on most families, not always",
               f"{len(agree) - len(low)} of {len(agree)}; below 0.7: "
               + (", ".join(f"{r.family} {r.style_rho:.2f}" for r in low.itertuples()) or "none"),
               2 * (len(agree) - len(low)) > len(agree), truth=True)
    ctx.expect("the proxies find the evaluator's window (within 2 steps, or none on both) on at least half the families",
               f"{int(agree.match.sum())} of {len(agree)}; differ: " + (", ".join(
                   f"{r.family} (truth {r.truth}, proxies {r.proxies})" for r in agree[~agree.match].itertuples())
                   or "none"), 2 * int(agree.match.sum()) >= len(agree), truth=True)
"""),
    md("""
**Why.** Reading a heatmap row from left (k = 0, pure `c1`) to right (k = N, pure `c0`): the style stays while
the switch is early enough and then stops; the content IoU rises. Where the style survives to a late switch, the
attribute is decided late in denoising (a local detail such as the mouth of a face); where it dies early it needs
the early, layout-deciding steps, and then an edit that brings it tends to move the object too (low IoU at the
same k). On a model without the evaluator the same cells draw the proxies' maps, and the claims that need the truth
are reported as not judged. What the last claims teach for such a model: the pixel distance is a fair ranking of
the content, but a CLIP's probability is only as good as that CLIP's eye for the attribute. Before trusting a
proxy's window for an attribute, look at its images (the grid above) or check the CLIP on a few labelled ones.
"""),
    exercise(
        "Add the snow background: `families = [\"colour\", \"background\", \"snow\"]` (the names of "
        "`lessons.FAMILIES`). Is snow a global style like the night?",
        "The claims and `windows.csv` of your run answer it: compare the `latest` column of the two backgrounds."),
    next_up("09_measuring_disentanglement", "the paper's own attribute pairs, and whether their switch steps carry over"),
]
NOTEBOOKS["10_paper_pairs"] = [
    md("""
# 10. The paper's attribute pairs: do their switch steps carry over?

*Course: [roadmap](01_tour.ipynb#The-course).*

Wu et al. show each attribute with a seed and a number of `c0` steps out of 50 (10 for global styles such as
"Egyptian mural style", 20 for local ones such as "smiling"). On Stable Diffusion (`model="CompVis/stable-
diffusion-v1-4"`, `device="cuda"`) this notebook reruns those pairs at the paper's own steps; on toyworld it runs
the closest toy analogue of each (a global style -> a sketch or a background, a local attribute -> an expression,
a colour or a texture), with the paper's seed. **What we expect, and why:** the window is a property of the
model (and of the seed), so the paper's step counts, measured on Stable Diffusion, need not suit the toy model;
we compare them with the toy model's own best switch for each pair, found by a small sweep.
"""),
    parameters("10_paper_pairs", seeds="[0]", extra=(
        "max_pairs = None     # None: all pairs (scaled by scale); an int limits how many\n"
        "switch_steps = None  # the sweep for each pair's own best switch; None: 0, 6, 10, 14, 18, 24, N (of 50)\n"
        "clip = None          # CLIP for the map's proxies: a folder or hub id; None: the model's default (toyworld: the toy CLIP)\n"
    )),
    setup_cell("10_paper_pairs", clip=True),
    code("""
pairs = notebooks.paper_pairs(ctx.model)
pairs = pairs.head(max_pairs or max(2, round(len(pairs) * scale)))
ks = lessons.default_switches(ctx.steps, switch_steps, scale, base=lessons.PAIR_SWITCHES)
table, images, curves = lessons.paper_pair_sweep(ctx, pairs, ks)
ctx.save(table, "pairs.csv")
ctx.save(curves, "pairs_by_step.csv")
table[["paper", "c1", "seed", "switch", "c0_shows", "c1_style", "paper_style", "paper_iou", "best", "best_style", "best_iou"]]
"""),
    md("""
One row per pair: `switch` = the paper's c0 steps on our step count; `c0_shows` = the pure `c0` image already shows
the attribute (no edit possible); `c1_style` = P(target) of the pure `c1` image; `paper_*` = the edit at the
paper's switch; `best` = the latest swept switch at which the edit works (P >= 0.8, IoU >= 0.8), or none (NaN).
"""),
    code("""
ctx.save(lessons.pairs_grid(table, images), "pairs_grid.png")
"""),
    md("""
The same pairs as curves over the swept switch steps (`dk.disentanglement_map`, one map per seed). On toyworld the
evaluator's P(target) and mask IoU; on a model without it the proxies: CLIP's probability of `c1`'s attribute and
the pixel change from the `c0` image (rescaled: 0 at pure `c0`, 1 at pure `c1`).
"""),
    code("""
ctx.save(lessons.pair_curves(table, curves), "pairs_curves.png")
"""),
    code("""
n, edits = len(table), table[~table.c0_shows]
ctx.expect("the toy model draws most analogues: pure c1 shows the attribute for at least 2/3 of the pairs",
           f"{int((table.c1_style >= 0.8).sum())} of {n}; not drawn: "
           + (", ".join(table[table.c1_style < 0.8].c1) or "none"), (table.c1_style >= 0.8).sum() >= 2 * n / 3, truth=True)
ctx.expect("for some pairs c0 already shows the attribute at the paper's seed: no edit to make (flagged c0!)",
           ", ".join(table[table.c0_shows].c1) or "none", bool(table.c0_shows.any()), truth=True)
has = edits[edits.best.notna()]
ctx.expect("where the toy model has a working switch, the paper's step lies inside its window (works there too)",
           f"{int(has.paper_works.sum())} of {len(has)} pairs with a window: " + ", ".join(
               f"{r.c1.split(', ')[-1]} paper {r.switch} / latest {r.best:g}" for r in has.itertuples()),
           len(has) > 0 and bool(has.paper_works.all()), truth=True)
fails = edits[~edits.paper_works]
ctx.expect("where the paper's step fails, no swept switch works either: the model, not the step count, fails",
           "; ".join(f"{r.c1} (P at k={r.switch}: {r.paper_style:.2f}, IoU {r.paper_iou:.2f})" for r in fails.itertuples())
           or "no failures", len(fails) > 0 and bool(fails.best.isna().all()), truth=True)
"""),
    md("""
**Why.** The toy model's windows, where it has them, are wide (the `works_at` column of
`09_measuring_disentanglement`), so the paper's 10-20 `c0` steps fall inside them. Its failures are of another
kind: an analogue it cannot draw even from `c1` alone (the first claim names them); for others `c0`, at the paper's seed, already draws the
attribute; and for the rest every switch either comes after the attribute is decided (the edit lacks the target
colour or background) or brings it only by moving the object. The lesson for any model: measure the window (`03`, `09`) before trusting a
step count, and check that `c0` does not already show what you want to add.
"""),
    exercise(
        "Try the pairs on other seeds. The notebook uses each pair's own seed from the paper (the `seeds` parameter "
        "does not apply here): does the paper's switch work as often on other seeds?",
        "This notebook uses each pair's own seed from the paper; to try other seeds, edit `pairs[\"seed\"]` in the "
        "first code cell (e.g. `pairs[\"seed\"] = 1`). The claims then report on those seeds."),
    next_up("10_paper_pairs"),
]


def build(check: bool = False) -> int:
    """Write (or, with ``check``, compare) every notebook; return the number that differ."""
    differ = 0
    for name in ORDER:
        nb = new_notebook(cells=NOTEBOOKS[name], metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        })  # fmt: skip
        # Stable ids keep diffs small when a cell's text changes.
        for k, cell in enumerate(nb.cells):
            cell.id = f"{name[:2]}-{k:02d}"
        text = nbformat.writes(nb) + "\n"
        path = HERE / f"{name}.ipynb"
        if check:
            if not path.is_file() or path.read_text() != text:
                print(f"{path.name} differs from notebooks/_build.py")
                differ += 1
        else:
            path.write_text(text)
    return differ


if __name__ == "__main__":
    sys.exit(1 if build(check="--check" in sys.argv) else 0)
