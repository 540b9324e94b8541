"""How good is the toyworld evaluator? Accuracy per factor and mask IoU on held-out renders.

    python benchmarks/toyworld_evaluator_report.py [--n 1000] [--weights PATH]

Scores the evaluator on `n` scenes from a fixed held-out seed (never used in training): as rendered, after the
same kind of degradation the training used (blur, resampling, noise, JPEG: generated images look like that), and
downsampled to 32x32 (harsher than anything in training); and splits the clean numbers by rendering. Prints a markdown table and writes
outputs/toyworld_evaluator_report.json. The bar: >= 95% per factor and mean mask IoU >= 0.9 on clean renders.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from disentkit.toyworld.evaluator import Evaluator
from disentkit.toyworld.evaluator_train import HELDOUT_SEED, degrade, jpeg, render_scenes, score

ACCURACY_BAR, IOU_BAR = 0.95, 0.90


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="held-out scenes")
    p.add_argument("--weights", default=None, help="evaluator folder (default: the bundled weights)")
    p.add_argument("--out", default="outputs/toyworld_evaluator_report.json")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    ev = Evaluator.load(args.weights)
    images, masks, labels = render_scenes(args.n, HELDOUT_SEED)

    t0 = time.perf_counter()
    clean = score(ev, images, masks, labels)
    seconds_per_image = (time.perf_counter() - t0) / args.n

    # degraded copies of the same scenes, with a fixed seed; no image is left clean
    g = torch.Generator().manual_seed(HELDOUT_SEED)
    x = torch.from_numpy(jpeg(images, np.random.default_rng(HELDOUT_SEED), p=0.5)).permute(0, 3, 1, 2) / 255
    degraded = score(ev, degrade(x.float(), g, clean_fraction=0.0), masks, labels)

    # the same scenes at 32x32 (a blurrier, low-resolution source); the evaluator resizes them back to 64
    small = torch.nn.functional.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, size=(32, 32), mode="bilinear", antialias=True
    )
    from_32px = score(ev, small.clamp(0, 1), masks, labels)

    by_rendering = {}
    for r in ev.factors["rendering"]:
        keep = [i for i, l in enumerate(labels) if l["rendering"] == r]
        by_rendering[r] = score(ev, images[keep], masks[keep], [labels[i] for i in keep]) | {"n": len(keep)}

    metrics = [k for k in clean if k.startswith("acc_")] + ["mask_iou"]
    passed = all(clean[k] >= ACCURACY_BAR for k in metrics if k.startswith("acc_")) and clean["mask_iou"] >= IOU_BAR
    n_faces = sum(l["kind"] == "face" for l in labels)

    print(f"## Toyworld evaluator on {args.n} held-out renders (seed {HELDOUT_SEED}; expression: {n_faces} faces)\n")
    print("| metric | clean | degraded | from 32 px | clean, photo | clean, sketch | bar |")
    print("|---|---|---|---|---|---|---|")
    for k in metrics:
        bar = IOU_BAR if k == "mask_iou" else ACCURACY_BAR
        cells = [clean[k], degraded[k], from_32px[k], by_rendering["photo"][k], by_rendering["sketch"][k]]
        print(f"| {k} | " + " | ".join(f"{v:.3f}" for v in cells) + f" | {bar:.2f} |")
    train = ev.meta.get("train", {})
    print(
        f"\nbar {'PASSED' if passed else 'FAILED'} (clean renders); inference {1000 * seconds_per_image:.2f} ms/image "
        f"on {torch.get_num_threads()} CPU thread(s); training took {train.get('train_seconds', float('nan')):.0f} s "
        f"for {train.get('steps', '?')} steps"
    )

    report = {
        "n": args.n,
        "seed": HELDOUT_SEED,
        "n_faces": n_faces,
        "clean": clean,
        "degraded": degraded,
        "from_32px": from_32px,
        "by_rendering": by_rendering,
        "bar": {"accuracy": ACCURACY_BAR, "mask_iou": IOU_BAR, "passed": passed},
        "inference_ms_per_image": 1000 * seconds_per_image,
        "train": train,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
