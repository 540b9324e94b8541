"""Checked claims: a notebook says what it expects, computes what it sees, and records whether it held.

The course's markdown explains *why*; every statement that counts, compares, names a step or a trend is made by a
code cell through :meth:`Claims.expect`, which prints

    expected: the circle keeps its place (mask IoU >= 0.8) / seen: IoU 0.91 (holds)

and appends the claim to ``out_dir/claims.json`` (rewritten atomically after every claim). A claim that needs ground
truth the run does not have (the toyworld evaluator on another model) is recorded as *not judged*, with the reason,
instead of being silently skipped or asserted. ``tests/test_course_claims.py`` runs the course and fails on every
claim that does not hold, naming the notebook and the claim.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .files import write_json_atomic

HOLDS, FAILS, NOT_JUDGED = "holds", "does not hold here", "not judged"
CLAIMS_FILE = "claims.json"


@dataclass
class Claim:
    """One checked statement of a notebook: what was expected, what was seen, and the verdict."""

    notebook: str
    expected: str
    seen: str
    status: str  # HOLDS, FAILS or NOT_JUDGED
    why: str = ""  # for NOT_JUDGED: what was missing

    @property
    def holds(self) -> bool | None:
        return None if self.status == NOT_JUDGED else self.status == HOLDS

    def __str__(self) -> str:
        verdict = f"{self.status}: {self.why}" if self.status == NOT_JUDGED and self.why else self.status
        return f"expected: {self.expected} / seen: {self.seen} ({verdict})"


class Claims:
    """The claims one notebook makes; ``path`` (``out_dir/claims.json``) is rewritten after each one."""

    def __init__(self, notebook: str, path: str | os.PathLike | None = None, echo: bool = True):
        self.notebook = notebook
        self.path = Path(path) if path is not None else None
        self.echo = echo
        self.items: list[Claim] = []

    def expect(self, expected: str, seen: str, holds: bool | None, why: str = "") -> Claim:
        """Record a claim. ``holds`` is the computed verdict; ``None`` means it could not be judged here (say
        ``why``, e.g. "needs the toyworld evaluator"). Returns the claim (``claim.holds``)."""
        status = NOT_JUDGED if holds is None else (HOLDS if bool(holds) else FAILS)
        claim = Claim(self.notebook, str(expected), str(seen), status, why if holds is None else "")
        self.items.append(claim)
        if self.path is not None:
            write_json_atomic(self.path, {"notebook": self.notebook, "claims": [asdict(c) for c in self.items]})
        if self.echo:
            print(claim)
        return claim

    def frame(self) -> pd.DataFrame:
        """The claims so far, one row each."""
        return pd.DataFrame([asdict(c) for c in self.items], columns=["notebook", "expected", "seen", "status", "why"])


def load_claims(folder: str | os.PathLike) -> pd.DataFrame:
    """Every ``claims.json`` under ``folder`` (one per executed notebook), one row per claim."""
    import json

    rows = []
    for path in sorted(Path(folder).rglob(CLAIMS_FILE)):
        data = json.loads(path.read_text())
        rows += [{**c, "notebook": c.get("notebook", data.get("notebook", path.parent.name))} for c in data["claims"]]
    return pd.DataFrame(rows, columns=["notebook", "expected", "seen", "status", "why"])


def failures(claims: pd.DataFrame) -> list[str]:
    """One line per claim that did not hold: "NOTEBOOK: expected ... / seen ..."."""
    bad = claims[claims["status"] == FAILS]
    return [f"{r.notebook}: expected {r.expected} / seen {r.seen}" for r in bad.itertuples()]


def fmt(values: Sequence[float], digits: int = 2) -> str:
    """A short list of numbers for a claim's "seen" part: [0.91, 0.88] -> "0.91, 0.88"."""
    return ", ".join(f"{float(v):.{digits}f}" for v in values)
