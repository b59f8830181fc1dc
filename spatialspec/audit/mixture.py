"""Domino's error-aware mixture model (Eyuboglu et al., ICLR 2022), written out with numpy/scipy.

``n_slices`` components, each a diagonal Gaussian over (reduced) embeddings times a Bernoulli
over the labels Y times a soft Bernoulli over the predictions Ŷ; fitted by EM (log-sum-exp
E-step, closed-form M-step, seeded restarts). Used by :mod:`spatialspec.audit.slices`, whose
module docstring explains the choices (γ = γ̂ = 10, soft Ŷ).

Each embedding dimension's Gaussian log-likelihood may carry a weight (``dim_weights``), as the
label and prediction terms carry γ and γ̂: that is how modality blocks are weighted
(:mod:`spatialspec.audit.modalities`). Rescaling a dimension could not do it: every component
learns its own variance per dimension, so a rescaled coordinate only shifts every component's
log-density by the same constant and leaves the responsibilities unchanged.

Discrete features (categorical metadata) enter as *categorical* factors, as Y and Ŷ enter as
Bernoulli ones: ``categorical`` is an (N, C) matrix holding, per categorical variable, a
one-hot group of columns (a row with no 1 in a group, e.g. a value unseen when fitting,
contributes nothing), with per-column weights ``categorical_weights``. A Gaussian on such a
two-valued coordinate would be wrong: a component collapses onto one value, its variance
shrinks to ``reg_covar`` and its density outgrows every other term.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from sklearn.cluster import KMeans

__all__ = ["DEFAULT_WEIGHT", "EPS", "ErrorAwareMixture"]

#: Default γ = γ̂: weight of the label and prediction log-likelihoods (domino's package uses 1).
DEFAULT_WEIGHT = 10.0
#: Bernoulli parameters are kept in [EPS, 1 - EPS] so their logs stay finite.
EPS = 1e-6


@dataclass
class _Params:
    """Parameters of the error-aware mixture (K components, d dimensions)."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    variances: np.ndarray  # (K, d)
    y_probs: np.ndarray  # (K,) P(Y = 1 | slice)
    y_hat_probs: np.ndarray  # (K,) mean predicted probability in the slice
    cat_probs: np.ndarray  # (K, C) P(category column c | slice), summing to 1 within a group


def _bernoulli_log(target: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N, K) soft Bernoulli log-likelihood of (N,) targets in [0, 1] under (K,) probabilities."""
    t = target[:, None]
    return t * np.log(probs)[None] + (1.0 - t) * np.log1p(-probs)[None]


def _gaussian_log(
    z: np.ndarray, means: np.ndarray, variances: np.ndarray, dim_weights: np.ndarray
) -> np.ndarray:
    """(N, K) weighted log densities of diagonal Gaussians: Σ_j w_j log N(z_j | μ_kj, σ²_kj)."""
    prec = dim_weights[None] / variances  # (K, d)
    quad = (z**2) @ prec.T - 2.0 * z @ (means * prec).T + (means**2 * prec).sum(1)
    log_norm = (dim_weights[None] * np.log(2 * np.pi * variances)).sum(1)  # (K,)
    return -0.5 * (log_norm + quad)


class ErrorAwareMixture:
    """Domino's error-aware mixture: Gaussian(embedding) × Bernoulli(Y) × Bernoulli(Ŷ).

    Maximises, by EM, the mean over images of
    ``log Σ_k π_k Π_j N(z_j | μ_kj, σ²_kj)^w_j P(y | k)^γ P(ŷ | k)^γ̂ Π_c P(c | k)^(v_c x_c)``
    (γ = ``y_weight``, γ̂ = ``y_hat_weight``, w = ``dim_weights``, v = ``categorical_weights``,
    x the one-hot ``categorical`` columns; γ = γ̂ = 0, w = 1 and no categorical columns give a
    plain diagonal Gaussian mixture). The M-step is the same closed form for any positive
    weights (each factor is maximised on its own), so EM still never decreases the objective.

    Args:
        n_slices: Mixture components K.
        y_weight: γ, weight of the label log-likelihood.
        y_hat_weight: γ̂, weight of the (soft) prediction log-likelihood.
        reg_covar: Added to every variance (the coordinates are whitened: unit variance).
        max_iter: EM iterations per initialisation.
        tol: Stop when the objective improves by less than this.
        n_init: Initialisations; the one with the best final objective is kept.
        init: ``"kmeans"`` (k-means++ on the embeddings with √γ·y and √γ̂·ŷ appended) or
            ``"confusion"`` (Domino's: components tiled over the confusion-matrix cells, plus
            ``confusion_noise`` random responsibility).
        confusion_noise: Noise scale of the ``"confusion"`` initialisation.
        seed: Seeds every initialisation.
        dim_weights: (d,) positive weight of each dimension's Gaussian log-likelihood
            (default: 1 each). A weight of 2 counts a dimension as if it were there twice.
        categorical_weights: (C,) positive weight of each one-hot column of ``categorical``
            (default: 1 each; give the columns of one variable the same weight).

    Attributes:
        weights_, means_, variances_, y_probs_, y_hat_probs_, cat_probs_: Fitted parameters.
        objective_: Final objective (mean weighted log-likelihood per image).
        history_: Objective before each M-step of the kept initialisation (non-decreasing).
        n_iter_, converged_: EM iterations and convergence of the kept initialisation.
    """

    def __init__(
        self,
        n_slices: int = 8,
        *,
        y_weight: float = DEFAULT_WEIGHT,
        y_hat_weight: float = DEFAULT_WEIGHT,
        reg_covar: float = 1e-3,
        max_iter: int = 200,
        tol: float = 1e-6,
        n_init: int = 3,
        init: str = "kmeans",
        confusion_noise: float = 1e-3,
        seed: int = 0,
        dim_weights: np.ndarray | None = None,
        categorical_weights: np.ndarray | None = None,
    ) -> None:
        if init not in ("kmeans", "confusion"):
            raise ValueError(f"init must be 'kmeans' or 'confusion', got {init!r}")
        if n_slices < 1 or n_init < 1:
            raise ValueError("n_slices and n_init must be at least 1")
        if y_weight < 0 or y_hat_weight < 0:
            raise ValueError("y_weight and y_hat_weight must be non-negative")
        self.n_slices, self.y_weight, self.y_hat_weight = n_slices, y_weight, y_hat_weight
        self.reg_covar, self.max_iter, self.tol, self.n_init = reg_covar, max_iter, tol, n_init
        self.init, self.confusion_noise, self.seed = init, confusion_noise, seed
        self.dim_weights = _positive(dim_weights, "dim_weights")
        self.categorical_weights = _positive(categorical_weights, "categorical_weights")

    # -- public ---------------------------------------------------------------------------------
    def fit(
        self,
        z: np.ndarray,
        y: np.ndarray,
        y_hat: np.ndarray,
        categorical: np.ndarray | None = None,
    ) -> ErrorAwareMixture:
        """Fit to (N, d) coordinates, (N,) labels, (N,) predicted probabilities and optional
        (N, C) one-hot categorical columns."""
        z, y, y_hat, c = self._check(z, y, y_hat, categorical)
        if len(z) < self.n_slices:
            raise ValueError(f"{len(z)} images cannot fill {self.n_slices} slices")
        rng = np.random.default_rng(self.seed)
        best: tuple[float, _Params, list[float], bool] | None = None
        for _ in range(self.n_init):
            run = self._run_em(z, y, y_hat, c, self._initial_resp(z, y, y_hat, c, rng))
            if best is None or run[0] > best[0]:
                best = run
        self.objective_, self._params, self.history_, self.converged_ = best
        self.n_iter_ = len(self.history_)
        for name, value in vars(self._params).items():
            setattr(self, name + "_", value)
        return self

    def predict_proba(
        self,
        z: np.ndarray,
        y: np.ndarray,
        y_hat: np.ndarray,
        categorical: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N, K) responsibilities P(slice | z, y, ŷ[, categorical]); rows sum to 1."""
        params = self._fitted()
        return np.exp(self._e_step(*self._check(z, y, y_hat, categorical), params)[1])

    def predict(
        self,
        z: np.ndarray,
        y: np.ndarray,
        y_hat: np.ndarray,
        categorical: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N,) index of each image's most responsible component."""
        return self.predict_proba(z, y, y_hat, categorical).argmax(axis=1)

    def score(
        self,
        z: np.ndarray,
        y: np.ndarray,
        y_hat: np.ndarray,
        categorical: np.ndarray | None = None,
    ) -> float:
        """Mean weighted log-likelihood per image (the EM objective)."""
        params = self._fitted()
        return float(self._e_step(*self._check(z, y, y_hat, categorical), params)[0])

    # -- EM -------------------------------------------------------------------------------------
    def _run_em(
        self, z: np.ndarray, y: np.ndarray, y_hat: np.ndarray, c: np.ndarray, resp: np.ndarray
    ) -> tuple[float, _Params, list[float], bool]:
        """EM from initial responsibilities: (objective, params, history, converged)."""
        params = self._m_step(z, y, y_hat, c, resp)
        history: list[float] = []
        for _ in range(self.max_iter):
            objective, log_resp = self._e_step(z, y, y_hat, c, params)
            history.append(objective)
            params = self._m_step(z, y, y_hat, c, np.exp(log_resp))
            if len(history) > 1 and abs(history[-1] - history[-2]) < self.tol:
                return self._e_step(z, y, y_hat, c, params)[0], params, history, True
        return self._e_step(z, y, y_hat, c, params)[0], params, history, False

    def _e_step(
        self, z: np.ndarray, y: np.ndarray, y_hat: np.ndarray, c: np.ndarray, p: _Params
    ) -> tuple[float, np.ndarray]:
        """Mean log normaliser (the objective) and (N, K) log responsibilities."""
        gauss = _gaussian_log(z, p.means, p.variances, self._dim_weights(z))
        log_prob = np.log(p.weights)[None] + gauss
        if self.y_weight:
            log_prob += self.y_weight * _bernoulli_log(y, p.y_probs)
        if self.y_hat_weight:
            log_prob += self.y_hat_weight * _bernoulli_log(y_hat, p.y_hat_probs)
        if c.shape[1]:
            log_prob += (c * self._categorical_weights(c)) @ np.log(p.cat_probs).T  # (N, K)
        norm = logsumexp(log_prob, axis=1)
        return float(norm.mean()), log_prob - norm[:, None]

    def _m_step(
        self, z: np.ndarray, y: np.ndarray, y_hat: np.ndarray, c: np.ndarray, resp: np.ndarray
    ) -> _Params:
        """Closed-form maximisers given (N, K) responsibilities."""
        nk = resp.sum(axis=0) + 10 * np.finfo(float).eps
        means = resp.T @ z / nk[:, None]
        second = resp.T @ (z**2) / nk[:, None]
        variances = np.maximum(second - means**2, 0.0) + self.reg_covar
        return _Params(
            weights=nk / nk.sum(),
            means=means,
            variances=variances,
            y_probs=np.clip(resp.T @ y / nk, EPS, 1 - EPS),
            y_hat_probs=np.clip(resp.T @ y_hat / nk, EPS, 1 - EPS),
            cat_probs=np.clip(resp.T @ c / nk[:, None], EPS, 1.0),
        )

    # -- initialisation -------------------------------------------------------------------------
    def _initial_resp(
        self,
        z: np.ndarray,
        y: np.ndarray,
        y_hat: np.ndarray,
        c: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """(N, K) starting responsibilities."""
        seed = int(rng.integers(2**31 - 1))
        if self.init == "confusion":
            return self._confusion_resp(y, y_hat, np.random.default_rng(seed))
        extra = [np.sqrt(self.y_weight) * y, np.sqrt(self.y_hat_weight) * y_hat]
        cats = c * np.sqrt(self._categorical_weights(c))
        x = np.column_stack([z * np.sqrt(self._dim_weights(z)), *extra, cats])
        labels = KMeans(self.n_slices, n_init=1, random_state=seed).fit(x).labels_
        return np.eye(self.n_slices)[labels]

    def _confusion_resp(
        self, y: np.ndarray, y_hat: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Domino's start: component k belongs to confusion cell k mod 4 (+ a little noise)."""
        cell = 2 * np.rint(y).astype(int) + (y_hat >= 0.5).astype(int)  # (N,) in 0..3
        resp = (np.arange(self.n_slices)[None] % 4 == cell[:, None]).astype(float)
        resp[resp.sum(axis=1) == 0] = 1.0  # fewer than 4 components: cell not covered
        resp /= resp.sum(axis=1, keepdims=True)
        resp += self.confusion_noise * rng.random(resp.shape)
        return resp / resp.sum(axis=1, keepdims=True)

    # -- helpers --------------------------------------------------------------------------------
    def _dim_weights(self, z: np.ndarray) -> np.ndarray:
        """(d,) weights of the embedding dimensions (ones by default)."""
        if self.dim_weights is None:
            return np.ones(z.shape[1])
        if len(self.dim_weights) != z.shape[1]:
            raise ValueError(f"{len(self.dim_weights)} dim_weights for {z.shape[1]} dimensions")
        return self.dim_weights

    def _categorical_weights(self, c: np.ndarray) -> np.ndarray:
        """(C,) weights of the categorical columns (ones by default)."""
        if self.categorical_weights is None:
            return np.ones(c.shape[1])
        if len(self.categorical_weights) != c.shape[1]:
            n, m = len(self.categorical_weights), c.shape[1]
            raise ValueError(f"{n} categorical_weights for {m} categorical columns")
        return self.categorical_weights

    def _fitted(self) -> _Params:
        if "_params" not in self.__dict__:
            raise RuntimeError("ErrorAwareMixture is not fitted; call fit() first")
        return self._params

    def _check(
        self, z: np.ndarray, y: np.ndarray, y_hat: np.ndarray, categorical: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Validated float arrays; ``categorical`` as (N, 0) when None."""
        z = np.asarray(z, dtype=float)
        y, y_hat = np.asarray(y, dtype=float).ravel(), np.asarray(y_hat, dtype=float).ravel()
        if z.ndim != 2 or not len(z) == len(y) == len(y_hat):
            raise ValueError(f"need (N, d), (N,), (N,); got {z.shape}, {y.shape}, {y_hat.shape}")
        c = np.zeros((len(z), 0)) if categorical is None else np.asarray(categorical, float)
        if c.ndim != 2 or len(c) != len(z):
            raise ValueError(f"categorical must be (N, C) with N = {len(z)}; got {c.shape}")
        for name, arr in (
            ("embeddings", z),
            ("labels", y),
            ("predictions", y_hat),
            ("categorical", c),
        ):
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} contain NaN or inf")
        if ((y < 0) | (y > 1)).any() or ((y_hat < 0) | (y_hat > 1)).any():
            raise ValueError("labels and predictions must lie in [0, 1]")
        if ((c < 0) | (c > 1)).any():
            raise ValueError("categorical columns must be one-hot (values in [0, 1])")
        self._dim_weights(z)
        self._categorical_weights(c)
        return z, y, y_hat, c


def _positive(weights: np.ndarray | None, name: str) -> np.ndarray | None:
    """``weights`` as a float vector, checked finite and positive (None stays None)."""
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=float).ravel()
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ValueError(f"{name} must be finite and positive")
    return weights
