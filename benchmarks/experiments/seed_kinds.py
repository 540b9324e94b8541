"""Which seeds an edit fails on, by what the unedited c0 image drew (the README's stripes and smiling paragraph).

    python benchmarks/experiments/seed_kinds.py \
        docs/results/bundle_2026-11-26/optimize_report_floors16.json > benchmarks/experiments/seed_kinds.md

Reads a full optimize_report JSON (its per-seed evaluator P(target) for c0, best switch and learned schedule),
re-samples the pure-c0 images of the training and unseen seeds, asks the evaluator what each one drew (texture
for the stripes pair, expression for the smiling pair) and counts, per kind, how many of the seeds that need the
edit (c0 lacks the target) reach it.
"""

import json
import sys
from collections import Counter
from pathlib import Path

import torch

import disentkit as dk
from disentkit.pipeline import toyworld_dir
from disentkit.reports.learned_schedules import TRAIN_SEEDS, UNSEEN_SEEDS
from disentkit.toyworld.evaluator import Evaluator

report = json.loads(Path(sys.argv[1]).read_text())
pipe, evaluator = dk.load_pipeline(toyworld_dir() / "pipeline"), Evaluator.load()
print(f"# Which seeds the edit reaches, by what c0 drew ({Path(sys.argv[1]).name})\n")
for index, factor in ((0, "expression"), (2, "texture")):
    pair = report["pairs"][index]
    cond = dk.encode(pipe, pair["c0"], pair["c1"])
    print(f"## {pair['c0']} -> {pair['c1']} (best switch {pair['best_switch']})\n")
    print("| split | c0 drew | seeds needing the edit | switch reaches | learned reaches |\n|---|---|---|---|---|")
    for split, seeds in (("train", TRAIN_SEEDS), ("unseen", UNSEEN_SEEDS)):
        tape = dk.NoiseTape.from_seed(pipe, seeds, steps=report["settings"]["steps"])
        with torch.no_grad():
            c0 = dk.sample(pipe, cond, dk.MixSchedule.constant(tape.steps, 0.0), tape, progress=False).pixels
        kinds = evaluator(c0)[factor].tolist()
        per_seed = pair["per_seed"][split]
        needed, switch, learned = Counter(), Counter(), Counter()
        for i, kind in enumerate(kinds):
            if per_seed["c0"]["style"][i] > 0.5:
                continue  # already shows the target: not a seed the edit is needed for
            needed[kind] += 1
            switch[kind] += per_seed["switch"]["style"][i] > 0.5
            learned[kind] += per_seed["learned"]["style"][i] > 0.5
        for kind in sorted(needed, key=str):
            print(f"| {split} | {kind} | {needed[kind]} | {switch[kind]} | {learned[kind]} |")
    print()
