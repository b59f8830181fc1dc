"""Image embeddings of a trained model, and the whitened PCA every slicing modality goes through.

- :func:`embed`: the global-average-pooled deepest encoder features of the shared U-Net encoder
  (the same layer for every method; dense methods may use the pooled last decoder features,
  ``features="decoder"``), caught by a forward hook during the pass that computes the scores.
- :class:`WhitenedPCA` / :func:`reduce_embeddings`: standardise each column, project on the
  leading principal components and scale them to unit variance. Components whose variance is
  (numerically) zero are dropped, so collinear inputs (two one-hot columns of one category)
  never blow up under whitening.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

__all__ = ["WhitenedPCA", "embed", "reduce_embeddings"]

#: Components explaining less than this share of the variance count as zero-variance.
NULL_VARIANCE = 1e-9


def _pool(output: Any) -> torch.Tensor:
    """(B, F) global average of a feature map (the deepest one if a list of maps)."""
    fmap = output[-1] if isinstance(output, (list, tuple)) else output
    return fmap.float().mean(dim=(-2, -1))


@torch.inference_mode()
def embed(
    method: torch.nn.Module, images: torch.Tensor, batch_size: int = 64, features: str = "encoder"
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and scores of ``images`` in one forward pass per batch.

    A forward hook on the method's encoder (or decoder) catches the features that
    ``method.score`` computes anyway.

    Args:
        method: A trained :class:`~spatialspec.methods.SpatialMethod` with a ``net``.
        images: (N, C, S, S) network inputs.
        batch_size: Images per forward pass.
        features: ``"encoder"`` (pooled deepest encoder features, every method) or
            ``"decoder"`` (pooled last decoder features, dense methods only).

    Returns:
        (N, D) float embeddings and (N,) image-level probabilities.
    """
    module = _feature_module(method, features)
    caught: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: caught.append(_pool(out)))
    device = next(method.parameters()).device
    method.eval()
    embeddings, scores = [], []
    try:
        for batch in images.split(batch_size):
            caught.clear()
            scores.append(method.score(batch.to(device)).float().cpu())
            if not caught:
                raise RuntimeError(f"method.score never ran the {features}")
            embeddings.append(caught[-1].cpu())
    finally:
        handle.remove()
    return torch.cat(embeddings).double().numpy(), torch.cat(scores).double().numpy()


def _feature_module(method: torch.nn.Module, features: str) -> torch.nn.Module:
    """The sub-module whose output is pooled into embeddings."""
    if features not in ("encoder", "decoder"):
        raise ValueError(f"features must be 'encoder' or 'decoder', got {features!r}")
    module = getattr(method.net, features, None)
    if module is None:
        raise ValueError(f"this method's network has no {features}; use features='encoder'")
    return module


class WhitenedPCA:
    """Standardise columns, keep the leading principal components, scale them to unit variance.

    Args:
        n_components: Most dimensions kept (also capped at ``N - 1`` and the input width);
            components with a variance share below :data:`NULL_VARIANCE` are dropped.
        seed: PCA's random state (randomised solvers only).

    Attributes:
        n_components_: Dimensions kept after fitting.
        explained_variance_ratio_: Share of the standardised variance of each kept component.
    """

    def __init__(self, n_components: int = 16, seed: int = 0) -> None:
        self.n_components, self.seed = n_components, seed

    def fit(self, x: np.ndarray) -> WhitenedPCA:
        """Fit to (N, D) features."""
        x = _as_matrix(x)
        d = max(1, min(self.n_components, x.shape[0] - 1, x.shape[1]))
        self.scaler_ = StandardScaler().fit(x)
        self.pca_ = PCA(n_components=d, random_state=self.seed).fit(self.scaler_.transform(x))
        ratio = self.pca_.explained_variance_ratio_
        keep = max(1, int((ratio > NULL_VARIANCE).sum()))  # sorted: the null ones come last
        self.n_components_ = keep
        self.explained_variance_ratio_ = ratio[:keep]
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, d) whitened coordinates."""
        if "pca_" not in self.__dict__:
            raise RuntimeError("WhitenedPCA is not fitted; call fit() first")
        centred = self.scaler_.transform(_as_matrix(x)) - self.pca_.mean_
        k = self.n_components_
        scale = np.sqrt(np.maximum(self.pca_.explained_variance_[:k], np.finfo(float).tiny))
        return centred @ self.pca_.components_[:k].T / scale  # (N, d)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        """:meth:`fit` then :meth:`transform`."""
        return self.fit(x).transform(x)


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"expected (N, D) features, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    return x


def reduce_embeddings(
    embeddings: np.ndarray, n_components: int = 16, seed: int = 0
) -> tuple[np.ndarray, WhitenedPCA]:
    """Standardise, PCA-reduce and whiten embeddings.

    Args:
        embeddings: (N, D) features.
        n_components: PCA dimensions (capped at ``min(N - 1, D)``; zero-variance ones dropped).
        seed: PCA's random state (randomised solvers only).

    Returns:
        (N, d) coordinates with unit variance per dimension, and the fitted reducer.
    """
    reducer = WhitenedPCA(n_components, seed)
    return reducer.fit_transform(embeddings), reducer
