"""The course tells the truth: every notebook, at its default parameters on the bundled toyworld model, checks the
claims its text rests on, and every one of them holds.

This is the course's regression test. Each notebook records its claims in ``out_dir/claims.json`` (``ctx.expect``:
expected / seen / holds); the test runs the whole course the way ``python -m disentkit.notebooks`` does (two
kernels at a time) and fails naming every notebook and claim that did not hold. When the bundled model changes
and a claim stops holding, the text around that claim is what to reread and rewrite: never the threshold alone.
"""

from __future__ import annotations

import pytest

from disentkit import notebooks as runner
from disentkit.claims import FAILS, HOLDS
from disentkit.pipeline import toyworld_dir

HAVE_TOYWORLD = (toyworld_dir() / "pipeline" / "model_index.json").is_file()
HAVE_EVALUATOR = (toyworld_dir() / "evaluator" / "model.safetensors").is_file()
MIN_CLAIMS = 3  # each notebook checks at least this many statements about its lesson

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (HAVE_TOYWORLD and HAVE_EVALUATOR), reason="needs the bundled toyworld model and evaluator"),
]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    return runner.run_all(out, {}, html=False, jobs=2)


def test_every_notebook_runs_at_its_defaults(course):
    failed = [f"{r.name}: {r.error}" for r in course if not r.ok]
    assert not failed, "notebooks failed at their default parameters:\n" + "\n".join(failed)
    assert [r.name for r in course] == [p.stem for p in runner.find_notebooks()]


def test_every_notebook_checks_its_lesson(course):
    few = [f"{r.name}: {0 if r.claims is None else len(r.claims)} claims" for r in course
           if r.claims is None or len(r.claims) < MIN_CLAIMS]  # fmt: skip
    assert not few, f"each notebook should check at least {MIN_CLAIMS} claims:\n" + "\n".join(few)
    # on toyworld the evaluator is there, so every claim is judged
    unjudged = [f"{r.name}: {c.expected}" for r in course if r.claims is not None
                for c in r.claims.itertuples() if c.status not in (HOLDS, FAILS)]  # fmt: skip
    assert not unjudged, "claims not judged on toyworld:\n" + "\n".join(unjudged)


def test_every_claim_holds(course):
    wrong = [line for r in course for line in r.claims_failed]
    assert not wrong, (
        f"{len(wrong)} claims of the course do not hold at the default parameters on the bundled model; reread "
        "the text around each (the notebook's executed copy shows it beside its figures):\n" + "\n".join(wrong)
    )
