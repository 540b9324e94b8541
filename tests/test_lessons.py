"""The course's map helpers on hand-made tables: what the notebooks show when the proxies are missing, or when
c0 already shows an attribute on every seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from disentkit import lessons

N = 10
KS = [0, 2, 4, 6, 8, N]


def _table(pairs=(0, 1), seeds=(0, 1, 2)) -> pd.DataFrame:
    """A map as run_map returns it: the style falls and the content is kept more as the switch step grows."""
    rows = []
    for p in pairs:
        for seed in seeds:
            for k in KS:
                style = 1.0 if k <= 4 else 0.0  # reached up to k = 4
                iou = min(1.0, 0.2 + 0.2 * k)  # kept (>= 0.8) from k = 4
                rows.append({"name": f"family{p}", "pair": p, "c0": "a photo of a circle", "c1": f"c1 {p}",
                             "seed": seed, "switch": k, "style": style, "iou": iou,
                             "clip_prob": 0.1 + 0.8 * style + 0.01 * seed,  # ordered as the style
                             "pixel": 0.5 * (1 - iou) + 0.001 * seed})  # fmt: skip
    return pd.DataFrame(rows)


def test_proxy_windows_without_a_clip_gives_the_columns_a_window_has():
    table = _table().drop(columns="clip_prob")  # a map made without a CLIP has the pixel proxy only
    found = lessons.proxy_windows(table)
    assert found.empty
    assert {"name", "pair", "start", "end", "best", "found"} <= set(found.columns)
    assert found[["name", "start", "end", "best"]].empty  # what notebook 03 shows


def test_proxy_agreement_finds_the_same_window_where_the_proxies_follow_the_truth():
    table = _table()
    win = pd.DataFrame({"family": ["family0", "family1"], "pair": [0, 1], "c0_shows": [[], []]})
    agree = lessons.proxy_agreement(table, win)
    assert agree["family"].tolist() == ["family0", "family1"]
    assert (agree["style_rho"] > 0.8).all() and (agree["content_rho"] > 0.8).all()
    assert (agree["truth"] == agree["proxies"]).all() and agree["match"].all()
    # the style is reached up to k = 4; the IoU is halfway from c1's (0.2) to c0's (1.0) at k = 2
    assert agree["truth"].iloc[0] == "2-4"


def test_proxy_agreement_leaves_out_a_family_whose_c0_shows_it_on_every_seed():
    table = _table()
    win = pd.DataFrame({"family": ["family0", "family1"], "pair": [0, 1], "c0_shows": [[], [0, 1, 2]]})
    agree = lessons.proxy_agreement(table, win)
    assert agree["family"].tolist() == ["family0"]
    assert agree["match"].dtype == bool and np.isfinite(agree["style_rho"]).all()
