"""Offline slice describer: the report tokens and metadata values a slice has more (or less) of.

Domino names a slice by the CLIP text embedding closest to it; offline, with the manifest's
report text and metadata, we count instead. Every image gets binary *indicators*: each word
unigram and bigram of its report (lowercased, the text modality's tokeniser, English stop words
but negations left out: "no pneumothorax" stays) and each metadata
value (a categorical column's value, or a numeric column's quartile bin on the described split,
missing as ``(missing)``). Only indicators present in at least ``min_count`` images are kept,
and indicators present in exactly the same images are merged (named by the longest, the others
kept as ``same_images_as``: a templated phrase is one feature, not five).

For a slice S of n1 images, compared with n0 reference images, and an indicator present in a
images of S and b of the reference:

- **log-odds ratio with a prior** ``α`` (a pseudo-count in each cell, 0.5 by default,
  Haldane–Anscombe): ``log((a+α)/(n1-a+α)) - log((b+α)/(n0-b+α))``, with its standard error
  ``sqrt(Σ 1/(cell+α))`` and z = log-odds / SE;
- **Fisher's exact test**, one-sided (scipy's hypergeometric tail: P(X >= a) for enrichment,
  P(X <= a) for depletion), Bonferroni-corrected over the indicators.

A slice's description lists the ``top`` indicators among those enriched (a >= min_count,
corrected p < ``alpha``) by the lower end of the log-odds ratio's 95 % interval
(``log-odds - 1.96 SE``: the smallest effect the counts support), and among those depleted
(b >= min_count, corrected p < ``alpha``) by the upper end, each with its counts. (The log-odds
ratio alone favours rare features, 5 of 100 vs 0 of 700; its z favours frequent ones with a
small effect.)

**Against what.** The error-aware mixture makes slices pure in the label, so against every
other image a slice's description is mostly its label ("pneumothorax" in a slice of positives).
With labels (:func:`describe_slices`, the audit's default) a slice is described *within its
majority label*: its images of that label against the other images of that label, which
lists what sets the slice apart beyond its label (on the synthetic benchmark: the tube).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import hypergeom
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from spatialspec.audit.modalities import MISSING
from spatialspec.audit.text_features import TOKEN_PATTERN, texts_of

__all__ = [
    "Indicators",
    "SliceDescriber",
    "describe_slice",
    "describe_slices",
    "description_text",
    "enrichment",
    "indicator_table",
]

#: Words left out of the descriptions: sklearn's English stop words except negations.
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS) - {"no", "not", "nor", "none", "without", "never"}
#: The 97.5 % quantile of the standard normal (a two-sided 95 % interval).
Z95 = 1.959963984540054


@dataclass
class Indicators:
    """Binary features of N images.

    Attributes:
        matrix: (N, F) sparse 0/1 matrix.
        names: F feature names (``"tube"``, ``"chest tube"``, ``"view=AP"``, ``"age in [41, 55)"``).
        kinds: F kinds, ``"token"`` or ``"metadata"``.
        aliases: F lists of the other names of features present in exactly the same images
            (merged into one: ``"projects over"`` for ``"projects"``, ``"over the"``, ...).
    """

    matrix: sparse.csr_matrix
    names: list[str]
    kinds: list[str]
    aliases: list[list[str]] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        return len(self.names)


def _token_indicators(texts: list[str], min_count: int) -> tuple[sparse.csr_matrix, list[str]]:
    """(N, V) presence of each unigram/bigram occurring in >= min_count texts."""
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(
        binary=True,
        lowercase=True,
        token_pattern=TOKEN_PATTERN,
        ngram_range=(1, 2),
        min_df=max(1, min_count),
        stop_words=sorted(STOP_WORDS),
    )
    try:
        x = vec.fit_transform(texts)
    except ValueError:  # empty vocabulary: no term is frequent enough
        return sparse.csr_matrix((len(texts), 0)), []
    return x.tocsr(), list(vec.get_feature_names_out())


def _metadata_values(values: pd.Series, col: str, n_bins: int) -> pd.Categorical:
    """Each row's value label: ``col=value``, ``col in [lo, hi)`` or ``col=(missing)``.

    A numeric column is cut at its quantiles (bins in increasing order); others keep their
    values (sorted).
    """
    blank = (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()
    missing = f"{col}={MISSING}"
    numbers = pd.to_numeric(values.where(~blank), errors="coerce").to_numpy(float)
    if not blank.all() and np.isfinite(numbers[~blank]).all():
        edges = np.unique(np.quantile(numbers[~blank], np.linspace(0, 1, n_bins + 1)))
        if len(edges) > 2:
            names = [f"{col} in [{lo:g}, {hi:g})" for lo, hi in pairwise(edges[:-1])]
            names.append(f"{col} in [{edges[-2]:g}, {edges[-1]:g}]")
            bins = np.searchsorted(edges, np.nan_to_num(numbers), side="right") - 1
            idx = np.clip(bins, 0, len(names) - 1)
            labels = np.where(blank, missing, np.asarray(names, dtype=object)[idx])
            return pd.Categorical(labels, categories=[*names, missing])
    labels = [missing if b else f"{col}={v}" for b, v in zip(blank, values, strict=True)]
    return pd.Categorical(labels, categories=sorted(set(labels)))


def indicator_table(
    frame: pd.DataFrame,
    text_column: str | None = None,
    metadata_columns: Sequence[str] = (),
    *,
    min_count: int = 5,
    n_bins: int = 4,
) -> Indicators:
    """Binary indicators of the report tokens and metadata values of ``frame``'s rows.

    Args:
        frame: Manifest rows (one per image, in the order the slices are given).
        text_column: Free-text column (None or absent: no tokens).
        metadata_columns: Metadata columns (absent ones are skipped).
        min_count: Keep indicators present in at least this many rows.
        n_bins: Quantile bins of a numeric column.
    """
    mats, names, kinds = [], [], []
    if text_column and text_column in frame.columns:
        tokens, vocab = _token_indicators(texts_of(frame, text_column)[0], min_count)
        mats.append(tokens)
        names += vocab
        kinds += ["token"] * len(vocab)
    for col in metadata_columns:
        if col not in frame.columns:
            continue
        dummies = pd.get_dummies(_metadata_values(frame[col], col, n_bins))
        dummies = dummies.loc[:, dummies.sum(axis=0) >= min_count]
        mats.append(sparse.csr_matrix(dummies.to_numpy(dtype=float)))
        names += [str(c) for c in dummies.columns]
        kinds += ["metadata"] * dummies.shape[1]
    matrix = sparse.hstack(mats).tocsr() if mats else sparse.csr_matrix((len(frame), 0))
    return _merge_identical(Indicators(matrix, names, kinds))


def _merge_identical(ind: Indicators) -> Indicators:
    """One feature per distinct set of images, named by its longest name (the others: aliases)."""
    columns = ind.matrix.tocsc()
    groups: dict[bytes, list[int]] = {}
    for j in range(columns.shape[1]):
        rows = columns.indices[columns.indptr[j] : columns.indptr[j + 1]]
        groups.setdefault(np.sort(rows).tobytes(), []).append(j)
    keep, aliases = [], []
    for members in groups.values():
        best = max(members, key=lambda j: (ind.kinds[j] == "metadata", len(ind.names[j]), -j))
        keep.append(best)
        aliases.append(sorted(ind.names[j] for j in members if j != best))
    order = np.argsort(keep, kind="stable")
    keep = [keep[i] for i in order]
    return Indicators(
        columns[:, keep].tocsr(),
        [ind.names[j] for j in keep],
        [ind.kinds[j] for j in keep],
        [aliases[i] for i in order],
    )


def enrichment(
    indicators: Indicators,
    members: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    prior: float = 0.5,
) -> dict[str, np.ndarray]:
    """Per indicator: counts, log-odds ratio (slice vs rest), its z and one-sided Fisher p-values.

    Args:
        indicators: (N, F) indicators.
        members: (N,) bool, in the slice.
        reference: (N,) bool, the images the slice is compared with (default: all others;
            images in neither are left out).
        prior: Pseudo-count α added to each cell of the 2 × 2 table.

    Returns:
        ``in_slice`` (a), ``rest`` (b), ``slice_size`` (n1), ``rest_size`` (n0), ``log_odds``,
        ``se``, ``z``, ``p_enriched`` = P(X >= a) and ``p_depleted`` = P(X <= a) under the
        hypergeometric null (Fisher's exact test), each (F,) (sizes: scalars).
    """
    members = np.asarray(members, bool)
    rest = ~members if reference is None else np.asarray(reference, bool) & ~members
    x = indicators.matrix
    n1, n0 = int(members.sum()), int(rest.sum())
    n = n1 + n0
    a = np.asarray(x[members].sum(axis=0)).ravel() if n1 else np.zeros(x.shape[1])
    b = np.asarray(x[rest].sum(axis=0)).ravel() if n0 else np.zeros(x.shape[1])
    total = a + b
    cells = np.stack([a, n1 - a, b, n0 - b]) + prior  # (4, F)
    log_odds = np.log(cells[0] / cells[1]) - np.log(cells[2] / cells[3])
    se = np.sqrt((1.0 / cells).sum(axis=0))
    return {
        "in_slice": a.astype(int),
        "rest": b.astype(int),
        "slice_size": n1,
        "rest_size": n0,
        "log_odds": log_odds,
        "se": se,
        "z": log_odds / se,
        "p_enriched": hypergeom.sf(a - 1, n, total, n1),
        "p_depleted": hypergeom.cdf(a, n, total, n1),
    }


def _row(indicators: Indicators, stats: dict[str, Any], j: int, p: float) -> dict[str, Any]:
    n1, n0 = stats["slice_size"], stats["rest_size"]
    a, b = int(stats["in_slice"][j]), int(stats["rest"][j])
    return {
        "feature": indicators.names[j],
        "kind": indicators.kinds[j],
        "same_images_as": indicators.aliases[j] if indicators.aliases else [],
        "in_slice": a,
        "slice_size": n1,
        "rest": b,
        "rest_size": n0,
        "share_in_slice": a / n1 if n1 else None,
        "share_in_rest": b / n0 if n0 else None,
        "log_odds": float(stats["log_odds"][j]),
        "log_odds_95": [
            float(stats["log_odds"][j] - Z95 * stats["se"][j]),
            float(stats["log_odds"][j] + Z95 * stats["se"][j]),
        ],
        "z": float(stats["z"][j]),
        "p_value": float(p),
    }


def describe_slice(
    indicators: Indicators,
    members: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    top: int = 5,
    min_count: int = 5,
    prior: float = 0.5,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The indicators most enriched in, and most depleted from, one slice.

    Args:
        indicators: (N, F) indicators.
        members: (N,) bool, in the slice.
        reference: (N,) bool, what the slice is compared with (default: every other image).
        top: Most indicators listed each way.
        min_count: Enriched: present in at least this many slice images; depleted: in at least
            this many reference images.
        prior: Pseudo-count of the log-odds ratio.
        alpha: Bonferroni-corrected (over the F indicators) Fisher p-value threshold.

    Returns:
        ``{"n", "n_reference", "enriched": [...], "depleted": [...]}``, rows with counts,
        shares, log-odds (with its 95 % interval), z and corrected p-value, strongest first
        (see the module docstring).
    """
    members = np.asarray(members, bool)
    rest = ~members if reference is None else np.asarray(reference, bool) & ~members
    out: dict[str, Any] = {
        "n": int(members.sum()),
        "n_reference": int(rest.sum()),
        "enriched": [],
        "depleted": [],
    }
    f = indicators.n_features
    if not f or not out["n"] or not out["n_reference"]:
        return out
    stats = enrichment(indicators, members, reference=rest, prior=prior)
    p_up = np.minimum(stats["p_enriched"] * f, 1.0)
    p_down = np.minimum(stats["p_depleted"] * f, 1.0)
    up = (stats["log_odds"] > 0) & (stats["in_slice"] >= min_count) & (p_up < alpha)
    down = (stats["log_odds"] < 0) & (stats["rest"] >= min_count) & (p_down < alpha)
    lower = stats["log_odds"] - Z95 * stats["se"]
    upper = stats["log_odds"] + Z95 * stats["se"]
    up_order = [j for j in np.argsort(-lower, kind="stable") if up[j]][:top]
    down_order = [j for j in np.argsort(upper, kind="stable") if down[j]][:top]
    out["enriched"] = [_row(indicators, stats, j, p_up[j]) for j in up_order]
    out["depleted"] = [_row(indicators, stats, j, p_down[j]) for j in down_order]
    return out


def describe_slices(
    indicators: Indicators,
    assign: np.ndarray,
    names: Sequence[Any] | None = None,
    labels: np.ndarray | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Descriptions of every slice of a hard assignment.

    Args:
        indicators: (N, F) indicators.
        assign: (N,) slice index of each image (0 .. K-1).
        names: What to call slice k (its key in the result; default k).
        labels: (N,) 0/1 labels. Given, a slice is described *within its majority label*:
            its images of that label against the other images of that label (``label`` in
            the result), so that what the label itself brings is not listed. Without, against
            every other image.
        **kwargs: :func:`describe_slice` options.

    Returns:
        ``str(name)`` -> :func:`describe_slice`'s dict (with ``label`` when ``labels``).
    """
    assign = np.asarray(assign)
    labels = None if labels is None else np.asarray(labels, int)
    k = int(assign.max()) + 1 if len(assign) else 0
    names = list(range(k)) if names is None else list(names)
    out = {}
    for j in range(k):
        members = assign == j
        if labels is None or not members.any():
            out[str(names[j])] = describe_slice(indicators, members, **kwargs)
            continue
        label = int(np.mean(labels[members]) >= 0.5)  # majority label (1 on a tie)
        same = labels == label
        desc = describe_slice(indicators, members & same, reference=same, **kwargs)
        out[str(names[j])] = {"label": label, **desc}
    return out


class SliceDescriber:
    """Describes slices of one split's images: ``describer(assign, names)``.

    Args:
        frame: The split's manifest rows.
        text_column: Report column (None: no tokens).
        columns: Metadata columns.
        min_count: Minimum count of an indicator (:func:`indicator_table`,
            :func:`describe_slice`).
        labels: (N,) labels: each slice is described against the other images of its
            majority label; None: against every other image (:func:`describe_slices`).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        text_column: str | None,
        columns: list[str],
        min_count: int,
        labels: np.ndarray | None,
    ) -> None:
        self.text_column, self.metadata_columns, self.min_count = text_column, columns, min_count
        self.labels = labels
        self.indicators = indicator_table(frame, text_column, columns, min_count=min_count)

    def __call__(self, assign: np.ndarray, names: list[Any]) -> dict[str, Any]:
        """:func:`describe_slices` of the (N,) assignment, keyed by ``str(names[k])``."""
        return describe_slices(
            self.indicators, assign, names, self.labels, min_count=self.min_count
        )


def _share(count: int, size: int) -> str:
    return f"{count}/{size} ({100 * count / size:.0f} %)" if size else f"{count}/0"


def description_text(description: dict[str, Any] | None, top: int = 3) -> str:
    """One line: ``[label 0] more: tube 61/80 (76 %) vs 40/1520 (3 %); less: ...`` (or ``–``)."""
    if not description:
        return "–"
    parts = []
    for key, word in (("enriched", "more"), ("depleted", "less")):
        rows = description.get(key) or []
        if rows:
            items = [
                f"*{r['feature']}* {_share(r['in_slice'], r['slice_size'])} vs "
                f"{_share(r['rest'], r['rest_size'])}"
                for r in rows[:top]
            ]
            parts.append(f"{word}: " + ", ".join(items))
    label = "" if description.get("label") is None else f"[label {description['label']}] "
    return label + ("; ".join(parts) or "–")
