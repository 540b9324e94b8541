"""Why does the optimiser keep its start (the best switch) on the tie pairs of optimize_report_pairs10.md?

Runs the report's default recipe for one pair at several step sizes, keeping the last iterate, and prints every
iteration's loss terms and how the evaluator judges the last iterate. Output kept in tie_probe.txt:

    python benchmarks/experiments/tie_probe.py 0 0.02 0.01     # smiling
    python benchmarks/experiments/tie_probe.py 5 0.05 0.02 0.01  # frowning
"""

import sys
import time

import torch

import disentkit as dk
from disentkit.losses import load_clip
from disentkit.pipeline import toyworld_dir
from disentkit.recipes import TOY
from disentkit.reports import learned_schedules as r
from disentkit.toyworld.evaluator import Evaluator

BEST_SWITCH = {0: 15, 5: 15}  # the best switches the report found for smiling and frowning

torch.set_num_threads(1)
pair, lrs = int(sys.argv[1]), [float(x) for x in sys.argv[2:]]
weights = toyworld_dir()
pipe, clip = dk.load_pipeline(weights / "pipeline"), load_clip(weights / "clip")
evaluator = Evaluator.load()
c0, c1, target = r.PAIRS[pair]
steps, best_k = 50, BEST_SWITCH[pair]
cond = dk.encode(pipe, c0, c1)
train = dk.NoiseTape.from_seed(pipe, r.TRAIN_SEEDS, steps=steps)
terms = TOY.terms(clip, c0, c1, r.alternatives(c1, target))  # the prompt loss + 50 L_struct
init = TOY.start(steps, best_k)
reference = dk.sample(pipe, cond, dk.MixSchedule.constant(steps, 0.0), train, progress=False).pixels
print(f"{c0!r} -> {c1!r}, start: switch at {best_k}")
for lr in lrs:
    t = time.time()
    settings = {**TOY.settings(best_k), "lr": lr}  # tensor-wise Adam from the switch on, floors 10
    res = dk.optimize(pipe, cond, init, train, losses=terms, iters=10, progress=False, keep="last", **settings)
    columns = [c for c in res.history.columns if not c.startswith("lambda")]
    print(f"lr {lr}: {time.time() - t:.0f} s")
    print(res.history[columns].round(4).to_string())
    judged = r.judge(evaluator, res.pixels, reference, target)
    print(f"last iterate: reached {judged['reached'].mean():.4f}, mask iou {judged['iou'].mean():.4f}", flush=True)
