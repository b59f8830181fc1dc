"""What a slice is found in: image embeddings, report text, manifest metadata, and their mix.

Every modality is turned into a block of numeric features, fitted on one split (val, Domino's
protocol) and applied to another:

- **image**: the model's pooled embeddings (:func:`spatialspec.audit.embeddings.embed`);
- **text**: a manifest column of free text (``report``). By default TF-IDF over word unigrams
  and bigrams (sublinear term frequency, terms in at least 2 reports) reduced by truncated SVD
  (latent semantic analysis), all offline with sklearn; or a local sentence encoder given by
  path (a sentence-transformers or transformers model folder, loaded with
  ``local_files_only``). Missing reports count as empty and are counted;
- **metadata**: manifest columns. A column whose non-missing values are all numbers is
  standardised (fit split's mean and SD; missing -> the mean, plus a ``<col>=(missing)``
  indicator when the fit split has missing values); any other column is one-hot encoded
  (missing is its own category ``(missing)``; a value unseen in the fit split gets no column,
  and is counted).

**Combining and weighting** (:func:`combine_blocks`). Each block is reduced on its own by
:class:`~spatialspec.audit.embeddings.WhitenedPCA` (standardise columns, at most
``n_components`` principal components, unit variance each; d_b dimensions). The blocks are
concatenated and the mixture weighs each dimension's Gaussian log-likelihood (not its scale: a
diagonal mixture is blind to rescaled coordinates, see :mod:`spatialspec.audit.mixture`). A
dimension of block b gets ``λ_b = D · (w_b / Σ_c w_c) / d_b`` with D = ``n_components``: the
weights are shares of the embedding's total voice, which is that of D whitened dimensions
whatever the number of blocks or their widths. One block alone (weight share 1, d_b = D) is
exactly the image-only mixture; the label and prediction terms (γ, γ̂) weigh the same against
the embedding whichever modalities are mixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec.audit.embeddings import WhitenedPCA

__all__ = [
    "DEFAULT_METADATA_COLUMNS",
    "DEFAULT_TEXT_COLUMN",
    "ENCODER_MISSING",
    "MISSING",
    "MODALITIES",
    "Combined",
    "MetadataFeaturizer",
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
#: Error when ``--text-encoder`` is given and no encoder library is installed.
ENCODER_MISSING = (
    "--text-encoder needs sentence-transformers (pip install 'spatialspec[text]') or "
    "transformers; neither is installed. Without --text-encoder the text modality uses "
    "TF-IDF + truncated SVD (sklearn, offline)."
)
#: Word tokens: lowercase letters, at least two.
TOKEN_PATTERN = r"(?u)\b[a-z][a-z]+\b"


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


def _missing(values: pd.Series) -> np.ndarray:
    """(N,) True where a manifest cell is empty (NaN, None or blank text)."""
    blank = values.astype(str).str.strip() == ""
    return (values.isna() | blank).to_numpy()


def _is_numeric(values: pd.Series) -> bool:
    """Whether every non-missing value parses as a finite number (and there is one)."""
    present = values[~_missing(values)]
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
            values, missing = frame[col], _missing(frame[col])
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
        missing = _missing(values)
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


# --------------------------------------------------------------------------- text


def texts_of(frame: pd.DataFrame, column: str) -> tuple[list[str], int]:
    """The column's texts (missing -> ``""``) and how many were missing or blank."""
    if column not in frame.columns:
        where = frame.attrs.get("manifest_path", "the manifest")
        raise ValueError(f"{where} has no text column {column!r}")
    missing = _missing(frame[column])
    texts = np.where(missing, "", frame[column].astype(str)).tolist()
    return texts, int(missing.sum())


class TfidfTextFeaturizer:
    """TF-IDF (word unigrams + bigrams) reduced by truncated SVD; sklearn only, offline.

    Args:
        n_components: SVD dimensions (capped at the vocabulary size - 1 and the number of
            texts - 1).
        seed: SVD's random state.
        min_df: A term must occur in this many fit-split texts.
    """

    kind = "tfidf+svd"

    def __init__(self, n_components: int = 16, seed: int = 0, min_df: int = 2) -> None:
        self.n_components, self.seed, self.min_df = n_components, seed, min_df

    def fit(self, texts: Sequence[str]) -> TfidfTextFeaturizer:
        """Learn the vocabulary, IDF weights and SVD basis.

        Raises:
            ValueError: If no term occurs in ``min_df`` texts (sklearn's "empty vocabulary").
        """
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.tfidf_ = TfidfVectorizer(
            lowercase=True,
            token_pattern=TOKEN_PATTERN,
            ngram_range=(1, 2),
            min_df=self.min_df,
            sublinear_tf=True,
        )
        x = self.tfidf_.fit_transform(list(texts))  # (N, V) sparse
        k = min(self.n_components, x.shape[1] - 1, x.shape[0] - 1)
        self.svd_ = TruncatedSVD(k, random_state=self.seed).fit(x) if k >= 1 else None
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """(N, k) LSA coordinates (the TF-IDF matrix itself when k would be 0)."""
        x = self.tfidf_.transform(list(texts))
        return self.svd_.transform(x) if self.svd_ is not None else x.toarray()

    def summary(self) -> dict[str, Any]:
        """JSON-ready settings and sizes."""
        return {
            "kind": self.kind,
            "vocabulary": len(self.tfidf_.vocabulary_),
            "svd_components": 0 if self.svd_ is None else int(self.svd_.n_components),
            "ngram_range": [1, 2],
            "min_df": self.min_df,
            "svd_explained_variance": None
            if self.svd_ is None
            else float(self.svd_.explained_variance_ratio_.sum()),
        }


class SentenceEncoderFeaturizer:
    """A local sentence encoder (sentence-transformers, else transformers + mean pooling).

    Args:
        path: A model folder (``save_pretrained`` / ``SentenceTransformer.save``); nothing is
            downloaded (``local_files_only``).
        batch_size: Texts per forward pass.

    Raises:
        FileNotFoundError: If ``path`` is not a folder.
    """

    kind = "sentence-encoder"

    def __init__(self, path: str | Path, batch_size: int = 32) -> None:
        self.path, self.batch_size = Path(path), batch_size
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"--text-encoder {self.path}: not a folder (expected a sentence-transformers or "
                "transformers model saved with save_pretrained / save)"
            )

    def fit(self, texts: Sequence[str]) -> SentenceEncoderFeaturizer:
        """Load the encoder (it is pretrained: nothing is fitted to ``texts``)."""
        self.encode_, self.backend_ = _load_encoder(self.path, self.batch_size)
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """(N, H) sentence embeddings."""
        if "encode_" not in self.__dict__:
            raise RuntimeError("SentenceEncoderFeaturizer is not fitted; call fit() first")
        return np.asarray(self.encode_(list(texts)), dtype=float)

    def summary(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return {"kind": self.kind, "path": str(self.path), "backend": self.backend_}


def _load_encoder(path: Path, batch_size: int) -> tuple[Any, str]:
    """``encode(texts) -> (N, H)`` of the model at ``path`` and the library that runs it."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        SentenceTransformer = None
    if SentenceTransformer is not None:
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return (
            lambda texts: model.encode(
                texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
            ),
            "sentence-transformers",
        )
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise ImportError(ENCODER_MISSING) from err
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    return lambda texts: _mean_pooled(model, tokenizer, texts, batch_size), "transformers"


def _mean_pooled(model: Any, tokenizer: Any, texts: list[str], batch_size: int) -> np.ndarray:
    """(N, H) mean of the last hidden states over each text's tokens."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state  # (B, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))  # (B, H)
    return torch.cat(out).double().numpy() if out else np.zeros((0, 0))


def text_featurizer(
    encoder: str | Path | None = None, n_components: int = 16, seed: int = 0
) -> TfidfTextFeaturizer | SentenceEncoderFeaturizer:
    """The text featuriser: a local sentence encoder at ``encoder``, else TF-IDF + SVD."""
    if encoder:
        return SentenceEncoderFeaturizer(encoder)
    return TfidfTextFeaturizer(n_components, seed)


# --------------------------------------------------------------------------- combination


@dataclass
class Combined:
    """Blocks reduced, concatenated and weighted for the mixture.

    Attributes:
        z_fit: (N_fit, d) coordinates of the fit split.
        z_apply: (N_apply, d) coordinates of the split the mixture is applied to.
        dim_weights: (d,) the mixture's per-dimension log-likelihood weights.
        blocks: Block name -> ``{dims, weight, share, dim_weight, explained_variance}``.
    """

    z_fit: np.ndarray
    z_apply: np.ndarray
    dim_weights: np.ndarray
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)


def combine_blocks(
    fit_blocks: Mapping[str, np.ndarray],
    apply_blocks: Mapping[str, np.ndarray],
    weights: Mapping[str, float] | None = None,
    n_components: int = 16,
    seed: int = 0,
) -> Combined:
    """Reduce each block on the fit split, apply to the other, concatenate, weight.

    Args:
        fit_blocks: Block name -> (N_fit, D_b) features.
        apply_blocks: Block name -> (N_apply, D_b) features (same names).
        weights: Block name -> w_b >= 0 (missing: 1; 0 drops the block).
        n_components: At most this many whitened dimensions per block; also D, the total
            voice the weights share (see the module docstring).
        seed: PCA's random state.

    Returns:
        The :class:`Combined` coordinates and per-dimension weights
        ``λ_b = D · (w_b / Σ_c w_c) / d_b``.

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
    z_fit, z_apply, dim_w, info = [], [], [], {}
    for name in used:
        reducer = WhitenedPCA(n_components, seed).fit(fit_blocks[name])
        d = reducer.n_components_
        lam = n_components * (w[name] / total) / d
        z_fit.append(reducer.transform(fit_blocks[name]))
        z_apply.append(reducer.transform(apply_blocks[name]))
        dim_w.append(np.full(d, lam))
        info[name] = {
            "dims": d,
            "input_dims": int(np.shape(fit_blocks[name])[1]),
            "weight": w[name],
            "share": w[name] / total,
            "dim_weight": lam,
            "explained_variance": float(reducer.explained_variance_ratio_.sum()),
        }
    return Combined(np.hstack(z_fit), np.hstack(z_apply), np.concatenate(dim_w), info)


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
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, Any]]]:
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
        Fit blocks, apply blocks (modality -> (N, D)) and, per text/metadata modality, a
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
            fit_blocks["metadata"] = featurizer.transform(fit_frame, "fit")
            apply_blocks["metadata"] = featurizer.transform(apply_frame, "apply")
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
