"""The offline slice describer: indicators, counts, log-odds, Fisher's test and the ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact

from spatialspec.audit.describe import (
    describe_slice,
    describe_slices,
    description_text,
    enrichment,
    indicator_table,
)


def hand_table() -> tuple[pd.DataFrame, np.ndarray]:
    """36 images, the first 12 a slice: all mention the tube (half a drain too), none "normal"."""
    slice_reports = ["Chest tube, drain."] * 2 + ["Chest tube."] * 2
    rest_reports = ["Normal heart."] * 7 + ["Chest tube. Normal."]
    frame = pd.DataFrame(
        {
            "report": (slice_reports + rest_reports) * 3,
            "view": (["AP"] * 4 + ["AP"] * 2 + ["PA"] * 5 + [None]) * 3,
            "age": np.arange(36, dtype=float),
        }
    )
    members = np.tile(np.r_[np.ones(4, bool), np.zeros(8, bool)], 3)
    return frame, members


def test_indicators_of_tokens_and_metadata_values() -> None:
    frame, _ = hand_table()
    ind = indicator_table(frame, "report", ["view", "age"], min_count=3)
    names = dict(zip(ind.names, np.asarray(ind.matrix.sum(axis=0)).ravel(), strict=True))
    assert names["chest tube"] == 15 and names["tube drain"] == 6  # merged: same images
    aliases = dict(zip(ind.names, ind.aliases, strict=True))
    assert aliases["chest tube"] == ["chest", "tube"] and aliases["tube drain"] == ["drain"]
    assert names["normal"] == 24 and names["normal heart"] == 21 and "heart" not in names
    assert names["view=AP"] == 18 and names["view=PA"] == 15 and names["view=(missing)"] == 3
    ages = [n for n in ind.names if n.startswith("age in")]
    assert ages == [
        "age in [0, 8.75)",
        "age in [8.75, 17.5)",
        "age in [17.5, 26.25)",
        "age in [26.25, 35]",
    ]
    assert all(names[a] == 9 for a in ages)  # quartiles of 0..35
    assert set(ind.kinds) == {"token", "metadata"} and ind.matrix.shape == (36, len(ind.names))


def test_enrichment_counts_log_odds_and_fisher_by_hand() -> None:
    frame, members = hand_table()
    ind = indicator_table(frame, "report", ["view"], min_count=3)
    stats = enrichment(ind, members, prior=0.5)
    j = ind.names.index("chest tube")
    a, b, n1, n0 = 12, 3, 12, 24
    assert (stats["in_slice"][j], stats["rest"][j]) == (a, b)
    assert (stats["slice_size"], stats["rest_size"]) == (n1, n0)
    lor = np.log((a + 0.5) / (n1 - a + 0.5)) - np.log((b + 0.5) / (n0 - b + 0.5))
    se = np.sqrt(1 / (a + 0.5) + 1 / (n1 - a + 0.5) + 1 / (b + 0.5) + 1 / (n0 - b + 0.5))
    assert stats["log_odds"][j] == pytest.approx(lor) and stats["z"][j] == pytest.approx(lor / se)
    table = [[a, n1 - a], [b, n0 - b]]
    assert stats["p_enriched"][j] == pytest.approx(fisher_exact(table, "greater")[1])
    assert stats["p_depleted"][j] == pytest.approx(fisher_exact(table, "less")[1])


def test_describe_slice_ranks_enriched_and_depleted() -> None:
    frame, members = hand_table()
    ind = indicator_table(frame, "report", ["view"], min_count=3)
    out = describe_slice(ind, members, top=3, min_count=3)
    enriched = [r["feature"] for r in out["enriched"]]
    assert enriched[0] == "chest tube"  # 12/12 vs 3/24 (also "chest" and "tube" alone)
    assert out["enriched"][0]["same_images_as"] == ["chest", "tube"]
    lower = [r["log_odds_95"][0] for r in out["enriched"]]  # ranked by the interval's lower end
    assert lower == sorted(lower, reverse=True)
    stats = enrichment(ind, members)
    assert max(stats["log_odds"] - 1.959964 * stats["se"]) == pytest.approx(lower[0])
    depleted = [r["feature"] for r in out["depleted"]]
    assert depleted[0] == "normal"  # 0/12 vs 24/24
    row = out["depleted"][0]
    assert (row["in_slice"], row["slice_size"], row["rest"], row["rest_size"]) == (0, 12, 24, 24)
    assert row["share_in_rest"] == 1.0 and row["p_value"] < 0.05 / ind.n_features
    # view=AP: 12/12 vs 6/24, enriched but below the tube phrase (12/12 vs 3/24)
    assert out["n"] == 12
    full = describe_slice(ind, members, top=50, min_count=3)
    assert "view=AP" in [r["feature"] for r in full["enriched"]]
    assert "tube drain" in [r["feature"] for r in full["enriched"]]  # 6/12 vs 0/24
    # a rare token below min_count in the slice is not listed
    strict = describe_slice(ind, members, top=50, min_count=7)
    assert "tube drain" not in [r["feature"] for r in strict["enriched"]]


def test_describe_slices_and_the_text() -> None:
    frame, members = hand_table()
    ind = indicator_table(frame, "report", ["view"], min_count=3)
    out = describe_slices(ind, np.where(members, 0, 1), names=[7, 2])
    assert set(out) == {"7", "2"} and out["7"]["n"] == 12 and out["2"]["n"] == 24
    assert out["2"]["enriched"][0]["feature"] == "normal"  # the rest's view of the same table
    text = description_text(out["7"], top=1)
    assert text.startswith("more: *") and "12/12 (100 %) vs 3/24 (12 %)" in text
    assert "less: *normal* 0/12 (0 %) vs 24/24 (100 %)" in text
    assert description_text(None) == "–"
    assert describe_slice(ind, np.ones(36, bool))["enriched"] == []  # no rest: nothing to say


def test_within_label_descriptions_leave_the_label_out() -> None:
    # 20 positives ("pneumothorax", half with a tube), 20 negatives ("clear"); the slice is
    # 8 negatives, 6 with a tube (1 of the 12 other negatives has one)
    reports = [f"pneumothorax{' tube' if i % 2 else ''}" for i in range(20)]
    reports += [f"clear{' tube' if i < 6 or i == 10 else ''}" for i in range(20)]
    labels = np.r_[np.ones(20, int), np.zeros(20, int)]
    assign = np.r_[np.ones(20, int), np.zeros(8, int), np.ones(12, int)]
    ind = indicator_table(pd.DataFrame({"report": reports}), "report", min_count=3)
    against_all = describe_slices(ind, assign, labels=None, min_count=3, alpha=1.0)["0"]
    assert "clear" in [r["feature"] for r in against_all["enriched"]]  # the label's own word
    within = describe_slices(ind, assign, labels=labels, min_count=3, alpha=1.0)["0"]
    assert within["label"] == 0 and (within["n"], within["n_reference"]) == (8, 12)
    assert [r["feature"] for r in within["enriched"]] == ["clear tube", "tube"]  # tie: by name
    row = within["enriched"][0]
    assert (row["in_slice"], row["slice_size"], row["rest"], row["rest_size"]) == (6, 8, 1, 12)
    assert description_text(within).startswith("[label 0] more: *clear tube* 6/8 (75 %) vs 1/12")
