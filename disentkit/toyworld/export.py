"""Assembling a run's latest weights into a StableDiffusionPipeline, the training report (report.json, loss
curves, sample grid), and the export into the bundled weights folder with its model card."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from disentkit.errors import ModelNotFoundError
from disentkit.files import replace_path, write_text_atomic

from .config import STAGES, MODEL_OF_STAGE, TrainConfig
from .models import (
    ToyCLIPConfig,
    ToyUNetConfig,
    ToyVAEConfig,
    config_dict,
    config_from_dict,
    count_parameters,
    make_scheduler,
    text_encoder_from_clip,
)
from .stages import log

# Captions whose samples the report shows (one row each) and that the sanity check looks at.
SAMPLE_CAPTIONS = (
    "a photo of a circle",
    "a photo of a circle, red",
    "a photo of a square, blue, striped",
    "a photo of a triangle, yellow, at night",
    "a photo of a star, green, in the snow",
    "a photo of a face, smiling",
    "a photo of a face, frowning, at sunset",
    "a sketch of a square, purple",
    "a photo of a circle, orange, dotted, in daylight",
)



def assemble(run_dir: Path, tokenizer=None, dtype=torch.float32):
    """A StableDiffusionPipeline and CLIPModel from the run's latest weights: finished stages' models, else the
    newest checkpoint (the UNet's EMA weights), so a run can be exported while it is still training."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTokenizer

    tokenizer = tokenizer or CLIPTokenizer.from_pretrained(run_dir / "tokenizer")

    def latest(name, config_class, model_class):
        """A finished stage's saved model, else its newest checkpoint (EMA weights if kept), else None."""
        stage_dir = run_dir / name
        if (stage_dir / "done.json").exists():
            return model_class.from_pretrained(stage_dir / "model")
        if not (stage_dir / "checkpoint.pt").exists():
            return None
        state = torch.load(stage_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
        model = config_from_dict(config_class, state["model_config"]).build()
        model.load_state_dict(state["ema"] if "ema" in state else state["model"])
        return model

    clip = (latest("clip_vision", ToyCLIPConfig, CLIPModel) or latest("clip_text", ToyCLIPConfig, CLIPModel)
            or latest("clip", ToyCLIPConfig, CLIPModel))
    vae = latest("vae", ToyVAEConfig, AutoencoderKL)
    unet = latest("unet", ToyUNetConfig, UNet2DConditionModel)
    if clip is None or vae is None or unet is None:
        raise ModelNotFoundError(f"{run_dir} has no clip, vae and unet weights yet; train first "
                                 "(python -m disentkit.toyworld.train --out {run_dir})")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder_from_clip(clip), tokenizer=tokenizer, unet=unet,
        scheduler=make_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype), clip.to(dtype=dtype)


@torch.no_grad()
def sample_grid(pipe, captions, seeds=(0, 1, 2, 3, 4, 5), steps=25, guidance=7.5) -> np.ndarray:
    """One row per caption, one column per seed: (rows*64, cols*64, 3) uint8."""
    rows = []
    for text in captions:
        images = pipe(
            [text] * len(seeds), num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
            generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np",
        ).images  # (S, 64, 64, 3) float in [0, 1]
        rows.append(np.concatenate(list((images * 255).round().astype(np.uint8)), axis=1))
    return np.concatenate(rows, axis=0)


def write_report(run_dir: Path, cfg: TrainConfig | None = None, sample_steps: int = 25) -> dict:
    """report.json (configs, per-stage summaries and loss histories), loss_curves.png and samples.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    report = {"stages": {}}
    if cfg is not None:
        report["models"] = {k: config_dict(getattr(cfg, k)) for k in ("clip_model", "vae_model", "unet_model")}
    fig, axes = plt.subplots(1, len(STAGES), figsize=(4.3 * len(STAGES), 3.5))
    for ax, name in zip(axes, STAGES):
        entry = {}
        if (run_dir / name / "done.json").exists():
            entry["summary"] = json.loads((run_dir / name / "done.json").read_text())
        if (run_dir / name / "checkpoint.pt").exists():
            state = torch.load(run_dir / name / "checkpoint.pt", map_location="cpu", weights_only=False)
            entry.update(steps=state["step"], minutes=state["elapsed"] / 60, history=state["history"],
                         rounds=state.get("round", {}).get("index", 0) + 1)
            if "model_config" in state:  # what was trained, which a resumed run keeps even if the default changed
                report.setdefault("models", {})[MODEL_OF_STAGE[name]] = state["model_config"]
            hist = state["history"]
            if hist:
                ax.plot([h["step"] for h in hist], [h["loss"] for h in hist])
                ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        report["stages"][name] = entry
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curves.png", dpi=100)
    plt.close(fig)
    if sample_steps and all((run_dir / n / "checkpoint.pt").exists() for n in STAGES):
        pipe, _ = assemble(run_dir)
        grid = sample_grid(pipe, SAMPLE_CAPTIONS, steps=sample_steps)
        Image.fromarray(grid).save(run_dir / "samples.png")
        report["sample_captions"] = list(SAMPLE_CAPTIONS)
    write_text_atomic(run_dir / "report.json", json.dumps(report, indent=1))
    return report


MODEL_CARD = """# toyworld: a miniature Stable Diffusion

Trained from scratch by `python -m disentkit.toyworld.train` on procedurally rendered toy scenes
(`disentkit.toyworld.scenes`): one object (circle, square, triangle, star, face) of a colour (red, green, blue,
yellow, purple, orange) and texture (plain, striped, dotted), faces with an expression (neutral, smiling,
frowning), on a background (day, night, snow, sunset), rendered as a photo or a sketch, 64x64 pixels.
Captions as in Wu et al. (CVPR 2023): "a photo of a circle" leaves attributes unsaid (random in the image);
"a photo of a circle, red, at night", "a photo of a face, smiling", "a sketch of a square" say them.

Load it like any Stable Diffusion:

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("{pipeline}", dtype=torch.float32)
image = pipe("a photo of a face, smiling", height=64, width=64, num_inference_steps=50).images[0]
```

Weights are stored in float16 and load as float32 (the configs say so), the right choice on a CPU.

## Parts
| part | model | parameters | training |
|---|---|---|---|
| text_encoder (+ `clip/`) | transformers CLIPModel, text and ViT vision towers | {clip_params} | {clip_train} |
| vae | diffusers AutoencoderKL, 64x64x3 <-> 16x16x4, scaling_factor {scaling} | {vae_params} | {vae_train} |
| unet | diffusers UNet2DConditionModel, eps prediction, cross-attention to CLIP text | {unet_params} | {unet_train} |
| scheduler | DDIM, SD v1 betas (scaled_linear 0.00085-0.012, 1000 steps) | | |

CLIP zero-shot accuracy per factor on held-out scenes: {zero_shot}

Training ran on CPU; details, loss histories and configs are in `report.json`, loss curves in `loss_curves.png`.
{samples}
{notes}
"""


def _stage_text(report, name) -> str:
    entry = report["stages"].get(name, {})
    if not entry.get("history"):
        return "not trained"
    last = entry["history"][-1]
    status = "finished" if "summary" in entry else "in progress when exported"
    rounds = entry.get("rounds", 1)
    rounds = f" in {rounds} rounds (--more)" if rounds > 1 else ""
    return f"{entry['steps']} steps{rounds}, {entry['minutes']:.0f} min, final loss {last['loss']:.4g} ({status})"


def _load_as_float32(config_path: Path) -> None:
    """transformers loads weights in the dtype a config names (diffusers loads float32 unless told otherwise).
    The weights are stored in float16 to stay small; naming float32 here makes a plain from_pretrained give a
    float32 model everywhere, so text encoder and UNet agree on CPU without a dtype argument."""
    config = json.loads(config_path.read_text())

    def fix(node):
        if isinstance(node, dict):
            for key in ("dtype", "torch_dtype"):
                if node.get(key) == "float16":
                    node[key] = "float32"
            for value in node.values():
                fix(value)

    fix(config)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


# What export writes into the weights folder. The folder is shared (the evaluator keeps its weights there too),
# so export replaces exactly these entries and leaves everything else alone.
EXPORTED_ENTRIES = ("pipeline", "clip", "README.md", "report.json", "loss_curves.png", "samples.png")


def _write_clip_preprocessor(folder: Path, size: int) -> None:
    """Our CLIP saw pixels in [-1, 1] (mean 0.5, std 0.5 per channel), not OpenAI CLIP's statistics. Saying so in a
    standard preprocessor_config.json makes every CLIP consumer (our losses, CLIPImageProcessor) feed it the same."""
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def export(run_dir: str | Path, weights_dir: str | Path, notes: str = "", sample_steps: int = 25) -> Path:
    """Write weights_dir/pipeline (StableDiffusionPipeline.save_pretrained, fp16 safetensors), weights_dir/clip
    (CLIPModel + tokenizer, fp16), and weights_dir/README.md (model card) plus the training report, loss curves and
    sample grid. Everything is written to a temporary folder first and then renamed into place entry by entry;
    other entries of weights_dir are kept. sample_steps=0 skips making a new sample grid."""
    run_dir, weights_dir = Path(run_dir), Path(weights_dir)
    report = write_report(run_dir, sample_steps=sample_steps)
    pipe, clip = assemble(run_dir, dtype=torch.float16)
    weights_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=weights_dir, prefix=".export-"))  # same filesystem, so renames are atomic
    try:
        pipe.save_pretrained(tmp / "pipeline", safe_serialization=True)
        clip.save_pretrained(tmp / "clip", safe_serialization=True)
        pipe.tokenizer.save_pretrained(tmp / "clip")
        # transformers 5 saves only tokenizer.json; older versions' CLIPTokenizer wants the classic two files.
        for name in ("vocab.json", "merges.txt"):
            for folder in (tmp / "pipeline" / "tokenizer", tmp / "clip"):
                shutil.copy(run_dir / "tokenizer" / name, folder / name)
        _write_clip_preprocessor(tmp / "clip", clip.config.vision_config.image_size)
        for config_path in (tmp / "pipeline" / "text_encoder" / "config.json", tmp / "clip" / "config.json"):
            _load_as_float32(config_path)
        for name in ("report.json", "loss_curves.png", "samples.png"):
            if (run_dir / name).exists():
                shutil.copy(run_dir / name, tmp / name)
        stages = report["stages"]
        zero_shot = (stages.get("clip_vision", {}).get("summary", {}).get("zero_shot")
                     or stages.get("clip", {}).get("summary", {}).get("zero_shot"))
        card = MODEL_CARD.format(
            pipeline=str(weights_dir / "pipeline"),
            clip_params=f"{count_parameters(clip) / 1e6:.2f}M",
            vae_params=f"{count_parameters(pipe.vae) / 1e6:.2f}M",
            unet_params=f"{count_parameters(pipe.unet) / 1e6:.2f}M",
            clip_train=_stage_text(report, "clip") + "; then the text tower alone (factor heads): "
            + _stage_text(report, "clip_text") + "; then the vision tower alone (text frozen; each image also scored "
            "against captions that differ from its own in one factor, NegCLIP-style hard negatives): "
            + _stage_text(report, "clip_vision"),
            vae_train=_stage_text(report, "vae"),
            unet_train=_stage_text(report, "unet"),
            scaling=f"{pipe.vae.config.scaling_factor:.4f}",
            zero_shot=json.dumps({k: round(v, 3) for k, v in zero_shot.items()}) if zero_shot else "not measured",
            samples=(
                "`samples.png` shows samples (25 DDIM steps, guidance 7.5), one row per caption: "
                + "; ".join(f'"{c}"' for c in SAMPLE_CAPTIONS) + "."
                if (run_dir / "samples.png").exists() else ""
            ),
            notes=notes,
        )
        (tmp / "README.md").write_text(card)
        for name in EXPORTED_ENTRIES:
            if (tmp / name).exists():
                replace_path(tmp / name, weights_dir / name)  # renames only: the old entry or the new
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"exported {run_dir} -> {weights_dir}")
    return weights_dir

