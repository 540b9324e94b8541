"""Training data shared by every stage: scenes rendered once into the run folder (deterministic from a seed, so a
fresh machine re-creates exactly the same data), captions, and batch sampling."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from disentkit.files import write_text_atomic

from . import scenes as S


@dataclass
class SceneData:
    """The rendered training scenes: their descriptions, images, object masks and factor labels, row for row."""

    scenes: list[S.Scene]
    images: np.ndarray  # (N, 64, 64, 3) uint8, memory-mapped
    masks: np.ndarray  # (N, 64, 64) bool
    labels: np.ndarray  # (N, 6) int: index of each factor's value in FACTORS order, -1 for "no expression"

    @property
    def face_indices(self) -> np.ndarray:
        return np.flatnonzero(self.labels[:, list(S.FACTORS).index("kind")] == S.KINDS.index("face"))


def factor_indices(labels: dict[str, str | None]) -> list[int]:
    """Scene.labels() as indices into each factor's values (FACTORS order), -1 for a missing expression."""
    return [-1 if labels[name] is None else S.FACTORS[name].index(labels[name]) for name in S.FACTORS]


def prepare_data(run_dir: Path, n_scenes: int, seed: int) -> SceneData:
    """Render n_scenes random scenes into run_dir/data once; later calls (and resumed runs) load them."""
    data_dir = run_dir / "data"
    done = data_dir / "scenes.json"
    if not done.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        scenes = [S.sample_scene(rng) for _ in range(n_scenes)]
        images = np.lib.format.open_memmap(data_dir / "images.npy", "w+", np.uint8, (n_scenes, 64, 64, 3))
        masks = np.lib.format.open_memmap(data_dir / "masks.npy", "w+", bool, (n_scenes, 64, 64))
        for i, scene in enumerate(tqdm(scenes, desc="render scenes", mininterval=5)):
            images[i], masks[i] = S.render(scene)
        images.flush()
        masks.flush()
        del images, masks
        write_text_atomic(done, json.dumps([s.to_dict() for s in scenes]))  # written last: marks the data complete
    scenes = [S.Scene(**d) for d in json.loads(done.read_text())]
    labels = np.array([factor_indices(s.labels()) for s in scenes], dtype=np.int64)
    return SceneData(
        scenes=scenes,
        images=np.load(data_dir / "images.npy", mmap_mode="r"),
        masks=np.load(data_dir / "masks.npy", mmap_mode="r"),
        labels=labels,
    )


def eval_scenes(n: int, seed: int) -> tuple[list[S.Scene], np.ndarray]:
    """Held-out scenes (a seed the training data never uses) and their renders."""
    rng = np.random.default_rng(seed + 10_000)
    scenes = [S.sample_scene(rng) for _ in range(n)]
    images, _ = S.render_batch(scenes)
    return scenes, images


class CaptionEncoder:
    """Tokenizes captions the way StableDiffusionPipeline does (padded to model_max_length, no attention mask),
    caching token ids per caption: there are only a few thousand distinct toy captions."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(
                missing, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[c] for c in captions])  # (B, T)


def clip_caption(scene: S.Scene, rng: np.random.Generator) -> str:
    """CLIP's training captions say each attribute with probability 1/2: more specific than the UNet's, so the
    contrastive task has to read every attribute, while neutral and partial captions still occur."""
    mention = [name for name in S.CAPTION_ATTRIBUTES + ("rendering",) if rng.random() < 0.5]
    return S.caption(scene, mention)


def caption_pins(text: str) -> list[int]:
    """A caption as factor indices, -1 where it leaves the factor unsaid."""
    pinned = S.parse_caption(text)
    return [S.FACTORS[name].index(pinned[name]) if name in pinned else -1 for name in S.FACTORS]


def sample_indices(rng: np.random.Generator, data: SceneData, batch_size: int, face_fraction: float) -> np.ndarray:
    """Random training indices; with face_fraction > 0, that share of them drawn from the faces only."""
    idx = rng.integers(len(data.scenes), size=batch_size)
    if face_fraction > 0:
        faces = data.face_indices
        from_faces = rng.random(batch_size) < face_fraction
        idx[from_faces] = faces[rng.integers(len(faces), size=int(from_faces.sum()))]
    return idx

