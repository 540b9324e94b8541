"""Learned lambdas against the best single switch, their transfer to unseen seeds, inversion and memory, on the
bundled toyworld model: the command line of :mod:`disentkit.reports.learned_schedules` (what is measured, and how,
is written there).

    python benchmarks/optimize_report.py            # full: 50 steps, 10 iterations, 10 pairs (~28 min, 2 cores)
    python benchmarks/optimize_report.py --quick    # 20 steps, 3 iterations, 4 unseen seeds (a few minutes)
    python benchmarks/optimize_report.py --render REPORT.json   # judge a kept report again, measuring nothing

Writes outputs/benchmarks/optimize_report.{json,md}. Skips (and says so) when the toyworld weights are absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

import disentkit as dk
from disentkit.files import write_json_atomic, write_text_atomic
from disentkit.losses import load_clip
from disentkit.optimizers import OPTIMIZERS
from disentkit.pipeline import toyworld_dir
from disentkit.recipes import BOOST_FROM, GUARD_WEIGHT, OBJECTIVES, Recipe
from disentkit.reports import learned_schedules
from disentkit.reports.learned_schedules import (
    MORE_SEEDS,
    PAIRS,
    PARTS,
    STYLE_CONSTRAINT_WEIGHT,
    TRAIN_SEEDS,
    content_terms_report,
    inversion_report,
    markdown,
    memory_report,
    pair_report,
    render,
    run_pairs,
    settings,
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=learned_schedules.__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller version (20 steps, 3 iterations, 4 unseen seeds)")
    ap.add_argument("--weights", type=Path, default=toyworld_dir(), help="a toyworld weights folder (pipeline/, clip/)")
    ap.add_argument("--out", type=Path, default=Path("outputs") / "benchmarks")
    ap.add_argument("--iters", type=int, default=None, help="optimisation iterations (default 10, --quick 3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--objective", choices=OBJECTIVES, default="prompt",
                    help="prompt: CLIP prompt loss (c1 vs the attribute's other values) + beta L_perc (default); "
                         "paper: the paper's L_dir + beta L_perc")  # fmt: skip
    ap.add_argument("--beta", type=float, default=None,
                    help="weight of the content term (default: 50 for struct, 2 for perc, 0.05 for the paper)")
    ap.add_argument("--enough", default="none",
                    help="prompt loss: stop pushing once CLIP's P(c1) >= this; 'start': CLIP's P(c1) on the best "
                         "switch's images (keep that much style, buy content); 'start-each': every training image "
                         f"keeps its own start's P(c1) (weight {STYLE_CONSTRAINT_WEIGHT:g}); 'none' (default): always push")
    ap.add_argument("--content", choices=["perc", "struct"], default=None,
                    help="prompt objective's content term: struct (CLIP self-similarity: the layout, blind to colour "
                         "and texture; default) or perc (CLIP feature distance)")
    ap.add_argument("--keep-content", type=float, default=None, metavar="WEIGHT",
                    help="replace beta L_perc by WEIGHT x max(0, L_perc - L_perc of the best switch), per training "
                         "image: buy style without losing content (e.g. 10)")  # fmt: skip
    ap.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="tensorwise-adam",
                    help="tensorwise-adam (one step scale for the whole schedule; default) or adam (the paper's)")
    ap.add_argument("--lr", type=float, default=0.05, help="the optimiser's step size (default: the paper's 0.05)")
    ap.add_argument("--learn-from-switch", action=argparse.BooleanOptionalAction, default=True,
                    help="learn only the steps from the best switch on (the c0 steps that lay out the content stay "
                         "c0; default); --no-learn-from-switch learns every step, as the paper does")
    ap.add_argument("--start-later", type=int, default=0, metavar="D",
                    help="start the optimiser from c0 until D steps after the best switch (more content; the style "
                         "floor still comes from the best switch's images), learning every step from the switch on")
    ap.add_argument("--guard", type=float, default=None, metavar="WEIGHT",
                    help="prompt objective: per-image floors at the start's values (optimize(floors=WEIGHT): "
                         "WEIGHT x each term's weight x max(0, term - its start value)), so a training image that "
                         f"loses style or content in CLIP's eyes is penalised (default {GUARD_WEIGHT:g}; 0: off)")
    ap.add_argument("--floors-at", choices=["start", "switch"], default="start",
                    help="where --guard's floors are: the start's images (default) or the best switch's (a boosted "
                         "start that is behind on content must then win it back)")
    ap.add_argument("--late", type=float, default=1.0, help="the start's weight after its switch (paper: 1.0-1.2)")
    ap.add_argument("--more-seeds", type=int, default=len(MORE_SEEDS), metavar="N",
                    help=f"also apply both schedules to N more unseen seeds from {MORE_SEEDS[0]} on, for 95%% intervals "
                         f"that are not part of the bar (default {len(MORE_SEEDS)}; 0: off; full size only)")
    ap.add_argument("--train-seeds", type=int, default=len(TRAIN_SEEDS), metavar="N",
                    help=f"learn on the N seeds from {TRAIN_SEEDS[0]} on (default {len(TRAIN_SEEDS)}; full size only)")
    ap.add_argument("--boost", type=float, nargs=2, default=None, metavar=("VALUE", "FROM"),
                    help="the start's weight from step FROM on (e.g. 1.5 20: more style once the content is settled)")
    ap.add_argument("--pairs", nargs="+", type=int, default=None, metavar="I", choices=range(len(PAIRS)),
                    help=f"only these pairs (0..{len(PAIRS) - 1}, in the table's order), for quick experiments")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="pairs learned side by side, one process and one torch thread each (1: in this process)")
    ap.add_argument("--render", type=Path, metavar="REPORT_JSON",
                    help="measure nothing: judge and rewrite the .md beside an existing report .json")
    args = ap.parse_args(argv)

    if args.render:  # verdicts and words change more often than the numbers
        print(render(args.render))
        return 0
    if not (args.weights / "pipeline" / "model_index.json").is_file() or not (args.weights / "clip").is_dir():
        print(f"SKIPPED: no toyworld weights in {args.weights} (need pipeline/ and clip/); "
              "train them with `python -m disentkit.toyworld.train`.")  # fmt: skip
        return 0
    from disentkit.toyworld.evaluator import Evaluator

    try:
        evaluator = Evaluator.load()
    except FileNotFoundError as err:
        print(f"SKIPPED: the toyworld evaluator is missing ({err}).")
        return 0

    torch.set_num_threads(args.threads)
    cfg = settings(args.quick)
    if args.iters is not None:
        cfg["iters"] = args.iters
    if not args.quick:
        cfg["train"] = list(range(TRAIN_SEEDS[0], TRAIN_SEEDS[0] + args.train_seeds))
        cfg["more"] = list(range(MORE_SEEDS[0], MORE_SEEDS[0] + args.more_seeds))
    content = args.content or ("perc" if args.objective == "paper" else "struct")
    if args.beta is not None:
        beta = args.beta
    else:  # the weights measured to work (README): the paper's 0.05 for its objective
        beta = 0.05 if args.objective == "paper" else {"struct": 50.0, "perc": 2.0}[content]
    if args.objective == "paper" and (args.enough != "none" or content != "perc" or args.guard):
        ap.error("--enough, --content and --guard apply to the prompt objective only")
    enough = None if args.enough == "none" else args.enough if args.enough in ("start", "start-each") else float(args.enough)
    boost, boost_from = (args.boost[0], args.boost[1]) if args.boost else (None, BOOST_FROM)
    if not float(boost_from).is_integer():
        ap.error(f"--boost V S: S is a step number, got {boost_from:g}")
    if args.floors_at == "switch" and (args.guard == 0 or args.objective == "paper"):
        ap.error("--floors-at switch places --guard's floors: it needs the prompt objective and a guard weight > 0")
    recipe = Recipe(args.objective, beta, enough, args.keep_content, args.optimizer, args.lr, args.learn_from_switch,
                    content, args.start_later, args.late, boost, int(boost_from), args.guard, args.floors_at)
    chosen = [PAIRS[i] for i in args.pairs] if args.pairs is not None else PAIRS
    t0 = time.perf_counter()
    pipe = dk.load_pipeline(args.weights / "pipeline", device=args.device)
    clip = load_clip(args.weights / "clip", args.device)
    pairs, inversion, memory = [], None, None
    if "pairs" in args.parts and args.jobs > 1:
        pairs = run_pairs(args.weights, args.device, cfg, recipe, chosen, args.jobs)
    elif "pairs" in args.parts:
        for c0, c1, target in chosen:
            print(f"{c0!r} -> {c1!r} ...", flush=True)
            pairs.append(pair_report(pipe, clip, evaluator, c0, c1, target, cfg, recipe))
    contents = content_terms_report(clip) if "contents" in args.parts else None
    if "inversion" in args.parts:
        print("inversion ...", flush=True)
        inversion = inversion_report(pipe, cfg)
    if "memory" in args.parts:
        print("memory (two subprocesses) ...", flush=True)
        memory = memory_report(args.weights, 50 if not args.quick else cfg["steps"], args.device, args.threads)

    report = {"settings": cfg, "quick": args.quick, **asdict(recipe), "device": args.device, "weights": str(args.weights),
              "pairs": pairs, "contents": contents, "inversion": inversion, "memory": memory,
              "seconds": time.perf_counter() - t0}  # fmt: skip
    name = "optimize_report_quick" if args.quick else "optimize_report"
    if args.pairs is not None or set(args.parts) != set(PARTS):
        name += "_partial"  # an experiment on some pairs or parts never overwrites the full report
    write_json_atomic(args.out / f"{name}.json", report)
    write_text_atomic(args.out / f"{name}.md", markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
