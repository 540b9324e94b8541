"""Write the curated notebooks (notebooks/NN_name.ipynb) from the cell sources below.

    python notebooks/_build.py          # rewrite every notebook
    python notebooks/_build.py --check  # exit 1 if a committed notebook differs from what this script writes

Why a script: a notebook's JSON is hard to review, a Python list of cells is not. The notebooks are written
without outputs or execution counts; `python -m disentkit.notebooks` executes them.

Every notebook has the same shape: a `parameters` cell (papermill overrides it: the tests pass a tiny model and
few steps; `model="CompVis/stable-diffusion-v1-4"` with `device="cuda"` runs the real thing), a setup cell that
loads the model and encodes the prompts, then short cells that call the library, each after a markdown cell that
says what we expect, and each followed by what we see and why. Every notebook writes its key figures and tables
into `out_dir`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def parameters(name: str, extra: str = "", steps: int = 50, seeds: str = "[0, 1, 2]") -> object:
    """The papermill `parameters` cell: the same knobs in every notebook, plus a few of its own."""
    text = f'''
model = "toyworld"   # the bundled toy model, or CompVis/stable-diffusion-v1-4 (on a GPU), or a local pipeline folder
device = None        # None: cuda if there is a GPU, else cpu
steps = {steps}           # sampling steps (the paper: 50)
seeds = {seeds}
height = None        # image size in px; None: the model's own (64 for toyworld, 512 for SD v1.4)
width = None
guidance = 7.5       # classifier-free guidance (the paper: 7.5)
c0 = None            # neutral prompt; None: a default for the model (toyworld: a photo of a circle)
c1 = None            # styled prompt; None: a default for the model (toyworld: a photo of a circle, red)
scale = 1.0          # quick knob: < 1 samples fewer grid points and iterations (the tests use ~0.2)
use_evaluator = None # None: measure with the toyworld evaluator when the model is toyworld
out_dir = "outputs/notebooks/{name}"
{extra}'''
    cell = code(text)
    cell.metadata["tags"] = ["parameters"]
    return cell


SETUP = '''
%matplotlib inline
from pathlib import Path

import torch

import disentkit as dk
from disentkit import notebooks, plotting, widgets

device = device or ("cuda" if torch.cuda.is_available() else "cpu")
c0, c1 = notebooks.default_prompts(model, c0, c1)
out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
pipe = dk.load_pipeline(model, device=device, dtype=notebooks.default_dtype(model, device))
cond = dk.encode(pipe, c0, c1)
tape = dk.NoiseTape.from_seed(pipe, seeds, steps=steps, height=height, width=width)
evaluator = notebooks.load_evaluator(model, use_evaluator)  # None unless we can measure (toyworld)
print(f"{model} on {device}: {steps} steps, seeds {seeds}\\nc0 = {c0!r}\\nc1 = {c1!r}")
'''


def setup_cell():
    return code(SETUP)


# ------------------------------------------------------------------------------------------------------------------
NOTEBOOKS: dict[str, list] = {}

NOTEBOOKS["01_tour"] = [
    md("""
# A tour of disentkit in five cells

Wu et al. (CVPR 2023) found that a text-to-image diffusion model already *separates* content from style across
its denoising steps: keep all the sampler's noise fixed, use a neutral prompt `c0` for the first (noisiest)
steps and a styled prompt `c1` for the rest, and the picture keeps its content while taking the style.
This notebook shows the three ideas of the toolkit: a fixed-noise image, one edit, one learned schedule.
"""),
    parameters("01_tour", extra=(
        "clip = None          # CLIP for the loss; None: the default for the model (toyworld: the toy CLIP)\n"
    )),
    setup_cell(),
    md("""
**1. Fixed noise.** We expect two *different* pictures from `c0` and `c1` even with the same noise
(the prompt steers every step), but with a similar layout, because the start latent `x_T` is shared.
"""),
    code("""
pure = dk.sample(pipe, cond, [dk.MixSchedule.constant(steps, 0.0), dk.MixSchedule.constant(steps, 1.0)],
                 tape.select(0), guidance, progress=False)
fig = plotting.image_grid(pure.images, col_labels=["c0 everywhere", "c1 everywhere"], title=f"seed {seeds[0]}")
plotting.save_figure(fig, out / "fixed_noise.png")
fig
"""),
    md("""
**2. One edit.** Now `c0` for the first steps and `c1` after: the paper's 20 of 50 on Stable Diffusion; 13 of 50 on
toyworld, where the colour edit's window lies (the README's toyworld report measures it for each attribute).
We expect the content (where the object is, its shape) of the `c0` image and the style of `c1`.
"""),
    code("""
switch = notebooks.default_switch(model, steps)
edit = dk.sample(pipe, cond, dk.MixSchedule.switch(steps, switch), tape.select(0), guidance, progress=False)
fig = plotting.image_grid([pure.images[0], edit.images[0], pure.images[1]],
                          col_labels=["c0", f"switch@{switch}", "c1"], title="one edit")
plotting.save_figure(fig, out / "edit.png")
fig
"""),
    md("""
**3. A learned schedule.** Instead of one hard switch, learn one weight per step (the paper's Algorithm:
Adam on a directional CLIP loss plus a perceptual loss to the `c0` image), starting from the switch above.
"""),
    code("""
from disentkit.optimize import optimize, reference_init

learned = optimize(pipe, cond, reference_init(steps, switch), tape.select(0), iters=max(1, round(10 * scale)),
                   guidance=guidance, clip=clip, progress=False)
learned.schedule.save(out / "learned_schedule.json")
plotting.save_figure(plotting.lambda_curves([reference_init(steps, switch), learned.schedule]), out / "lambda.png")
fig = plotting.image_grid([learned.reference_images[0], edit.images[0], learned.image],
                          col_labels=["c0", f"switch@{switch}", "learned"], title="learned lambdas")
plotting.save_figure(fig, out / "learned.png")
fig
"""),
    md("""
**What we see, and why.** The `c0` and `c1` images share their composition because the noise is shared; the edit
keeps the composition of `c0` because the first, noisiest steps decide *where things are*, and the later steps,
under `c1`, decide *how they look*. The learned schedule trades the two off per step. The next notebooks take each
idea apart: `02_fixed_noise`, `03_switch_sweep`, `04_when_does_it_appear`, `06_learning_lambda`.
"""),
]
NOTEBOOKS["02_fixed_noise"] = [
    md("""
# Fixed noise: the same inputs give the same image

The method only works if *all* the randomness of the sampler is fixed: the start latent `x_T` and, for stochastic
samplers (DDIM with eta > 0), the fresh noise of every step. A `NoiseTape` holds all of it. We expect:
the same tape gives the same image bit for bit (also after saving and loading it); different seeds give
different pictures; and the two prompts with the same tape give pictures with a shared layout.
"""),
    parameters("02_fixed_noise"),
    setup_cell(),
    md("**Seeds x prompts.** One column per seed; top row `c0`, bottom row `c1`."),
    code("""
both = dk.sample(pipe, cond, [dk.MixSchedule.constant(steps, 0.0), dk.MixSchedule.constant(steps, 1.0)],
                 tape, guidance, progress=False)
fig = plotting.result_grid(both, rows="schedule", cols="seed", title="same noise per column")
plotting.save_figure(fig, out / "seeds_by_prompt.png")
fig
"""),
    md("""
**Replay.** Sample again from the same tape, and from a copy saved to disk and loaded back, also with a stochastic
sampler (DDIM, eta = 1) whose per-step noise lives on the tape. Every difference should be exactly 0.
"""),
    code("""
import pandas as pd

rows = []
for eta in (0.0, 1.0):
    t = dk.NoiseTape.from_seed(pipe, seeds[0], steps=steps, eta=eta, height=height, width=width)
    t.save(out / f"tape_eta{eta:g}.safetensors")
    s = dk.MixSchedule.switch(steps, notebooks.default_switch(model, steps))
    a = dk.sample(pipe, cond, s, t, guidance, progress=False).pixels
    b = dk.sample(pipe, cond, s, t, guidance, progress=False).pixels
    c = dk.sample(pipe, cond, s, dk.NoiseTape.load(out / f"tape_eta{eta:g}.safetensors"), guidance, progress=False).pixels
    rows.append({"eta": eta, "again": (a - b).abs().max().item(), "loaded": (a - c).abs().max().item()})
replay = pd.DataFrame(rows)
plotting.save_table(replay, out / "replay.csv")
replay
"""),
    md("""
**The stochastic sampler's noise matters.** Same `x_T`, different per-step noise (a second tape with the same
start but fresh step noise): with eta = 1 the image changes, which is why the tape must hold every step's noise.
"""),
    code("""
t1 = dk.NoiseTape.from_seed(pipe, seeds[0], steps=steps, eta=1.0, height=height, width=width)
t2 = dk.NoiseTape(t1.x_T, torch.randn_like(t1.step_noise), t1.scheduler, t1.steps, t1.eta)
pair = [dk.sample(pipe, cond, dk.MixSchedule.constant(steps, 0.0), t, guidance, progress=False) for t in (t1, t2)]
step_noise_effect = (pair[0].pixels - pair[1].pixels).abs().mean().item()
fig = plotting.image_grid([p.images[0] for p in pair], col_labels=["tape's step noise", "other step noise"],
                          title=f"eta=1, mean |diff| {step_noise_effect:.3f}")
plotting.save_figure(fig, out / "step_noise.png")
fig
"""),
    md("""
**What we see.** Replays are exact (differences 0): the image is a pure function of model, prompts, schedule and
tape. Columns differ in composition (seed), rows in appearance (prompt) while sharing each column's layout. With a
stochastic sampler, changing only the per-step noise changes the image: fixing `x_T` alone is not enough.
"""),
]

NOTEBOOKS["03_switch_sweep"] = [
    md("""
# The switch-step sweep: content first, style later

For every switch step k, sample with `c0` for steps 0..k-1 and `c1` after. k = 0 is the pure `c1` image, k = N the
pure `c0` image. We expect: small k gives strong style but lost content; large k keeps the content but no style;
in between a range (the paper: 10-20 of 50) where both hold. `sweep_switch` samples the shared `c0` prefix once.
"""),
    parameters("03_switch_sweep"),
    setup_cell(),
    code("""
from disentkit.sweeps import sweep_switch

count = max(3, round(11 * scale))  # how many switch steps on the grid
switch_steps = sorted({round(k) for k in torch.linspace(0, steps, count).tolist()})
result = sweep_switch(pipe, cond, tape, switch_steps, guidance, progress=False)
fig = plotting.result_grid(result, rows="seed", cols="schedule", title="c0 for k steps, then c1")
plotting.save_figure(fig, out / "switch_grid.png")
fig
"""),
    md("""
**Measuring it.** Two numbers per image, against the pure-`c0` image (k = N) of the same seed. On any model: the
mean pixel distance to the `c0` image and to the `c1` image. On toyworld, the evaluator also tells us whether the
*content* was kept (overlap of the object masks, IoU) and whether the *style* was reached (its probability that
the image shows the attribute `c1` adds).
"""),
    code("""
import pandas as pd

runs = result.runs.reset_index(drop=True)
runs["switch"] = [result.schedules[s].meta["switch"] for s in runs["schedule"]]
c0_img = {r.seed_index: result.pixels[i] for i, r in runs[runs["switch"] == steps].iterrows()}
c1_img = {r.seed_index: result.pixels[i] for i, r in runs[runs["switch"] == 0].iterrows()}
runs["dist_to_c0"] = [(result.pixels[i] - c0_img[s]).abs().mean().item() for i, s in enumerate(runs["seed_index"])]
runs["dist_to_c1"] = [(result.pixels[i] - c1_img[s]).abs().mean().item() for i, s in enumerate(runs["seed_index"])]
if evaluator is not None:
    factor, value = notebooks.style_target(c0, c1)
    reference = torch.stack([c0_img[s] for s in runs["seed_index"]])
    runs["content_kept"] = evaluator.content_kept(result.pixels, reference)["mask_iou"].to_numpy()
    runs["style_reached"] = evaluator.style_reached(result.pixels, factor, value).numpy()
plotting.save_table(runs, out / "switch_metrics.csv")
fig = plotting.metric_curves(runs, "switch", ["dist_to_c0", "dist_to_c1"], ylabel="mean |pixel difference|",
                             title="distance to the pure images (mean over seeds, band: min-max)")
plotting.save_figure(fig, out / "switch_curves.png")
fig
"""),
    code("""
if evaluator is not None:
    fig = plotting.metric_curves(runs, "switch", ["content_kept", "style_reached"], ylim=(0, 1),
                                 title=f"evaluator: content kept (mask IoU) and {value!r} reached")
    plotting.save_figure(fig, out / "evaluator_curves.png")
    display(fig)
"""),
    md("""
**What we see, and why.** Distance to `c0` falls and distance to `c1` rises as k grows: the later the switch, the
more of the `c0` picture survives. On Stable Diffusion the paper finds the useful window at switches of 10-20 of
50 steps. On the bundled toyworld model the colour edit's window is narrow: the object's mask is kept (IoU >= 0.8)
from a switch at about step 13 of 50 and the red still comes through at step 13 (the README's toyworld report
measures the window of every attribute: 10-12 for stripes; none for a sketch, the night background or a smile). An interactive version: move the slider below (all images are sampled once, up front).
"""),
    code("""
explorer = widgets.SwitchExplorer(result=result)
explorer
"""),
]

NOTEBOOKS["04_when_does_it_appear"] = [
    md("""
# When does the style appear? Reading the trajectory

At every step the model predicts the clean image `x0_pred`. Sampling `c0` and `c1` from the same noise with
`record=True`, we can decode both predictions step by step and see when they part. We expect the early
predictions to be blurry and alike (same noise, little detail), and the attribute of `c1` to appear in the middle
steps, after the layout is fixed.
"""),
    parameters("04_when_does_it_appear", seeds="[0]"),
    setup_cell(),
    code("""
both = dk.sample(pipe, cond, [dk.MixSchedule.constant(steps, 0.0), dk.MixSchedule.constant(steps, 1.0)],
                 tape.select(0), guidance, record=True, progress=False)
shown = sorted({round(s) for s in torch.linspace(0, steps - 1, min(steps, max(4, round(8 * scale)))).tolist()})
x0 = both.trajectory.decode(pipe, "x0_pred", steps=shown)  # (len(shown), 2, 3, H, W)
fig = plotting.trajectory_strip(x0, shown, run_labels=["c0", "c1"], title="predicted x0 along the trajectory")
plotting.save_figure(fig, out / "trajectory.png")
fig
"""),
    md("""
**Where they part.** The distance between the two predictions at every step (pixels, mean absolute), relative to
the final distance; the *parting step* is the first step at which it passes half of it.
"""),
    code("""
import pandas as pd

every = both.trajectory.decode(pipe, "x0_pred")  # (steps, 2, 3, H, W)
gap = (every[:, 0] - every[:, 1]).abs().mean(dim=(1, 2, 3))
relative = gap / gap[-1].clamp_min(1e-8)  # 1 = as far apart as the final images
parting = pd.DataFrame({"step": range(len(gap)), "x0_gap": gap.numpy(), "relative": relative.numpy()})
if evaluator is not None:  # toyworld: the evaluator's belief that c1's attribute is there, per step
    factor, value = notebooks.style_target(c0, c1)
    parting[f"p_{value}_c1"] = evaluator.style_reached(every[:, 1], factor, value).numpy()
    parting[f"p_{value}_c0"] = evaluator.style_reached(every[:, 0], factor, value).numpy()
part_step = int((relative >= 0.5).nonzero()[0, 0])  # the first step at half the final distance
plotting.save_table(parting, out / "parting.csv")
fig = plotting.metric_curves(parting, "step", [c for c in parting if c not in ("step", "x0_gap")],
                             title=f"c0 and c1 part at step {part_step} of {steps}")
plotting.save_figure(fig, out / "parting.png")
fig
"""),
    md("""
**What we see, and why.** The two predictions start nearly equal: at high noise the model can only guess a rough
layout, and that guess comes mostly from the shared noise. They part once the layout is settled and the text starts
to decide details: in the middle steps on Stable Diffusion (the paper), around steps 8-15 of 50 for most
attributes on the bundled toyworld model. A switch around the parting step keeps the content of `c0` and still
gets the style of `c1`.
"""),
]

NOTEBOOKS["05_soft_mixing"] = [
    md("""
# Soft mixing: ramps, sigmoids, weights outside [0, 1], per-token weights

The schedule is one number per step, the weight lambda of `c1` in `c_i = (1 - lambda_i) c0 + lambda_i c1`.
Nothing forces it to be a hard switch, or to stay in [0, 1]: the paper starts its optimisation at 1.1-1.2 late.
We expect smooth schedules to give in-between edits, lambda > 1 to exaggerate the attribute, lambda < 0 to push
away from it.
"""),
    parameters("05_soft_mixing", seeds="[0]"),
    setup_cell(),
    code("""
k = notebooks.default_switch(model, steps)
schedules = [
    dk.MixSchedule.switch(steps, k),
    dk.MixSchedule.ramp(steps, k // 2, min(steps, k + k // 2)),
    dk.MixSchedule.sigmoid(steps, center=k, width=max(steps / 25, 0.5)),
    dk.MixSchedule(dk.MixSchedule.switch(steps, k, after=1.5).weights, "switch, late 1.5"),  # exaggerate c1
    dk.MixSchedule(dk.MixSchedule.switch(steps, k, after=-1.0).weights, "switch, late -1"),  # push away from c1
]
plotting.save_figure(plotting.lambda_curves(schedules), out / "schedules.png")
"""),
    code("""
from disentkit.sweeps import sweep

mixed = sweep(pipe, cond, schedules, tape, guidance, progress=False)
fig = plotting.result_grid(mixed, rows="seed", cols="schedule", title="one seed, five schedules")
plotting.save_figure(fig, out / "soft_grid.png")
fig
"""),
    md("""
**Per-token mixing.** A schedule can weigh each text token on its own (`MixSchedule.on_tokens`). Here only the
tokens where `c1`'s text differs from `c0`'s (the attribute words) follow the switch; every other token stays at `c0`.
We expect an edit close to the full switch, because the attribute words carry the change.
"""),
    code("""
ids0 = pipe.tokenizer(c0, padding="max_length", truncation=True).input_ids
ids1 = pipe.tokenizer(c1, padding="max_length", truncation=True).input_ids
n1 = len(pipe.tokenizer(c1).input_ids) - 1  # c1's tokens before its end-of-text token
attribute_tokens = [float(a != b and j < n1) for j, (a, b) in enumerate(zip(ids0, ids1))]
per_token = schedules[0].on_tokens(attribute_tokens)
token_result = dk.sample(pipe, cond, [schedules[0], per_token], tape.select(0), guidance, progress=False)
fig = plotting.image_grid([mixed.images[0], *token_result.images],
                          col_labels=["switch (c0)", "switch, all tokens", f"switch, {int(sum(attribute_tokens))} tokens"])
plotting.save_figure(fig, out / "per_token.png")
fig
"""),
    md("""
**Try it.** Drag the control points of lambda (evenly spaced over the sampling steps) and press *preview*. Below we
also set points from code and preview once, so the notebook's output shows one result.
"""),
    code("""
editor = widgets.LambdaEditor(pipe, cond, tape, points=(0.0, 0.0, 0.5, 1.0, 1.2), guidance=guidance)
editor.on_preview()
plotting.save_grid([editor.last_result.images[0]], out / "editor_preview.png", col_labels=["editor preview"])
editor
"""),
    md("""
**What we see, and why.** Ramps and sigmoids give edits between the hard switches on either side of them: what
matters is roughly *how much* `c1` weight the middle steps get. A late weight above 1 extrapolates past `c1` (a
stronger attribute), a negative one extrapolates away from it. Per-token weights on the attribute words alone get
most of the edit, which tells us where in the prompt the change lives.
"""),
]

NOTEBOOKS["06_learning_lambda"] = [
    md("""
# Learning lambda: the paper's optimisation

Starting from a switch schedule, learn one weight per step by gradient descent through the whole sampler:
`L = L_dir + beta * L_perc`, with the directional CLIP loss (the image should move the way the text moves) and a
perceptual loss to the `c0` image (keep the content). Only the ~N lambdas are learned; the model is frozen. We expect
the loss to fall over the iterations, and the learned curve to lower lambda in the first steps (content) and
keep or raise it late (style).
"""),
    parameters("06_learning_lambda", seeds="[0]", extra=(
        "iters = 10           # Adam iterations (the paper: ~10); multiplied by scale\n"
        "lr = 0.05\n"
        "beta = 0.05          # weight of the perceptual loss (the paper: 0.03-0.05)\n"
        "optimizer = \"adam\"   # the paper's; \"tensorwise-adam\": each lambda moves in proportion to its gradient\n"
        "learn_from_switch = False  # True: learn only the steps from the switch on, the first ones stay pure c0\n"
        "floors = 0.0         # > 0: per-seed floors of this weight at the start's loss values (worse is penalised)\n"
        "clip = None          # CLIP for the losses; None: the default for the model (toyworld: the toy CLIP)\n"
    )),
    setup_cell(),
    code("""
from disentkit.optimize import optimize, reference_init

switch = notebooks.default_switch(model, steps)
init = reference_init(steps, switch)
live = widgets.LivePlot(x="iteration", title="loss per iteration")
live
"""),
    code("""
learned = optimize(pipe, cond, init, tape, iters=max(1, round(iters * scale)), lr=lr, beta=beta,
                   guidance=guidance, clip=clip, optimizer=optimizer, floors=floors,
                   learn_steps=switch if learn_from_switch else None, progress=False,
                   callback=lambda s: live({"iteration": s.iteration, **s.losses}))
learned.schedule.save(out / "learned_schedule.json")
plotting.save_table(learned.history, out / "history.csv")
plotting.save_figure(plotting.metric_curves(learned.history, "iteration", ["loss"]), out / "loss.png")
fig = plotting.lambda_curves([init, learned.schedule], title="initial and learned lambda")
plotting.save_figure(fig, out / "lambda.png")
fig
"""),
    code("""
start = dk.sample(pipe, cond, init, tape, guidance, progress=False)
fig = plotting.image_grid([*learned.reference_images, *start.images, *learned.images], rows=3,
                          row_labels=["c0", "initial switch", "learned"], col_labels=[f"seed {s}" for s in seeds])
plotting.save_figure(fig, out / "images.png")
fig
"""),
    md("""
**Did the content stay and the style come?** On toyworld the evaluator answers for the initial and the learned
schedule (content: mask IoU with the `c0` image; style: probability of `c1`'s attribute).
"""),
    code("""
import pandas as pd

if evaluator is not None:
    factor, value = notebooks.style_target(c0, c1)
    scores = pd.DataFrame([
        {"schedule": name, "content_kept": evaluator.content_kept(px, learned.reference_pixels)["mask_iou"].mean(),
         "style_reached": evaluator.style_reached(px, factor, value).mean().item()}
        for name, px in (("initial", start.pixels), ("learned", learned.pixels))
    ])
    plotting.save_table(scores, out / "scores.csv")
    display(scores)
"""),
    md("""
**What we see, and why.** The loss goes down within a few iterations: the directional term rewards images that
moved toward `c1` in CLIP space, the perceptual term pulls back toward the `c0` image. The learned lambdas change
most in the middle steps, the ones that decide between layout and detail. On a toy model with a toy CLIP the
gains are small and noisy; the same cells on Stable Diffusion with OpenAI's CLIP reproduce the paper's setting.
With `floors > 0` every seed that ends worse than the start on a term, in CLIP's eyes, is penalised, so the
optimiser looks for steps that help without hurting any seed; where it finds none it keeps the start
(`learned.best_iteration == 0`), which is an answer too.
"""),
]

NOTEBOOKS["07_transfer"] = [
    md("""
# Transfer: one learned schedule, many seeds

The paper's learned lambdas are not tied to the image they were learned on: applied unchanged to other seeds they
give the same kind of edit. We take a learned schedule (from `06_learning_lambda` if it ran, else the switch
schedule it starts from) and apply it to new seeds. We expect the same attribute on every seed, each keeping its
own content.
"""),
    parameters("07_transfer", seeds="[10, 11, 12, 13]", extra=(
        'schedule_path = None # a learned schedule (JSON); None: the output of 06_learning_lambda next to out_dir, if any\n'
        "clip = None          # CLIP for the metrics; None: the default for the model (toyworld: the toy CLIP)\n"
    )),
    setup_cell(),
    code("""
candidate = Path(schedule_path) if schedule_path else out.parent / "06_learning_lambda" / "learned_schedule.json"
if candidate.is_file():
    schedule = dk.MixSchedule.load(candidate).resample(steps)
else:
    from disentkit.optimize import reference_init
    schedule = reference_init(steps, notebooks.default_switch(model, steps))
print(f"transferring {schedule!r}")
"""),
    code("""
from disentkit.transfer import transfer

moved = transfer(pipe, schedule, seeds, cond=cond, steps=steps, guidance=guidance, resample=True, clip=clip,
                 evaluator=evaluator, progress=False)
moved.grid.save(out / "transfer_grid.png")
plotting.save_table(moved.metrics, out / "transfer_metrics.csv")
display(moved.metrics)
moved.grid
"""),
    md("""
**What we see, and why.** Each column keeps its own composition (its seed's noise decides the layout in the early
steps) and every column takes the attribute. The schedule only says *when* to listen to which prompt, and the
"when" is a property of the model's denoising process, not of one image, which is why it transfers.
"""),
]

NOTEBOOKS["08_edit_your_image"] = [
    md("""
# Edit your own image: inversion, reconstruction, edit

To edit an existing picture we need the noise that would make it: encode it with the VAE and run the sampler
backwards under `c0` (DDIM inversion), or solve for every step's noise ("exact" inversion). The result is a
`NoiseTape`. Sampling it with pure `c0` should give the picture back (we check how closely), and sampling it with a
switch schedule edits it. We expect a good reconstruction and an edit that keeps the picture's layout.
"""),
    parameters("08_edit_your_image", seeds="[0]", extra=(
        'image_path = None    # your image; None: a toyworld scene rendered for c0 (or, on other models, a c0 sample)\n'
        'methods = ["ddim", "exact"]  # inversion methods to compare\n'
    )),
    setup_cell(),
    code("""
image = notebooks.example_image(pipe, model, c0, image_path, seed=seeds[0], steps=steps, guidance=guidance,
                                height=height, width=width)
plotting.save_grid([image], out / "input.png", col_labels=["input"])
image
"""),
    code("""
import pandas as pd

from disentkit.inversion import encode_image, invert

k = notebooks.default_switch(model, steps)
with torch.no_grad():  # the VAE alone (encode, decode): the best any inversion can give back
    vae_roundtrip = dk.decode(pipe, encode_image(pipe, image))[0].float().cpu()
rows, images = [], []
for method in methods:
    inverted = invert(pipe, image, c0, steps=steps, scheduler="ddim", method=method, guidance=guidance, progress=False)
    inverted.save(out / f"inverted_{method}.safetensors")
    res = dk.sample(pipe, cond, [dk.MixSchedule.constant(steps, 0.0), dk.MixSchedule.switch(steps, k)], inverted,
                    guidance, progress=False)
    rows.append({"method": method, "switch": k,
                 "mae_to_input": float(abs(plotting.to_array(res.images[0]) - plotting.to_array(image)).mean()),
                 "mae_to_vae_roundtrip": (res.pixels[0] - vae_roundtrip).abs().mean().item()})
    images += [image, vae_roundtrip, *res.images]
reconstruction = pd.DataFrame(rows)
plotting.save_table(reconstruction, out / "reconstruction.csv")
fig = plotting.image_grid(images, rows=len(methods), row_labels=[f"{m} inversion" for m in methods],
                          col_labels=["input", "VAE round trip", "reconstruction (c0)", f"edit (switch@{k})"])
plotting.save_figure(fig, out / "edit.png")
display(reconstruction)
fig
"""),
    md("""
**What we see, and why.** Plain DDIM inversion reconstructs only approximately: it assumes the model's noise
prediction barely changes between neighbouring steps, and classifier-free guidance makes that less true. The
"exact" inversion stores, on the tape, the per-step noise of a stochastic sampler solved so that sampling retraces
a forward trajectory: its reconstruction is exact up to float rounding. Neither can beat the VAE round trip (encode, then
decode, no diffusion at all): that is the detail the latent space keeps, so we compare with it as well as with the
input. Either way, the edit keeps the layout of the input because the first steps, still under `c0`, rebuild it
from the inverted noise.
"""),
]

NOTEBOOKS["09_measuring_disentanglement"] = [
    md("""
# Measuring disentanglement: attribute x switch step

Toyworld renders its scenes itself, so an independent evaluator network knows the truth for every image: what
object, where, what colour, background, texture, expression. That lets us *measure* what no tool for real Stable
Diffusion can: for each attribute and each switch step, was the content kept, and was the style reached? We expect
attributes that change large areas (background, rendering) to need earlier switches than local ones (expression).
"""),
    parameters("09_measuring_disentanglement", seeds="[0, 1]", extra=(
        "attributes = None    # the c1 suffixes; None: one per toyworld factor (or the paper's, on other models)\n"
    )),
    setup_cell(),
    code("""
from disentkit.sweeps import sweep_switch

attributes = attributes or notebooks.default_attributes(model)
many = dk.encode(pipe, [c0] * len(attributes), [f"{c0}, {a}" for a in attributes])
count = max(3, round(11 * scale))
switch_steps = sorted({round(k) for k in torch.linspace(0, steps, count).tolist()})
result = sweep_switch(pipe, many, tape, switch_steps, guidance, progress=False)
runs = result.runs.reset_index(drop=True)
runs["attribute"] = [attributes[p] for p in runs["pair"]]
runs["switch"] = [result.schedules[s].meta["switch"] for s in runs["schedule"]]
"""),
    code("""
# Every image is compared with the pure-c0 image (switch = steps) of its pair and seed.
ref_row = {(r.pair, r.seed_index): i for i, r in runs[runs["switch"] == steps].iterrows()}
reference = torch.stack([result.pixels[ref_row[(p, s)]] for p, s in zip(runs["pair"], runs["seed_index"])])
runs["dist_to_c0"] = (result.pixels - reference).abs().mean(dim=(1, 2, 3)).numpy()
if evaluator is not None:
    runs["content_kept"] = evaluator.content_kept(result.pixels, reference)["mask_iou"].to_numpy()
    targets = [notebooks.style_target(c0, f"{c0}, {a}") for a in runs["attribute"]]
    probs = evaluator.predict(result.pixels)[0]
    runs["style_reached"] = [probs[f][i, evaluator.factors[f].index(v)].item() for i, (f, v) in enumerate(targets)]
plotting.save_table(runs, out / "attribute_by_step.csv")
"""),
    code("""
value = "style_reached" if "style_reached" in runs else "dist_to_c0"
fig = plotting.heatmap(runs, "attribute", "switch", value, title=f"{value}: attribute x switch step (mean over seeds)")
plotting.save_figure(fig, out / "style_heatmap.png")
fig
"""),
    code("""
value = "content_kept" if "content_kept" in runs else "dist_to_c0"
fig = plotting.heatmap(runs, "attribute", "switch", value, title=f"{value}: attribute x switch step")
plotting.save_figure(fig, out / "content_heatmap.png")
fig
"""),
    md("""
**What we see, and why.** Reading a row from left (k = 0, pure `c1`) to right (k = N, pure `c0`): the style
probability stays high for a while and then falls; the content IoU rises. Where the style survives to a later switch
step, the attribute is decided late in denoising (local detail); where it dies early it needs the early, layout-
deciding steps (global changes such as the rendering or the background). The window where both are high is the
attribute's disentanglement window. (The paper finds global styles need earlier switches than local ones on Stable
Diffusion; the bundled toyworld model shows it too: the background and the sketch need switches by steps 7-8 of
50, while colour and stripes allow 12-13: see the README's toyworld report.) Without the evaluator (other models) the maps show the pixel distance to the
`c0` image instead, a cruder proxy that cannot tell content from style.
"""),
]

NOTEBOOKS["10_paper_pairs"] = [
    md("""
# The paper's attribute pairs

Wu et al. show each attribute with a seed and a number of `c0` steps out of 50. On Stable Diffusion
(`model="CompVis/stable-diffusion-v1-4"`, `device="cuda"`) this notebook reruns those pairs; on toyworld it runs
the closest toy analogue of each (a global style -> a sketch or a background, a local change -> an expression or a
colour). We expect the same pattern as in the paper: global styles need fewer `c0` steps (10) than local ones (20).
"""),
    parameters("10_paper_pairs", seeds="[0]", extra=(
        "max_pairs = None     # None: all pairs (scaled by scale); an int limits how many\n"
    )),
    setup_cell(),
    code("""
pairs = notebooks.paper_pairs(model)
limit = max_pairs or max(2, round(len(pairs) * scale))
pairs = pairs.head(limit)
pairs
"""),
    code("""
results = []
for p in pairs.itertuples():
    k = round(p.c0_steps * steps / 50)  # the paper's c0 steps, on our step count
    seed_tape = dk.NoiseTape.from_seed(pipe, int(p.seed), steps=steps, height=height, width=width)
    pc = dk.encode(pipe, p.c0, p.c1)
    res = dk.sample(pipe, pc, [dk.MixSchedule.constant(steps, 0.0), dk.MixSchedule.switch(steps, k),
                               dk.MixSchedule.constant(steps, 1.0)], seed_tape, guidance, progress=False)
    results.append((p, k, res))
images = [img for _, _, res in results for img in res.images]
fig = plotting.image_grid(images, rows=len(results), row_labels=[f"{p.c1.split(',', 1)[-1].strip()}" for p, _, _ in results],
                          col_labels=["c0", "switch (paper's c0 steps)", "c1"])
plotting.save_figure(fig, out / "pairs_grid.png")
fig
"""),
    code("""
import pandas as pd

table = pd.DataFrame([{"c0": p.c0, "c1": p.c1, "seed": p.seed, "switch": k,
                       "dist_edit_to_c0": (res.pixels[1] - res.pixels[0]).abs().mean().item(),
                       "dist_edit_to_c1": (res.pixels[1] - res.pixels[2]).abs().mean().item()}
                      for p, k, res in results])
plotting.save_table(table, out / "pairs.csv")
table
"""),
    md("""
**What we see, and why.** Each edit sits between its two pure images: nearer the `c0` image in layout, nearer `c1`
in the attribute. Pairs that change the whole picture (a rendering style, a background) needed fewer `c0` steps in
the paper because the style must enter while the global structure is still being decided; local attributes can come
later. On the bundled toy model the measured windows sit at steps 10-13 of 50 for colour and stripes, close to
the paper's c0-step counts (10-20 of 50); the night background and the sketch come through only from earlier
switches (7-8) that also move the object, and a smile is drawn on about half of the seeds only.
"""),
]


def build(check: bool = False) -> int:
    """Write (or, with ``check``, compare) every notebook; return the number that differ."""
    differ = 0
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata={
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
