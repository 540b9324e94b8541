"""Per-token schedules vs plain switches: can the attribute words and the rest (EOS + padding) at different
switch steps reach an edit no plain switch reaches? Sampling only, evaluator-judged, train + unseen seeds.

    python benchmarks/experiments/token_probe.py PAIR_INDEX   # 0: smiling, 2: the striped circle
"""
import sys, json, time
from pathlib import Path
HERE = Path(__file__).resolve()
import torch
torch.set_num_threads(1)
import disentkit as dk
from disentkit.reports.learned_schedules import PAIRS, judge, TRAIN_SEEDS, UNSEEN_SEEDS
from disentkit.toyworld.evaluator import Evaluator
from disentkit.pipeline import toyworld_dir
i = int(sys.argv[1])
c0, c1, target = PAIRS[i]
pipe = dk.load_pipeline(toyworld_dir() / "pipeline"); ev = Evaluator.load()
cond = dk.encode(pipe, c0, c1)
T = cond.tokens
n0 = len(pipe.tokenizer(c0).input_ids); n1 = len(pipe.tokenizer(c1).input_ids)
differ = ((cond.c1 - cond.c0).norm(dim=-1)[0] > 1e-5).nonzero().flatten().tolist()
words = torch.zeros(T); words[n0 - 1:n1 - 1] = 1  # c1's extra words sit where c0 has its EOS and padding starts
print("T", T, "n0", n0, "n1", n1, "differ from", differ[:3], "...", len(differ), "words at", words.nonzero().flatten().tolist(), flush=True)
seeds = TRAIN_SEEDS + UNSEEN_SEEDS
tape = dk.NoiseTape.from_seed(pipe, seeds, steps=50)
ref = dk.sample(pipe, cond, dk.MixSchedule.constant(50, 0.0), tape, progress=False, max_batch=32).pixels
d0 = judge(ev, ref, ref, target)
needed = d0["reached"] < 0.5
def step_weights(k):
    w = torch.zeros(50); w[k:] = 1.0; return w
res = {}
grid = [(k, k) for k in (4, 6, 8, 10, 12, 14, 16, 20)]
grid += [(kw, kr) for kw in (0, 4, 8, 12, 16) for kr in (8, 12, 16, 20, 30, 50) if kr != kw]
t0 = time.time()
for kw, kr in grid:
    w = step_weights(kw)[:, None] * words[None] + step_weights(kr)[:, None] * (1 - words[None])
    out = dk.sample(pipe, cond, dk.MixSchedule(w, f"{kw},{kr}"), tape, progress=False, max_batch=32).pixels
    d = judge(ev, out, ref, target)
    row = {}
    for part, sl in (("train", slice(0, 16)), ("unseen", slice(16, 32))):
        nd = needed[sl]
        row[part] = [float(d["reached"][sl][nd].mean()), float(d["iou"][sl][nd].mean()), float(d["reached"][sl].mean()), float(d["iou"][sl].mean())]
    res[f"{kw},{kr}"] = row
    print(f"words@{kw:2d} rest@{kr:2d} | train edit {row['train'][0]:.2f} iou {row['train'][1]:.3f} (all {row['train'][2]:.2f}, {row['train'][3]:.3f}) | unseen edit {row['unseen'][0]:.2f} iou {row['unseen'][1]:.3f} (all {row['unseen'][2]:.2f}, {row['unseen'][3]:.3f}) | {time.time()-t0:.0f}s", flush=True)
json.dump(res, open(HERE.with_name(f"token_probe_{i}.json"), "w"))
