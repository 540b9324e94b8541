"""Losses that judge an edit: plain callables ``loss(edited, reference) -> (R,)``, one value per image.

The paper (Wu et al., CVPR 2023) optimises ``L = L_dir + beta * L_perc``:

- :class:`DirectionalCLIPLoss`: ``1 - cos(E_img(x_edit) - E_img(x_orig), E_txt(c1) - E_txt(c0))``, i.e. the image
  moved in CLIP space the way the text moved (the directional loss of StyleGAN-NADA, Gal et al. 2022);
- :class:`CLIPPerceptualLoss`: how far the edited image is from the pure-c0 image in CLIP's vision features
  (several layers, unit-normalised per token, as LPIPS does with VGG features), so the content stays;
- :class:`LPIPSLoss`: the real LPIPS, only if the optional ``lpips`` package is installed.

A content term beyond the paper, :class:`CLIPStructureLoss`: the layout alone (which patches resemble which, as in
Splice), so that recolouring the object does not count as losing it.

And one style loss beyond the paper, :class:`CLIPPromptLoss`: the cross-entropy of CLIP's zero-shot choice of the
styled prompt among alternatives ("smiling" vs "neutral", "frowning"). It saturates once the style is there, so
the content term takes over; on toyworld it tracks the evaluator's judgement of the style far better than the
directional loss does (``benchmarks/optimize_report.py`` measures both).

Images are pixels ``(R, 3, H, W)`` in [0, 1] (what :func:`disentkit.sampling.decode` returns); the CLIP
preprocessing (resize, centre crop, mean/std) is done in torch so gradients flow back to the pixels. Every loss
network is loaded once by the caller and frozen: the optimiser learns the mixing weights only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import LossError, MissingDependencyError, ModelNotFoundError, OptionError
from .pipeline import resolve_device, toyworld_dir

# CLIP's published preprocessing statistics (used when a model folder has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OPENAI_CLIP = "openai/clip-vit-base-patch32"  # the CLIP the paper's reference code judges real SD images with

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (edited, reference) -> (R,)


# ---- the CLIP model ------------------------------------------------------------------------------------------
@dataclass
class Clip:
    """A frozen ``transformers.CLIPModel`` with its tokenizer and the image statistics it was trained with.

    Attributes:
        model: the CLIPModel (eval mode, ``requires_grad=False`` on every weight).
        tokenizer: its tokenizer.
        image_size: side of the square image the vision tower takes (e.g. 224).
        mean, std: per-channel normalisation of pixels in [0, 1].
        name: where it was loaded from.
    """

    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    name: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (R, 3, H, W) in [0, 1] -> CLIP input (R, 3, S, S), differentiable.

        Same recipe as CLIPImageProcessor: resize the short side to S, centre-crop S x S, normalise. torch's
        antialiased bicubic is PIL's bicubic kernel (the processor resizes with PIL); clamping to [0, 1] does what
        PIL's 8-bit output does to the kernel's overshoot (the gradient passes through as if unclamped). What is
        left is the processor's rounding to 8 bits: 0.001-0.004 apart on average (tested against CLIPImageProcessor).
        """
        size = self.image_size
        h, w = pixels.shape[-2:]
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        x = pixels.float()
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
            x = x + (x.clamp(0, 1) - x).detach()  # clamped values, the kernel's gradient (also at edges)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[..., top : top + size, left : left + size]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device, self.model.dtype)

    def image_forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Projected image embeddings (R, E) and the vision tower's hidden states (each (R, L, D))."""
        out = self.model.vision_model(pixel_values=self.preprocess(pixels), output_hidden_states=True)
        return self.model.visual_projection(out.pooler_output), tuple(out.hidden_states)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (R, E)."""
        return F.normalize(self.image_forward(pixels)[0].float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings (P, E)."""
        tok = self.tokenizer(list(texts), padding="max_length", truncation=True, return_tensors="pt")
        out = self.model.text_model(
            input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
        )
        return F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)


def default_clip(pipe=None) -> str:
    """The CLIP that judges ``pipe``'s images: the toy CLIP for the toyworld model, OpenAI's ViT-B/32 otherwise."""
    name = str(getattr(pipe, "name_or_path", "") or "")
    toy = toyworld_dir()
    if pipe is None or (name and Path(name).resolve().is_relative_to(toy)):
        return str(toy / "clip")
    return OPENAI_CLIP


def load_clip(path_or_id: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Clip:
    """Load any ``transformers.CLIPModel`` (a local folder or a hub id), frozen, on ``device``.

    ``None`` means the bundled toy CLIP (``toyworld_dir() / "clip"``). The image mean/std come from the folder's
    ``preprocessor_config.json`` when there is one, else CLIP's standard values.
    """
    from transformers import AutoTokenizer, CLIPModel  # imported here: transformers is slow to import

    from .pipeline import locate, quiet_loading

    name = os.fspath(path_or_id) if path_or_id is not None else str(toyworld_dir() / "clip")
    dev = resolve_device(device)
    # an uncached hub id fails at once when offline, instead of after the hub client's retries
    source = locate(name, what="CLIP", fix="pass clip=FOLDER (or --clip FOLDER), a folder with a CLIPModel")
    try:
        with quiet_loading():
            model = CLIPModel.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"cannot load a CLIP model (with its tokenizer) from {name!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Pass a folder written by CLIPModel.save_pretrained "
            f"plus tokenizer.save_pretrained, or a hub id available offline (e.g. {OPENAI_CLIP!r} once cached)."
        ) from err
    model.eval().requires_grad_(False).to(dev)
    mean, std = _image_stats(source)
    return Clip(model, tokenizer, int(model.config.vision_config.image_size), mean, std, name)


def _image_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The processor's image_mean/image_std if the model ships them (folder or hub cache), else CLIP's."""
    config = Path(name) / "preprocessor_config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "preprocessor_config.json")
            config = Path(cached) if isinstance(cached, str) else config
        except Exception:  # not a hub id, or no hub library: standard values are right for every OpenAI CLIP
            pass
    if config.is_file():
        data = json.loads(config.read_text())
        if "image_mean" in data and "image_std" in data:
            return tuple(map(float, data["image_mean"])), tuple(map(float, data["image_std"]))
    return CLIP_MEAN, CLIP_STD


# ---- the paper's two losses ----------------------------------------------------------------------------------
class DirectionalCLIPLoss:
    """``1 - cos(E_img(edited) - E_img(reference), E_txt(c1) - E_txt(c0))`` per image; 0 is a perfect direction.

    Embeddings are unit-normalised before taking differences (as in StyleGAN-NADA), so the loss measures the
    direction of the move on CLIP's sphere, not how long the embeddings are.
    """

    def __init__(self, clip: Clip, c0_text: str, c1_text: str):
        self.clip = clip
        self.prompts = [c0_text, c1_text]
        t0, t1 = clip.encode_texts([c0_text, c1_text])
        self.text_direction = (t1 - t0)[None]  # (1, E), computed once
        self._reference: tuple[torch.Tensor, torch.Tensor] | None = None

    def reference_embedding(self, reference: torch.Tensor) -> torch.Tensor:
        # The reference image is the same tensor at every iteration of an optimisation: embed it once.
        if self._reference is None or self._reference[0] is not reference:
            with torch.no_grad():
                self._reference = (reference, self.clip.encode_images(reference))
        return self._reference[1]

    def __call__(self, edited: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        image_direction = self.clip.encode_images(edited) - self.reference_embedding(reference)  # (R, E)
        return 1 - F.cosine_similarity(image_direction, self.text_direction, dim=-1, eps=1e-8)


class CLIPPerceptualLoss:
    """Perceptual distance from CLIP vision features: mean over ``layers`` of the mean squared distance between
    per-token unit-normalised hidden states (LPIPS's recipe with CLIP instead of VGG, and no learned weights).

    ``layers``: indices into the vision tower's hidden states (0 = patch embeddings); default: four layers spread
    from the first block to the last, so both low-level layout and higher-level parts count. 0 means identical.
    """

    def __init__(self, clip: Clip, layers: Sequence[int] | None = None):
        self.clip = clip
        n = clip.model.config.vision_config.num_hidden_layers  # hidden_states has n + 1 entries
        spread = sorted({max(1, round(n * f)) for f in (0.25, 0.5, 0.75, 1.0)})
        self.layers = list(layers) if layers is not None else spread
        self._reference: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.clip.image_forward(pixels)[1]
        return [F.normalize(hidden[k].float(), dim=-1) for k in self.layers]  # each (R, L, D)

    def __call__(self, edited: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if self._reference is None or self._reference[0] is not reference:
            with torch.no_grad():
                self._reference = (reference, self.features(reference))
        distances = [(a - b).pow(2).sum(-1).mean(-1) for a, b in zip(self.features(edited), self._reference[1])]
        return torch.stack(distances).mean(0)  # (R,)


class CLIPStructureLoss:
    """Layout distance that ignores appearance: do the same patches resemble each other in both images?

    Per layer, the cosine self-similarity matrix of the patch tokens (class token left out), ``(R, L, L)``; the
    loss is the mean squared difference between the edited and the reference matrices, averaged over ``layers``.
    Recolouring or texturing an object leaves "which patches belong together" nearly unchanged, while moving or
    reshaping the object changes it, so this term keeps the content without fighting a local style the way a
    feature distance such as :class:`CLIPPerceptualLoss` does. Whole-image styles (a night background, a sketch)
    change it as much as they change L_perc (``benchmarks/optimize_report.py --parts contents`` measures both). The idea is Splice's
    structure loss (Tumanyan et al., CVPR 2022: self-similarity of DINO-ViT keys); here with any CLIP vision tower.
    ``layers`` default: every block's output. 0 means the same layout.
    """

    def __init__(self, clip: Clip, layers: Sequence[int] | None = None):
        self.clip = clip
        if layers is None:
            layers = range(1, clip.model.config.vision_config.num_hidden_layers + 1)
        self.layers = list(layers)
        self._reference: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def similarities(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.clip.image_forward(pixels)[1]
        tokens = [F.normalize(hidden[k][:, 1:].float(), dim=-1) for k in self.layers]  # patches only: (R, L, D)
        return [t @ t.transpose(1, 2) for t in tokens]  # each (R, L, L), cosines in [-1, 1]

    def __call__(self, edited: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if self._reference is None or self._reference[0] is not reference:
            with torch.no_grad():
                self._reference = (reference, self.similarities(reference))
        distances = [(a - b).pow(2).flatten(1).mean(1) for a, b in zip(self.similarities(edited), self._reference[1])]
        return torch.stack(distances).mean(0)  # (R,)


class LPIPSLoss:
    """LPIPS (Zhang et al. 2018) from the optional ``lpips`` package; its VGG/AlexNet weights must be available
    (``lpips`` fetches them through torchvision). Pixels in [0, 1], one distance per image."""

    def __init__(self, net: str = "alex", device: str | torch.device = "cpu"):
        try:
            import lpips  # noqa: PLC0415  (optional dependency)
        except ImportError as err:
            raise MissingDependencyError(
                "LPIPSLoss needs the optional `lpips` package (pip install lpips, which needs torchvision); "
                "without it use CLIPPerceptualLoss, the default perceptual term."
            ) from err
        self.net = lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False).to(device)
        self.backbone = net

    def __call__(self, edited: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return self.net(edited * 2 - 1, reference * 2 - 1).flatten()  # lpips takes [-1, 1]


class CLIPPromptLoss:
    """``-log p(c1 | edited)``, where p is CLIP's zero-shot softmax over ``[c1_text, *alternatives]``.

    ``alternatives`` are the prompts the edit should *not* match: by default the neutral prompt c0; better, the
    other values of the attribute (for "a photo of a face, smiling": "..., neutral" and "..., frowning"). Logits are
    scaled by the model's own ``logit_scale``, as in CLIP's zero-shot classifier. The reference image is not used:
    this loss judges the style only, so pair it with a content loss. 0 means CLIP is certain of c1.
    """

    def __init__(self, clip: Clip, c1_text: str, alternatives: Sequence[str]):
        alternatives = [a for a in alternatives if a != c1_text]
        if not alternatives:
            raise LossError("CLIPPromptLoss needs at least one alternative prompt different from c1 (e.g. c0).")
        self.clip = clip
        self.prompts = [c1_text, *alternatives]
        self.texts = clip.encode_texts(self.prompts)  # (P, E), computed once; row 0 is the target
        self.scale = float(clip.model.logit_scale.exp())

    def __call__(self, edited: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.scale * self.clip.encode_images(edited) @ self.texts.T  # (R, P)
        return -F.log_softmax(logits, dim=-1)[:, 0]


class Hinge:
    """``max(0, loss - floor)``: silent while ``loss <= floor``, a penalty beyond it (a soft constraint).

    ``floor`` is a number or one value per image (R,), e.g. the content loss of the schedule an optimisation starts
    from: weighted strongly, "no image may lose content compared with the start".
    """

    def __init__(self, loss: Loss, floor: float | torch.Tensor):
        self.loss, self.floor = loss, floor

    def __call__(self, edited: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        values = self.loss(edited, reference)
        floor = torch.as_tensor(self.floor, dtype=values.dtype, device=values.device)
        return (values - floor).clamp_min(0)


def describe_loss(fn) -> str:
    """What a loss term is, in one line: its kind, the CLIP it uses (by where it was loaded from), its prompts and
    layers. Saved with a learned schedule, and compared when an optimisation resumes, so that a checkpoint made
    with a CLIP from another place or with other prompts is not resumed as if it were this one. It names, it does
    not fingerprint: other weights saved in the same folder, or two different lambdas, read the same. Floors
    describe the term they guard (their values are the start's, which the checkpoint's other settings pin down)."""
    if isinstance(fn, Hinge):
        return f"Hinge({describe_loss(fn.loss)})"
    kind = getattr(fn, "__qualname__", None) or type(fn).__qualname__  # a function's name, or an object's class
    details = []
    clip = getattr(fn, "clip", None)
    if isinstance(clip, Clip):  # by where it was loaded from: a folder by its absolute path, toyworld's by name
        path = Path(clip.name).expanduser()
        where = clip.name  # a hub id, or a name such as tiny-clip-0
        if path.exists():
            where = "toyworld" if path.resolve().is_relative_to(toyworld_dir()) else str(path.resolve())
        details.append(f"clip={where}")
    for attr in ("prompts", "layers", "backbone"):
        value = getattr(fn, attr, None)
        if isinstance(value, (list, tuple, str)):
            details.append(f"{attr}={value if isinstance(value, str) else list(value)}")
    return f"{kind}({', '.join(details)})"


def with_floors(
    terms: dict[str, tuple[float, Loss]], start: torch.Tensor, reference: torch.Tensor, weight: float = 10.0
) -> dict[str, tuple[float, Loss]]:
    """``terms`` plus, for each term, ``weight x its weight x Hinge(term, its value on start)`` named
    ``"<name>_floor"``: the optimiser still lowers the weighted sum, and an image that ends up worse than its
    ``start`` image on any one term is penalised for it (one floor per image, so the edit is discouraged from
    trading one seed's style for another seed's content). A soft constraint: a large enough gain elsewhere can
    still outweigh it. ``start`` (R, 3, H, W) are the images of the schedule the optimisation starts from and
    ``reference`` the pure-c0 images, both in [0, 1]. Floors are silent at the start, so the first step follows the
    plain sum. ``optimize(..., floors=W)`` does this for you with its own rendering of the start."""
    if start.shape != reference.shape:
        raise LossError(f"start {tuple(start.shape)} and reference {tuple(reference.shape)} must match: one start "
                         "image per reference image (the same seeds, in the same order).")  # fmt: skip
    floors = {}
    with torch.no_grad():
        for name, (w, loss) in terms.items():
            if f"{name}_floor" in terms:
                raise LossError(f"terms already hold {name}_floor; give floors to terms without them.")
            floors[f"{name}_floor"] = (float(weight) * float(w), Hinge(loss, loss(start, reference).detach()))
    return {**terms, **floors}


def paper_losses(
    clip: Clip, c0_text: str, c1_text: str, beta: float = 0.05, perceptual: str | Loss = "clip"
) -> dict[str, tuple[float, Loss]]:
    """The paper's objective as named, weighted terms: ``{"dir": (1, L_dir), "perc": (beta, L_perc)}``.

    ``perceptual``: ``"clip"`` (:class:`CLIPPerceptualLoss`, offline, the default), ``"lpips"``
    (:class:`LPIPSLoss` with AlexNet, as the paper's code uses; needs the ``lpips`` package and its weights) or
    your own ``fn(edited, reference) -> (R,)``. Never picked by what happens to be installed, so the same call
    gives the same objective everywhere."""
    if callable(perceptual):
        content = perceptual
    elif perceptual == "clip":
        content = CLIPPerceptualLoss(clip)
    elif perceptual == "lpips":
        content = LPIPSLoss("alex", next(clip.model.parameters()).device)
    else:
        raise OptionError(f"perceptual is 'clip', 'lpips' or a loss fn(edited, reference), not {perceptual!r}.")
    return {"dir": (1.0, DirectionalCLIPLoss(clip, c0_text, c1_text)), "perc": (float(beta), content)}


def prompt_losses(
    clip: Clip,
    c0_text: str,
    c1_text: str,
    alternatives: Sequence[str] | None = None,
    beta: float = 2.0,
    enough: float | None = None,
    content: str = "perc",
) -> dict[str, tuple[float, Loss]]:
    """``{"prompt": (1, L_prompt), "perc": (beta, L_perc)}``: :class:`CLIPPromptLoss` (alternatives default to
    ``[c0_text]``) with the perceptual content loss. The prompt loss is near 0 once the style is reached, so the
    content term needs a larger weight than in the paper's objective (2 rather than 0.05) to be heard.

    ``enough``: a probability at which the style counts as reached (e.g. 0.9): the prompt term becomes
    ``Hinge(L_prompt, -log enough)`` and stops pushing once CLIP is that sure, so the content term alone acts.

    ``content``: ``"perc"`` (:class:`CLIPPerceptualLoss`, the paper's kind of content term) or ``"struct"``
    (:class:`CLIPStructureLoss`: the layout only, blind to colour and texture); the term keeps its name."""
    alternatives = list(alternatives) if alternatives is not None else [c0_text]
    prompt: Loss = CLIPPromptLoss(clip, c1_text, alternatives)
    if enough is not None:
        if not 0 < enough < 1:
            raise OptionError(f"enough is a probability in (0, 1), got {enough}.")
        prompt = Hinge(prompt, -math.log(enough))
    contents = {"perc": CLIPPerceptualLoss, "struct": CLIPStructureLoss}
    if content not in contents:
        raise OptionError(f"content is 'perc' or 'struct', not {content!r}.")
    return {"prompt": (1.0, prompt), content: (float(beta), contents[content](clip))}


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image of pixels in [0, 1] (R, 3, H, W); inf for identical images."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


# ---- a miniature CLIP, for tests and offline demos -------------------------------------------------------------
def tiny_clip(seed: int = 0, image_size: int = 32, device: str | torch.device = "cpu") -> Clip:
    """A random-weight CLIP (2-layer text and vision towers, 32 px images) with a character-level tokenizer.

    Nothing is downloaded; the weights are fixed by ``seed``. Its judgements are meaningless but differentiable,
    which is all the tests of the optimiser need.
    """
    import tempfile

    from transformers import CLIPConfig, CLIPModel

    from .testing import build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp)
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **sizes,
        ),
        vision_config=dict(image_size=image_size, patch_size=8, **sizes),
        projection_dim=16,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.eval().requires_grad_(False).to(resolve_device(device))
    return Clip(model, tokenizer, image_size, name=f"tiny-clip-{seed}")


def save_tiny_clip(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write :func:`tiny_clip` (model, tokenizer) into ``folder`` so :func:`load_clip` can read it back."""
    clip = tiny_clip(seed)
    folder = Path(folder)
    clip.model.save_pretrained(folder)
    clip.tokenizer.save_pretrained(folder)
    return folder
