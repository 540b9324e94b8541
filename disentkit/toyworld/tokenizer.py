"""A real CLIP tokenizer for the toy vocabulary.

The files are the ones OpenAI's CLIP ships (vocab.json + merges.txt, byte-level BPE with `</w>` marking a word's
end), only tiny: every single byte (so any text still tokenizes, character by character), plus BPE merges that
assemble each toy word into one token. `transformers.CLIPTokenizer` reads them like any CLIP tokenizer, so the
toy pipeline loads and runs through the same code as Stable Diffusion.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

from . import scenes

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Long enough for the longest toy caption ("a sketch of a face, yellow, striped, smiling, in the snow" is 15
# tokens + BOS + EOS) with a little room; short so the text encoder and cross-attention stay cheap.
MODEL_MAX_LENGTH = 20


def toy_words() -> list[str]:
    """Every word a toy caption can use, in a stable order; "," is its own token through the single bytes."""
    words = ["a", "photo", "sketch", "of"]
    for values in (scenes.KINDS, scenes.COLORS, scenes.TEXTURES, scenes.EXPRESSIONS):
        words += list(values)
    for phrase in scenes.BACKGROUND_PHRASES.values():
        words += phrase.split()
    return list(dict.fromkeys(words))  # drop repeats ("a"), keep order


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters (byte-level BPE's alphabet):
    printable latin-1 bytes map to themselves, the rest to characters from 256 upwards."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges the way CLIP does: repeatedly merge the adjacent pair with the best (lowest) rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get(p, float("inf")), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges that turn each word into one token.

    Merges are global: one made for "red" ("r"+"e") also fires inside "green" and can strand it as "g re e n".
    So each word is first run through the merges made so far, and new merges join whatever pieces that leaves,
    left to right. The new merges rank below all older ones, so they never change how an earlier word splits.
    """
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            ranks[(left, right)] = len(merges)
            merges.append((left, right))
            left = left + right
            if left not in tokens:
                tokens.append(left)
    for word in words:
        assert _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks) == [word + "</w>"], word
    tokens += [BOS, EOS]  # EOS has the highest id, as in OpenAI's CLIP
    return {token: i for i, token in enumerate(tokens)}, merges


def build_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """Write the toy CLIP tokenizer's files into `folder` (vocab.json, merges.txt and the transformers files) and
    return it loaded from there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges(toy_words())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2 toyworld"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=MODEL_MAX_LENGTH
    )
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)
