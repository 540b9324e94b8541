"""toyworld: a miniature text-to-image world (procedural scenes, captions, and a tiny Stable Diffusion trained on
them) that the toolkit bundles as its offline default model and uses to measure disentanglement."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"  # StableDiffusionPipeline.from_pretrained folder
CLIP_DIR = WEIGHTS_DIR / "clip"  # transformers CLIPModel + tokenizer
