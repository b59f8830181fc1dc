"""Text features of a report column: TF-IDF + truncated SVD offline, or a local sentence encoder.

- :class:`TfidfTextFeaturizer` (default): TF-IDF over lowercased word unigrams and bigrams
  (:data:`TOKEN_PATTERN`; sublinear term frequency; terms in at least ``min_df`` fit-split
  reports), reduced by truncated SVD (latent semantic analysis); sklearn only, offline.
- :class:`SentenceEncoderFeaturizer`: a sentence-transformers or transformers model folder
  given by path, loaded with ``local_files_only`` (nothing is downloaded); sentence-transformers
  when installed (``pip install 'spatialspec[text]'``), else transformers with the mean of the
  last hidden states over each text's tokens.

Missing or blank reports count as empty texts (:func:`texts_of` counts them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ENCODER_MISSING",
    "TOKEN_PATTERN",
    "SentenceEncoderFeaturizer",
    "TfidfTextFeaturizer",
    "blank_cells",
    "text_featurizer",
    "texts_of",
]

#: Error when ``--text-encoder`` is given and no encoder library is installed.
ENCODER_MISSING = (
    "--text-encoder needs sentence-transformers (pip install 'spatialspec[text]') or "
    "transformers; neither is installed. Without --text-encoder the text modality uses "
    "TF-IDF + truncated SVD (sklearn, offline)."
)
#: Word tokens: lowercase letters, at least two.
TOKEN_PATTERN = r"(?u)\b[a-z][a-z]+\b"


def blank_cells(values: pd.Series) -> np.ndarray:
    """(N,) True where a manifest cell is empty (NaN, None or blank text)."""
    blank = values.astype(str).str.strip() == ""
    return (values.isna() | blank).to_numpy()


def texts_of(frame: pd.DataFrame, column: str) -> tuple[list[str], int]:
    """The column's texts (missing -> ``""``) and how many were missing or blank."""
    if column not in frame.columns:
        where = frame.attrs.get("manifest_path", "the manifest")
        raise ValueError(f"{where} has no text column {column!r}")
    missing = blank_cells(frame[column])
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
