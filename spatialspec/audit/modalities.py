"""What a slice is found in: image embeddings, report text, manifest metadata, and their mix.

Every modality is turned into a block of numeric features, fitted on one split (val, Domino's
protocol) and applied to another:

- **image**: the model's pooled embeddings (:func:`spatialspec.audit.embeddings.embed`);
- **text**: a manifest column of free text (``report``): TF-IDF + truncated SVD offline, or a
  local sentence encoder (:mod:`spatialspec.audit.text_features`);
- **metadata**: manifest columns. A column whose non-missing values are all numbers is
  standardised (fit split's mean and SD; missing -> the mean, plus a ``<col>=(missing)``
  indicator when the fit split has missing values); any other column is one-hot encoded
  (missing is its own category ``(missing)``; a value unseen in the fit split gets no column,
  and is counted). In the mixture the numeric columns are continuous and the one-hot columns
  (and each missing indicator) categorical variables (:class:`MixedBlock`): a Gaussian on a
  two-valued coordinate collapses onto one value and outweighs everything else.

**Combining and weighting** (:func:`combine_blocks`). Each block's continuous part is reduced on
its own by :class:`~spatialspec.audit.embeddings.WhitenedPCA` (standardise columns, at most
``n_components`` principal components, unit variance each); with its categorical variables it
has d_b *factors*. The blocks are concatenated and the mixture weighs each factor's
log-likelihood (not its scale: a diagonal mixture is blind to rescaled coordinates, see
:mod:`spatialspec.audit.mixture`). Every factor of block b gets
``λ_b = D · (w_b / Σ_c w_c) / d_b`` with D = ``n_components``: the weights are shares of the
embedding's total voice, that of D whitened dimensions, whatever the number of blocks or their
widths. One block alone (share 1, d_b = D) is exactly the image-only mixture; the label and
prediction terms (γ, γ̂) weigh the same against the embedding whichever modalities are mixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec.audit.embeddings import WhitenedPCA
from spatialspec.audit.text_features import (
    ENCODER_MISSING,
    SentenceEncoderFeaturizer,
    TfidfTextFeaturizer,
    blank_cells,
    text_featurizer,
    texts_of,
)

__all__ = [
    "DEFAULT_METADATA_COLUMNS",
    "DEFAULT_TEXT_COLUMN",
    "ENCODER_MISSING",
    "MISSING",
    "MODALITIES",
    "Combined",
    "MetadataFeaturizer",
    "MixedBlock",
    "SentenceEncoderFeaturizer",
    "TfidfTextFeaturizer",
    "combine_blocks",
    "modality_blocks",
    "parse_modalities",
    "parse_weights",
    "text_featurizer",
    "texts_of",
]

#: The modalities a slice can be found in.
MODALITIES = ("image", "text", "metadata")
#: Metadata columns used when none are named (the synthetic benchmark's; DICOM headers give
#: the same three as ViewPosition, PatientAge, PatientSex).
DEFAULT_METADATA_COLUMNS = ("view", "age", "sex")
#: The free-text column used when none is named.
DEFAULT_TEXT_COLUMN = "report"
#: The category missing values of a categorical column get.
MISSING = "(missing)"
#: Manifest columns that cannot be metadata: what the slices are scored against, or ids/paths.
RESERVED_COLUMNS = frozenset(
    {"label", "spurious", "split", "image_id", "image_path", "mask_path", "mask_available"}
)
# --------------------------------------------------------------------------- option parsing


def parse_modalities(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"image,text"`` -> ``("image", "text")``; unknown names raise a ValueError listing them."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = sorted(set(names) - set(MODALITIES))
    if unknown or not names:
        raise ValueError(f"modalities must be some of {', '.join(MODALITIES)}; got {text!r}")
    return tuple(dict.fromkeys(names))


def parse_weights(text: str | Mapping[str, float] | None) -> dict[str, float]:
    """``"image=1,text=2"`` -> ``{"image": 1.0, "text": 2.0}`` (unnamed modalities: 1)."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        items = [(str(k), v) for k, v in text.items()]
    else:
        items = []
        for item in filter(None, (s.strip() for s in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"modality weights are NAME=WEIGHT, got {item!r}")
            items.append((name.strip(), value))
    weights = {}
    for name, value in items:
        if name not in MODALITIES:
            raise ValueError(f"unknown modality {name!r} in weights; use {', '.join(MODALITIES)}")
        try:
            weights[name] = float(value)
        except ValueError as err:
            raise ValueError(f"weight of {name} is not a number: {value!r}") from err
        if not np.isfinite(weights[name]) or weights[name] < 0:
            raise ValueError(f"weight of {name} must be finite and >= 0, got {value!r}")
    return weights


# --------------------------------------------------------------------------- metadata


def _is_numeric(values: pd.Series) -> bool:
    """Whether every non-missing value parses as a finite number (and there is one)."""
    present = values[~blank_cells(values)]
    if present.empty or pd.api.types.is_bool_dtype(present):
        return False
    parsed = pd.to_numeric(present, errors="coerce")
    return bool(parsed.notna().all() and np.isfinite(parsed.to_numpy(float)).all())


class MetadataFeaturizer:
    """Manifest columns -> one-hot (categorical) and standardised (numeric) features.

    Args:
        columns: Manifest columns to use.

    Attributes:
        feature_names_: Name of each output column (``age``, ``view=AP``, ``age=(missing)``).
        kinds_: Column -> ``"numeric"`` or ``"categorical"``.
        counts_: Split name -> column -> ``{"n": rows, "n_missing": ..., "n_unseen": ...}``
            (filled by :meth:`fit` as ``"fit"`` and by each :meth:`transform` under its
            ``split``).
    """

    def __init__(self, columns: Sequence[str]) -> None:
        if not columns:
            raise ValueError("metadata needs at least one column")
        reserved = sorted(set(columns) & RESERVED_COLUMNS)
        if reserved:
            raise ValueError(
                f"metadata columns cannot include {', '.join(reserved)} (the slices are scored "
                "against label and spurious; ids and paths are not metadata)"
            )
        self.columns = list(dict.fromkeys(columns))

    def fit(self, frame: pd.DataFrame) -> MetadataFeaturizer:
        """Learn each column's kind, mean/SD or categories from ``frame``'s rows."""
        self._check_columns(frame)
        self.kinds_, self.stats_, self.counts_ = {}, {}, {}
        for col in self.columns:
            values, missing = frame[col], blank_cells(frame[col])
            if _is_numeric(frame[col]):
                x = pd.to_numeric(values[~missing]).to_numpy(float)
                sd = float(x.std())
                self.kinds_[col] = "numeric"
                self.stats_[col] = (float(x.mean()), sd if sd > 0 else 1.0, bool(missing.any()))
            else:
                self.kinds_[col] = "categorical"
                self.stats_[col] = sorted(set(np.where(missing, MISSING, values.astype(str))))
        self.feature_names_ = [name for col in self.columns for name in self._names(col)]
        self._transform(frame, "fit")
        return self

    def transform(self, frame: pd.DataFrame, split: str = "apply") -> np.ndarray:
        """(N, F) features of ``frame``'s rows; counts missing/unseen values under ``split``."""
        if "kinds_" not in self.__dict__:
            raise RuntimeError("MetadataFeaturizer is not fitted; call fit() first")
        self._check_columns(frame)
        return self._transform(frame, split)

    def fit_transform(self, frame: pd.DataFrame) -> np.ndarray:
        """:meth:`fit` on ``frame`` and its features."""
        return self.fit(frame).transform(frame, "fit")

    def mixed(self, x: np.ndarray) -> MixedBlock:
        """Split :meth:`transform`'s (N, F) features for the mixture: standardised numeric
        columns stay continuous; one-hot columns, and each missing indicator as the pair
        (missing, present), become categorical variables."""
        names = self.feature_names_
        numeric = [j for j, n in enumerate(names) if n in self.kinds_]
        onehot, groups = [], []
        for j, name in enumerate(names):
            col = name.partition("=")[0]
            if j in numeric:
                continue
            if self.kinds_[col] == "numeric":  # the missing indicator of a numeric column
                onehot += [x[:, j], 1.0 - x[:, j]]
                groups += [name, name]
            else:
                onehot.append(x[:, j])
                groups.append(col)
        stack = np.column_stack(onehot) if onehot else np.zeros((len(x), 0))
        return MixedBlock(x[:, numeric], stack, groups)

    def summary(self) -> dict[str, Any]:
        """JSON-ready columns, kinds, feature names and missing/unseen counts."""
        return {
            "columns": self.columns,
            "kinds": dict(self.kinds_),
            "features": list(self.feature_names_),
            "counts": {s: dict(c) for s, c in self.counts_.items()},
        }

    def _names(self, col: str) -> list[str]:
        if self.kinds_[col] == "numeric":
            return [col] + ([f"{col}={MISSING}"] if self.stats_[col][2] else [])
        return [f"{col}={value}" for value in self.stats_[col]]

    def _transform(self, frame: pd.DataFrame, split: str) -> np.ndarray:
        blocks, counts = [], {}
        for col in self.columns:
            block, n_missing, n_unseen = self._column(frame[col], col)
            blocks.append(block)
            counts[col] = {"n": len(frame), "n_missing": n_missing, "n_unseen": n_unseen}
        self.counts_[split] = counts
        return np.column_stack(blocks) if blocks else np.zeros((len(frame), 0))

    def _column(self, values: pd.Series, col: str) -> tuple[np.ndarray, int, int]:
        """(N, F_col) features of one column, its missing and unseen counts."""
        missing = blank_cells(values)
        if self.kinds_[col] == "numeric":
            mean, sd, indicator = self.stats_[col]
            x = pd.to_numeric(values.where(~missing), errors="coerce").to_numpy(float)
            unseen = ~missing & ~np.isfinite(x)  # text in a numeric column
            z = np.where(missing | unseen, 0.0, (np.nan_to_num(x) - mean) / sd)
            cols = [z, missing.astype(float)] if indicator else [z]
            return np.column_stack(cols), int(missing.sum()), int(unseen.sum())
        cats = self.stats_[col]
        text = np.where(missing, MISSING, values.astype(str))
        onehot = (text[:, None] == np.asarray(cats, dtype=object)[None]).astype(float)
        return onehot, int(missing.sum()), int((onehot.sum(axis=1) == 0).sum())

    def _check_columns(self, frame: pd.DataFrame) -> None:
        absent = [c for c in self.columns if c not in frame.columns]
        if absent:
            where = frame.attrs.get("manifest_path", "the manifest")
            raise ValueError(f"{where} has no metadata column(s) {', '.join(absent)}")


# --------------------------------------------------------------------------- combination


@dataclass
class MixedBlock:
    """A block with continuous columns (Gaussian factors) and categorical variables.

    Attributes:
        numeric: (N, P) continuous features.
        onehot: (N, C) one-hot columns; every variable a group of columns.
        groups: C variable names, the group of each one-hot column.
    """

    numeric: np.ndarray
    onehot: np.ndarray
    groups: list[str]


@dataclass
class Combined:
    """Blocks reduced, concatenated and weighted for the mixture.

    Attributes:
        z_fit: (N_fit, d) Gaussian coordinates of the fit split.
        z_apply: (N_apply, d) the same for the split the mixture is applied to.
        dim_weights: (d,) the mixture's per-dimension log-likelihood weights.
        onehot_fit: (N_fit, C) one-hot columns of the categorical variables.
        onehot_apply: (N_apply, C) the same for the other split.
        onehot_weights: (C,) their weights (a variable's columns share one).
        blocks: Block name -> ``{dims, categorical, weight, share, dim_weight, ...}``.
    """

    z_fit: np.ndarray
    z_apply: np.ndarray
    dim_weights: np.ndarray
    onehot_fit: np.ndarray
    onehot_apply: np.ndarray
    onehot_weights: np.ndarray
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)


Block = np.ndarray | MixedBlock


def _parts(block: Block) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(numeric, one-hot, groups) of a block (a plain array is all numeric)."""
    if isinstance(block, MixedBlock):
        return np.asarray(block.numeric, float), np.asarray(block.onehot, float), block.groups
    block = np.asarray(block, float)
    return block, np.zeros((len(block), 0)), []


def combine_blocks(
    fit_blocks: Mapping[str, Block],
    apply_blocks: Mapping[str, Block],
    weights: Mapping[str, float] | None = None,
    n_components: int = 16,
    seed: int = 0,
) -> Combined:
    """Reduce each block on the fit split, apply to the other, concatenate, weight.

    Args:
        fit_blocks: Block name -> (N_fit, D_b) features or a :class:`MixedBlock`.
        apply_blocks: Block name -> the same for the other split (same names).
        weights: Block name -> w_b >= 0 (missing: 1; 0 drops the block).
        n_components: At most this many whitened dimensions per block; also D, the total
            voice the weights share (see the module docstring).
        seed: PCA's random state.

    Returns:
        The :class:`Combined` coordinates, with weight ``λ_b = D · (w_b / Σ_c w_c) / d_b`` on
        each of block b's d_b factors (whitened dimensions + categorical variables).

    Raises:
        ValueError: If the names differ, or no block has a positive weight.
    """
    if set(fit_blocks) != set(apply_blocks):
        raise ValueError(f"blocks differ: {sorted(fit_blocks)} vs {sorted(apply_blocks)}")
    w = {name: float((weights or {}).get(name, 1.0)) for name in fit_blocks}
    used = [name for name in fit_blocks if w[name] > 0]
    if not used:
        raise ValueError(f"no block has a positive weight: {w}")
    total = sum(w[name] for name in used)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("zf", "za", "dw", "cf", "ca", "cw")}
    info = {}
    for name in used:
        info[name] = _add_block(
            fit_blocks[name], apply_blocks[name], w[name] / total, n_components, seed, parts
        )
        info[name]["weight"] = w[name]
    cat = [np.hstack(parts[k]) for k in ("cf", "ca")]
    return Combined(
        np.hstack(parts["zf"]),
        np.hstack(parts["za"]),
        np.concatenate(parts["dw"]),
        cat[0],
        cat[1],
        np.concatenate(parts["cw"]),
        info,
    )


def _add_block(
    fit: Block,
    apply: Block,
    share: float,
    n_components: int,
    seed: int,
    parts: dict[str, list[np.ndarray]],
) -> dict[str, Any]:
    """Reduce one block's numeric part, weigh its factors, append to ``parts``; its info."""
    numeric_fit, onehot_fit, groups = _parts(fit)
    numeric_apply, onehot_apply, _ = _parts(apply)
    z_fit, z_apply, explained = numeric_fit[:, :0], numeric_apply[:, :0], None
    if numeric_fit.shape[1]:
        reducer = WhitenedPCA(n_components, seed).fit(numeric_fit)
        z_fit, z_apply = reducer.transform(numeric_fit), reducer.transform(numeric_apply)
        explained = float(reducer.explained_variance_ratio_.sum())
    n_vars = len(set(groups))
    lam = n_components * share / (z_fit.shape[1] + n_vars)
    parts["zf"].append(z_fit)
    parts["za"].append(z_apply)
    parts["dw"].append(np.full(z_fit.shape[1], lam))
    parts["cf"].append(onehot_fit)
    parts["ca"].append(onehot_apply)
    parts["cw"].append(np.full(onehot_fit.shape[1], lam))
    return {
        "dims": int(z_fit.shape[1]),
        "categorical": n_vars,
        "input_dims": int(numeric_fit.shape[1] + onehot_fit.shape[1]),
        "share": share,
        "dim_weight": lam,
        "explained_variance": explained,
    }


# --------------------------------------------------------------------------- the audit's blocks


def modality_blocks(
    fit_frame: pd.DataFrame,
    apply_frame: pd.DataFrame,
    modalities: Sequence[str] = MODALITIES,
    *,
    metadata_columns: Sequence[str] | None = None,
    text_column: str | None = None,
    text_encoder: str | Path | None = None,
    n_components: int = 16,
    seed: int = 0,
) -> tuple[dict[str, Block], dict[str, Block], dict[str, dict[str, Any]]]:
    """Text and metadata features of two splits' manifest rows (the image block is the model's).

    Args:
        fit_frame: Rows the featurisers are fitted on (val).
        apply_frame: Rows they are applied to (the audited split).
        modalities: Which of ``text`` / ``metadata`` to build (``image`` is ignored here).
        metadata_columns: Columns (None: those of :data:`DEFAULT_METADATA_COLUMNS` present;
            named columns must all exist).
        text_column: Free-text column (None: :data:`DEFAULT_TEXT_COLUMN` if present; a named
            column must exist).
        text_encoder: A local sentence-encoder folder (None: TF-IDF + SVD).
        n_components: TF-IDF's SVD dimensions.
        seed: SVD's random state.

    Returns:
        Fit blocks, apply blocks (text: (N, D); metadata: a :class:`MixedBlock`) and, per
        text/metadata modality, a
        JSON-ready ``info``: ``status`` (``used`` / ``skipped``), ``reason`` when skipped, the
        featuriser's settings and the missing counts per split.

    Raises:
        ValueError: If a named metadata or text column is absent (names the manifest).
    """
    fit_blocks, apply_blocks, info = {}, {}, {}
    if "metadata" in modalities:
        columns = _metadata_columns(fit_frame, metadata_columns)
        if not columns:
            info["metadata"] = _skipped(
                f"none of {', '.join(DEFAULT_METADATA_COLUMNS)} in the "
                "manifest (name columns with --metadata-columns)"
            )
        else:
            featurizer = MetadataFeaturizer(columns).fit(fit_frame)
            fit_blocks["metadata"] = featurizer.mixed(featurizer.transform(fit_frame, "fit"))
            apply_blocks["metadata"] = featurizer.mixed(featurizer.transform(apply_frame, "apply"))
            info["metadata"] = {"status": "used", **featurizer.summary()}
    if "text" in modalities:
        column = text_column or DEFAULT_TEXT_COLUMN
        if text_column is None and column not in fit_frame.columns:
            info["text"] = _skipped(f"no {column!r} column in the manifest (--text-column)")
        else:
            _text_block(
                fit_frame,
                apply_frame,
                column,
                text_encoder,
                n_components,
                seed,
                (fit_blocks, apply_blocks, info),
            )
    return fit_blocks, apply_blocks, info


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def _metadata_columns(frame: pd.DataFrame, columns: Sequence[str] | None) -> list[str]:
    """The named columns (checked later), or the default ones the frame has."""
    if columns is not None:
        return list(columns)
    return [c for c in DEFAULT_METADATA_COLUMNS if c in frame.columns]


def _text_block(
    fit_frame: pd.DataFrame,
    apply_frame: pd.DataFrame,
    column: str,
    encoder: str | Path | None,
    n_components: int,
    seed: int,
    out: tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, Any]]],
) -> None:
    """Fit the text featuriser on ``fit_frame``'s texts; fill the blocks and info in ``out``."""
    fit_blocks, apply_blocks, info = out
    fit_texts, fit_missing = texts_of(fit_frame, column)
    apply_texts, apply_missing = texts_of(apply_frame, column)
    counts = {"column": column, "n_missing": {"fit": fit_missing, "apply": apply_missing}}
    featurizer = text_featurizer(encoder, n_components, seed)
    try:
        featurizer.fit(fit_texts)
    except ValueError as err:  # e.g. every fit-split report empty: no vocabulary
        info["text"] = {**_skipped(f"text features could not be fitted: {err}"), **counts}
        return
    fit_blocks["text"] = featurizer.transform(fit_texts)
    apply_blocks["text"] = featurizer.transform(apply_texts)
    info["text"] = {"status": "used", **counts, **featurizer.summary()}
