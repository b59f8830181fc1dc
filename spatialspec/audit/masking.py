"""ROI-masking audit ("Mask of truth", Sourget et al.): scores with parts of the image filled.

A trained model is scored on the test images under each condition of
:mod:`spatialspec.data.roi` (``original``, ``roi_removed``, ``roi_only``,
``spurious_removed``), and each condition gets its AUROC and robust AUROC with bootstrap CIs.
A model that still separates the classes with the pathology removed reads something else (the
shortcut); one that keeps its robust AUROC with the spurious region removed did not need it.

Filling works on intensities in [0, 1] (``x = x_norm * STD + MEAN``); only filled pixels are
written back (re-normalised), so every other pixel is unchanged bit for bit.

Models trained under a condition (``data.roi_masking``) are crossed with the test conditions by
:func:`audit_masking_matrix`: the train-condition x test-condition matrix of Sourget et al.

Outputs (:func:`write_masking`): ``masking.json``, ``masking.md``, ``masking.png`` (example
images per condition above a bar chart of AUROC / robust AUROC per condition); with several
checkpoints (:func:`write_masking_matrix`) one such folder per checkpoint plus
``masking_matrix.json`` and ``masking_matrix.md``.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spatialspec.audit.base import Audit, AuditResult, fmt, register_audit, write_result
from spatialspec.audit.common import AuditSet, load_audit_set, load_model
from spatialspec.audit.metadata_reference import metadata_reference
from spatialspec.data.dataset import MEAN, STD
from spatialspec.data.io import atomic_open
from spatialspec.data.roi import (
    CONDITIONS,
    DEFAULT_DILATE,
    FILLS,
    REGIONS,
    check_masking,
    condition_region,
    fill_values,
    image_rng,
)
from spatialspec.evaluation.render import format_ci
from spatialspec.evaluation.report import build_report
from spatialspec.methods import SpatialMethod
from spatialspec.runinfo import run_metadata, write_json_atomic, write_text_atomic

__all__ = [
    "CONDITIONS",
    "add_masking_parser",
    "audit_masking",
    "audit_masking_matrix",
    "mask_images",
    "masking_markdown",
    "matrix_markdown",
    "run_masking",
    "write_masking",
    "write_masking_matrix",
]

#: One line per condition, for reports.
DESCRIPTIONS = {
    "original": "the test images as they are",
    "roi_removed": "the pathology region (ROI) filled",
    "roi_only": "everything outside the ROI filled (with the background's statistics); images "
    "without a ROI are filled entirely",
    "spurious_removed": "the spurious region (dilated) filled where a spurious mask exists",
}
#: Example rows of the figure: (label, spurious) cells, in this order, where present.
EXAMPLE_CELLS = {
    "positive + spurious": (1, 1.0),
    "positive, no spurious": (1, 0.0),
    "negative + spurious": (0, 1.0),
    "negative, no spurious": (0, 0.0),
}
_METRICS = ("auroc", "auroc_ci", "robust_auroc", "robust_auroc_ci", "n", "n_robust")


# ------------------------------------------------------------------------------- masking


def mask_images(
    images: torch.Tensor,
    region_masks: torch.Tensor | np.ndarray,
    fill: str = "mean",
    seed: int = 0,
    image_ids: Sequence[str] | None = None,
    reference_masks: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Fill a region of each normalised image (a new tensor; the input is untouched).

    Args:
        images: (N, C, H, W) normalised images, ``(x - MEAN) / STD``.
        region_masks: (N, H, W) bool, True where the image is filled.
        fill: ``mean`` or ``noise`` (mean / std per channel of the reference pixels, in
            [0, 1]; noise clipped to [0, 1]) or ``zero`` (intensity 0).
        seed: Seed of the noise.
        image_ids: Seed the noise per image id (as the training-time option does), so an
            image gets the same noise in any batch; without, per position in ``images``.
        reference_masks: (N, H, W) bool pixels whose statistics set the fill (default: those
            not filled); the whole image where a reference selects no pixel.

    Returns:
        (N, C, H, W) normalised images; pixels outside the regions equal the input's exactly.

    Raises:
        ValueError: On an unknown fill or mismatched shapes.
    """
    check_masking(None, fill=fill)
    regions = _bool_masks(region_masks, images)
    references = None if reference_masks is None else _bool_masks(reference_masks, images)
    out = images.detach().cpu().clone()
    raw = out.numpy() * np.float32(STD) + np.float32(MEAN)  # (N, C, H, W) in [0, 1]
    for i, region in enumerate(regions):
        if not region.any():
            continue
        rng = _rng(seed, i, image_ids) if fill == "noise" else None
        reference = None if references is None else references[i]
        values = fill_values(raw[i].transpose(1, 2, 0), region, fill, rng, reference)  # (K, C)
        normalised = values.T * np.float32(1 / STD) - np.float32(MEAN / STD)  # (C, K)
        out[i][:, torch.from_numpy(region)] = torch.from_numpy(np.ascontiguousarray(normalised))
    return out.to(images.device)


def _bool_masks(masks: torch.Tensor | np.ndarray, images: torch.Tensor) -> np.ndarray:
    """(N, H, W) bool NumPy masks matching (N, C, H, W) images (ValueError otherwise)."""
    out = np.asarray(torch.as_tensor(masks).cpu(), dtype=bool)
    if images.ndim != 4 or out.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"expected images (N, C, H, W) and masks (N, H, W), got {tuple(images.shape)} "
            f"and {out.shape}"
        )
    return out


def _rng(seed: int, index: int, image_ids: Sequence[str] | None) -> np.random.Generator:
    if image_ids is None:
        return np.random.default_rng([seed, index])
    return image_rng(seed, image_ids[index])


def condition_masks(
    audit: AuditSet,
    condition: str,
    rows: Sequence[int] | np.ndarray,
    region: str = "mask",
    dilate: int = DEFAULT_DILATE,
) -> tuple[np.ndarray, np.ndarray]:
    """The pixels ``condition`` fills in the audit images ``rows``, and the fill's reference.

    Returns:
        ``(filled, reference)``, each (len(rows), S, S) bool (see
        :func:`spatialspec.data.roi.condition_region`).
    """
    shape = tuple(audit.images.shape[2:])
    pairs = [
        condition_region(
            condition,
            audit.roi_masks[i] if audit.has_roi_mask[i] else None,
            audit.spurious_masks[i] if audit.has_spurious_mask[i] else None,
            shape,
            region,
            dilate,
        )
        for i in rows
    ]
    if not pairs:
        empty = np.zeros((0, *shape), dtype=bool)
        return empty, empty.copy()
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# --------------------------------------------------------------------------------- audit


def audit_masking(
    checkpoint: str | Path,
    manifest: str | Path | None = None,
    split: str = "test",
    conditions: Sequence[str] = CONDITIONS,
    region: str = "mask",
    fill: str = "mean",
    limit: int | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    dilate: int = DEFAULT_DILATE,
    metadata_columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on one split under each masking condition.

    Args:
        checkpoint: A spatialspec checkpoint.
        manifest: Manifest to audit on (default: the run's).
        split: Split to audit.
        conditions: Conditions of :data:`CONDITIONS`; ``original`` gives the drops.
        region: ``mask`` or ``box``: the ROI as its mask or its filled boxes.
        fill: ``mean``, ``noise`` or ``zero``.
        limit: Audit a seeded random subset of this many images.
        n_resamples: Bootstrap resamples of the CIs.
        seed: Seed of the subset, the bootstrap and the noise.
        batch_size: Images scored at once.
        dilate: Pixels by which spurious masks are grown.
        metadata_columns: Manifest columns of the metadata-only reference
            (:mod:`spatialspec.audit.metadata_reference`); None: ``spurious`` when the manifest
            knows it for some rows; an empty list: no reference.

    Returns:
        ``conditions`` (per condition: auroc, robust_auroc and CIs, n, n_robust, n_altered,
        mean scores of positives / negatives / subgroups, drops vs ``original`` =
        original - condition), ``examples`` (scores of the figure's images), ``config``,
        ``checkpoint``, ``manifest``, ``method``, ``train_condition``, ``metadata``,
        ``metadata_reference`` (None without columns); and
        ``_example_images`` (arrays for the figure; not written to JSON).
    """
    conditions = _check_conditions(conditions, region, fill)
    method, config, data = load_model(checkpoint, manifest)
    audit = load_audit_set(data, split, limit=limit, seed=seed)
    settings = {"region": region, "fill": fill, "dilate": dilate, "seed": seed}
    scores, results = {}, {}
    for condition in conditions:
        scores[condition], altered = _score_condition(
            method, audit, condition, batch_size, settings
        )
        results[condition] = _summary(scores[condition], audit, altered, n_resamples, seed)
    _add_drops(results)
    rows = _example_rows(audit)
    run = {"limit": limit, "n_resamples": n_resamples, "batch_size": batch_size}
    descriptions = {c: DESCRIPTIONS[c] for c in conditions}
    reference = _metadata_reference(data, metadata_columns, split, n_resamples, seed)
    return {
        "split": split,
        "n": len(audit),
        "conditions": results,
        "examples": _examples(audit, rows, scores),
        "config": {"conditions": conditions, **settings, **run, "descriptions": descriptions},
        "checkpoint": str(checkpoint),
        "manifest": str(data.manifest_path),
        "method": _method_name(config, method),
        "pooling": method.hparams.get("pooling"),
        "train_condition": train_condition(config),
        "metadata_reference": reference,
        "metadata": run_metadata(audit="masking"),
        "_example_images": _example_images(audit, rows, conditions, settings),
    }


def _metadata_reference(
    data: Any, columns: Sequence[str] | None, split: str, n_resamples: int, seed: int
) -> dict[str, Any] | None:
    from spatialspec.data.manifest import load_manifest

    frame = getattr(data, "frame", None)
    if frame is None or "split" not in frame:
        if columns is None and not Path(data.manifest_path).is_file():
            return None  # nothing to fit the default reference on
        frame = load_manifest(data.manifest_path, check_files=False)
    if columns is None:
        spurious = pd.to_numeric(frame.get("spurious", pd.Series(dtype=float)), errors="coerce")
        columns = ["spurious"] if spurious.isin([0, 1]).any() else []
    if not columns:
        return None
    return metadata_reference(frame, columns, split=split, n_resamples=n_resamples, seed=seed)


def _check_conditions(conditions: Sequence[str], region: str, fill: str) -> list[str]:
    conditions = list(conditions)
    if not conditions:
        raise ValueError("no masking condition to audit")
    for condition in conditions:
        check_masking(condition, region, fill)
    return conditions


def train_condition(config: Mapping[str, Any]) -> dict[str, Any]:
    """The masking a run was trained under (``data.roi_masking``; ``original`` if none)."""
    data = config.get("data") or {}
    return {
        "condition": data.get("roi_masking") or "original",
        "region": data.get("roi_masking_region", "mask"),
        "fill": data.get("roi_masking_fill", "mean"),
    }


def _method_name(config: Mapping[str, Any], method: SpatialMethod) -> str:
    from spatialspec.methods import METHODS

    return str(config.get("method") or METHODS.name_of(type(method)))


def _score_condition(
    method: SpatialMethod,
    audit: AuditSet,
    condition: str,
    batch_size: int,
    settings: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) scores under ``condition`` and (N,) whether each image was altered."""
    scores, altered = [], []
    for start in range(0, len(audit), batch_size):
        rows = np.arange(start, min(start + batch_size, len(audit)))
        images, filled = _masked(audit, condition, rows, settings)
        with torch.inference_mode():
            scores.append(method.score(images).float().cpu().numpy())
        altered.append(filled.any(axis=(1, 2)))
    return np.concatenate(scores).astype(float), np.concatenate(altered)


def _masked(
    audit: AuditSet, condition: str, rows: np.ndarray, settings: Mapping[str, Any]
) -> tuple[torch.Tensor, np.ndarray]:
    """The audit images ``rows`` under ``condition`` (normalised), and the filled pixels."""
    filled, reference = condition_masks(
        audit, condition, rows, settings["region"], settings["dilate"]
    )
    ids = [audit.image_ids[i] for i in rows]
    images = mask_images(
        audit.images[rows], filled, settings["fill"], settings["seed"], ids, reference
    )
    return images, filled


def _summary(
    scores: np.ndarray, audit: AuditSet, altered: np.ndarray, n_resamples: int, seed: int
) -> dict[str, Any]:
    """The metrics kept for one condition."""
    report = build_report(scores, audit.labels, audit.spurious, n_resamples=n_resamples,
                          seed=seed)  # fmt: skip
    labels = audit.labels
    return {
        **{k: report[k] for k in _METRICS},
        "n_altered": int(altered.sum()),
        "mean_score_positive": _mean(scores[labels == 1]),
        "mean_score_negative": _mean(scores[labels == 0]),
        "subgroup_mean_score": {k: g["mean_score"] for k, g in report["subgroups"].items()},
    }


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _add_drops(results: dict[str, dict[str, Any]]) -> None:
    """``auroc_drop`` / ``robust_auroc_drop``: original minus condition (None if undefined)."""
    base = results.get("original")
    for result in results.values():
        for key in ("auroc", "robust_auroc"):
            ok = base is not None and base[key] is not None and result[key] is not None
            result[f"{key}_drop"] = float(base[key] - result[key]) if ok else None


def _example_rows(audit: AuditSet) -> dict[str, int]:
    """One image per (label, spurious) cell of :data:`EXAMPLE_CELLS` (positives with a ROI)."""
    rows = {}
    for name, (label, spurious) in EXAMPLE_CELLS.items():
        cell = (audit.labels == label) & (audit.spurious == spurious)
        if label == 1 and (cell & audit.has_roi_mask).any():
            cell &= audit.has_roi_mask
        if spurious == 1 and (cell & audit.has_spurious_mask).any():
            cell &= audit.has_spurious_mask
        if cell.any():
            rows[name] = int(np.flatnonzero(cell)[0])
    return rows


def _examples(
    audit: AuditSet, rows: Mapping[str, int], scores: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Id, label, spurious attribute and per-condition scores of the figure's images."""
    return [
        {
            "name": name,
            "image_id": audit.image_ids[i],
            "label": int(audit.labels[i]),
            "spurious": None if np.isnan(audit.spurious[i]) else int(audit.spurious[i]),
            "scores": {c: float(values[i]) for c, values in scores.items()},
        }
        for name, i in rows.items()
    ]


def _example_images(
    audit: AuditSet,
    rows: Mapping[str, int],
    conditions: Sequence[str],
    settings: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """Per condition, (K, S, S[, 3]) intensities in [0, 1] of the example images."""
    index = np.array(list(rows.values()), dtype=int)
    out = {}
    for condition in conditions:
        images = _masked(audit, condition, index, settings)[0].numpy() * STD + MEAN  # (K,C,S,S)
        images = np.clip(images.transpose(0, 2, 3, 1), 0.0, 1.0)
        out[condition] = images[..., 0] if images.shape[-1] == 1 else images
    return out


# ------------------------------------------------------------------------------- matrix


def audit_masking_matrix(
    checkpoints: Mapping[str, str | Path] | Sequence[str | Path | tuple[str, str | Path]],
    manifest: str | Path | None = None,
    split: str = "test",
    conditions: Sequence[str] = CONDITIONS,
    region: str = "mask",
    fill: str = "mean",
    limit: int | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    dilate: int = DEFAULT_DILATE,
    metadata_columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Audit several checkpoints: the train-condition x test-condition matrix.

    Each checkpoint's train condition is its config's ``data.roi_masking`` (``original`` when
    unset). Rows are named by the mapping's keys (or a sequence's ``(name, path)`` pairs);
    bare paths get ``<method>_<train condition>`` (``_2``, ``_3`` ... on repeats). The other
    arguments are as in :func:`audit_masking` and apply to every checkpoint.

    Returns:
        ``rows``, ``columns`` (test conditions), ``train_conditions`` / ``methods`` /
        ``checkpoints`` / ``manifests`` per row, ``robust_auroc``, ``robust_auroc_ci``,
        ``auroc``, ``auroc_ci`` as ``{row: {test condition: value}}``, ``config``,
        ``metadata``, and ``audits`` (each row's :func:`audit_masking` result).
    """
    items = _items(checkpoints)
    if not items:
        raise ValueError("no checkpoint to audit")
    kwargs = {"manifest": manifest, "split": split, "conditions": conditions, "region": region,
              "fill": fill, "limit": limit, "n_resamples": n_resamples, "seed": seed,
              "batch_size": batch_size, "dilate": dilate}  # fmt: skip
    audits: dict[str, dict[str, Any]] = {}
    for name, path in items:
        result = audit_masking(path, **kwargs, metadata_columns=metadata_columns)
        default = f"{result['method']}_{result['train_condition']['condition']}"
        audits[_unique(name or default, audits)] = result
    return _matrix(audits, {**kwargs, "manifest": None if manifest is None else str(manifest)})


def _items(
    checkpoints: Mapping[str, str | Path] | Sequence[str | Path | tuple[str | None, str | Path]],
) -> list[tuple[str | None, str | Path]]:
    """(name or None, path) pairs; a sequence may hold paths or (name or None, path) pairs."""
    if isinstance(checkpoints, Mapping):
        return list(checkpoints.items())
    return [tuple(c) if isinstance(c, tuple) else (None, c) for c in checkpoints]


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def _matrix(audits: dict[str, dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    rows = list(audits)
    columns = list(next(iter(audits.values()))["config"]["conditions"])

    def table(key: str) -> dict[str, dict[str, Any]]:
        return {r: {c: audits[r]["conditions"][c][key] for c in columns} for r in rows}

    return {
        "rows": rows,
        "columns": columns,
        "train_conditions": {r: audits[r]["train_condition"] for r in rows},
        "methods": {r: audits[r]["method"] for r in rows},
        "checkpoints": {r: audits[r]["checkpoint"] for r in rows},
        "manifests": {r: audits[r]["manifest"] for r in rows},
        **{key: table(key) for key in ("robust_auroc", "robust_auroc_ci", "auroc", "auroc_ci")},
        "config": config,
        "metadata": run_metadata(audit="masking_matrix"),
        "audits": audits,
    }


# ------------------------------------------------------------------------------ rendering


def masking_markdown(result: Mapping[str, Any]) -> str:
    """One audit as Markdown: settings, then one table row per condition."""
    cfg, train = result["config"], result["train_condition"]
    lines = [
        "# ROI-masking audit (Mask of truth)",
        "",
        f"- checkpoint `{result['checkpoint']}` (method `{result['method']}`, trained on "
        f"`{train['condition']}`), manifest `{result['manifest']}`",
        f"- split `{result['split']}`, n = {result['n']}"
        + (f" (random subset, limit {cfg['limit']})" if cfg["limit"] else ""),
        f"- ROI region `{cfg['region']}`, fill `{cfg['fill']}`, spurious masks dilated by "
        f"{cfg['dilate']} px",
        "",
        "| condition | images altered | robust AUROC [95 % CI] | Δ robust | AUROC [95 % CI] "
        "| Δ AUROC | mean score pos. | mean score neg. |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for name, c in result["conditions"].items():
        lines.append(
            f"| {name} | {c['n_altered']} | "
            f"{format_ci(c['robust_auroc'], c['robust_auroc_ci'])} | "
            f"{_signed(c['robust_auroc_drop'])} | {format_ci(c['auroc'], c['auroc_ci'])} | "
            f"{_signed(c['auroc_drop'])} | {_fmt(c['mean_score_positive'])} | "
            f"{_fmt(c['mean_score_negative'])} |"
        )
    lines += ["", "Δ = original − condition (positive: the condition hurts).", ""]
    lines += [f"- `{c}`: {d}" for c, d in cfg["descriptions"].items()]
    lines += _reference_lines(result.get("metadata_reference"))
    lines += ["", f"95 % CIs: {cfg['n_resamples']} bootstrap resamples (seed {cfg['seed']})."]
    meta = result.get("metadata", {})
    lines.append(f"git commit `{meta.get('git_commit')}`, created {meta.get('created')}.")
    return "\n".join(lines) + "\n"


def _reference_lines(ref: Mapping[str, Any] | None) -> list[str]:
    """The metadata-only reference: what the chosen manifest columns alone achieve."""
    if not ref:
        return []
    robust = ref["robust_auroc"]
    return [
        "",
        f"Metadata-only reference (logistic regression on `{', '.join(ref['columns'])}`, fit "
        f"on {ref['fit_split']}, {ref['n_scored']} {ref['split']} images scored, "
        f"{ref['n_skipped']} rows without the columns left out): robust AUROC "
        f"{'–' if robust is None else format_ci(robust, ref['robust_auroc_ci'])}, AUROC "
        f"{format_ci(ref['auroc'], ref['auroc_ci'])}. An image model close to it is reading "
        "what these columns encode.",
    ]


def matrix_markdown(matrix: Mapping[str, Any]) -> str:
    """The train-condition x test-condition matrix as two Markdown tables."""
    lines = ["# ROI-masking matrix: train condition x test condition", ""]
    if len(set(matrix["manifests"].values())) > 1:
        lines += ["**Warning**: the checkpoints were audited on different manifests.", ""]
    for key, title in (("robust_auroc", "Robust AUROC"), ("auroc", "AUROC")):
        lines += [f"## {title} [95 % CI]", "", _matrix_header(matrix["columns"])]
        for row in matrix["rows"]:
            cells = [format_ci(matrix[key][row][c], matrix[f"{key}_ci"][row][c])
                     for c in matrix["columns"]]  # fmt: skip
            train = matrix["train_conditions"][row]["condition"]
            lines.append(f"| {row} | {train} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Rows: trained under `data.roi_masking` (train condition); columns: test condition."]
    return "\n".join(lines) + "\n"


def _matrix_header(columns: Sequence[str]) -> str:
    head = "| model | train condition | " + " | ".join(f"test: {c}" for c in columns) + " |"
    return head + "\n|---|---|" + "---|" * len(columns)


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def plot_masking(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`masking_figure` to ``path`` (atomically); returns it."""
    with atomic_open(path, "wb") as fh:
        fh.write(masking_figure(result))
    return Path(path)


def masking_figure(result: Mapping[str, Any]) -> bytes:
    """PNG: example images per condition (with their scores) above a bar chart of the AUROCs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(result["conditions"])
    examples = result.get("examples", [])
    images = result.get("_example_images", {})
    n_rows, n_cols = len(examples) if images else 0, len(conditions)
    fig = plt.figure(figsize=(1.2 + 1.9 * n_cols, 2.0 * n_rows + 3.2), dpi=110)
    grid = fig.add_gridspec(n_rows + 1, n_cols, height_ratios=[1.0] * n_rows + [1.6])
    for r, example in enumerate(examples if images else []):
        for c, condition in enumerate(conditions):
            ax = fig.add_subplot(grid[r, c])
            _show(ax, images[condition][r], example, condition, r == 0, c == 0)
    _bars(fig.add_subplot(grid[n_rows, :]), result["conditions"])
    fig.suptitle(f"ROI masking: {result['method']} ({result['split']})", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _show(ax: Any, image: np.ndarray, example: dict[str, Any], condition: str, top: bool,
          left: bool) -> None:  # fmt: skip
    """One example panel: the image, its score below, the condition above the top row."""
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"score {example['scores'][condition]:.3f}", fontsize=7)
    if top:
        ax.set_title(condition, fontsize=8)
    if left:
        ax.set_ylabel(example["name"], fontsize=7)


def _bars(ax: Any, conditions: Mapping[str, dict[str, Any]]) -> None:
    """Grouped bars of AUROC and robust AUROC (95 % CI) per condition."""
    names = list(conditions)
    x = np.arange(len(names))
    for offset, key, colour in ((-0.18, "auroc", "#9aa5b1"), (0.18, "robust_auroc", "#d1495b")):
        vals = np.array([_nan(conditions[n][key]) for n in names])
        ci = np.array([[_nan(v) for v in conditions[n][f"{key}_ci"]] for n in names])
        err = np.nan_to_num(np.stack([vals - ci[:, 0], ci[:, 1] - vals]))
        label = "AUROC" if key == "auroc" else "robust AUROC"
        ax.bar(x + offset, np.nan_to_num(vals), 0.36, yerr=err, capsize=3, color=colour,
               label=label)  # fmt: skip
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AUROC (95 % CI)", fontsize=8)
    ax.legend(loc="lower right", fontsize=7)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _public(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON part of a result (no ``_``-prefixed arrays)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def write_masking(result: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``masking.json``, ``masking.md`` and ``masking.png`` into ``out_dir``."""
    return write_result(MaskingAudit(), AuditResult("masking", dict(result)), out_dir)


def write_masking_matrix(matrix: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Each audit into ``out_dir/<row>/``, then ``masking_matrix.json`` and ``.md``."""
    out = Path(out_dir)
    paths = []
    for row, result in matrix["audits"].items():
        paths += write_masking(result, out / row)
    summary = {k: v for k, v in matrix.items() if k != "audits"}
    summary["audit_folders"] = {row: str(out / row) for row in matrix["audits"]}
    paths.append(write_json_atomic(out / "masking_matrix.json", summary))
    paths.append(write_text_atomic(out / "masking_matrix.md", matrix_markdown(matrix)))
    return paths


# ---------------------------------------------------------------------------------- CLI


def add_masking_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``masking`` to the ``audit`` subcommands; returns its parser."""
    p = sub.add_parser(
        "masking",
        help="scores with the ROI / spurious region filled (Mask of truth)",
        description="Score checkpoints with the ROI removed, only the ROI kept or the spurious "
        "region removed. Several --checkpoint: one audit folder each under --out plus the "
        "train-condition x test-condition matrix (masking_matrix.json/.md).",
    )
    p.add_argument("--checkpoint", action="append", required=True, metavar="[NAME=]CKPT",
                   help="a spatialspec checkpoint; repeat for the matrix (NAME names its row "
                        "and folder; default <method>_<train condition>)")  # fmt: skip
    p.add_argument("--manifest", help="manifest.csv (default: each run's)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--conditions", default=",".join(CONDITIONS),
                   help="comma-separated test conditions (default: all)")  # fmt: skip
    p.add_argument("--region", default="mask", choices=REGIONS,
                   help="ROI as its mask or its filled bounding boxes")  # fmt: skip
    p.add_argument("--fill", default="mean", choices=FILLS,
                   help="mean / noise (stats of the kept pixels) or zero")  # fmt: skip
    p.add_argument("--dilate", type=int, default=DEFAULT_DILATE,
                   help="pixels by which spurious masks are grown")  # fmt: skip
    p.add_argument("--metadata-columns", default=None, metavar="COLS",
                   help="manifest columns of the metadata-only reference (logistic regression "
                   "fit on train); default spurious when known; '' for none")  # fmt: skip
    p.add_argument("--limit", type=int, help="audit a seeded random subset of N images")
    p.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="subset, bootstrap and noise seed")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="output folder")
    return p


def run_masking(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``audit masking`` from parsed arguments; prints a summary, returns the result."""
    checkpoints = [_named(value) for value in args.checkpoint]
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    kwargs = {"manifest": args.manifest, "split": args.split, "region": args.region,
              "fill": args.fill, "limit": args.limit, "n_resamples": args.n_resamples,
              "seed": args.seed, "batch_size": args.batch_size, "dilate": args.dilate,
              "conditions": conditions,
              "metadata_columns": _columns(getattr(args, "metadata_columns", None))}  # fmt: skip
    if len(checkpoints) == 1:
        result = audit_masking(checkpoints[0][1], **kwargs)
        paths = write_masking(result, args.out)
        _print_audit(result)
    else:
        result = audit_masking_matrix(checkpoints, **kwargs)
        paths = write_masking_matrix(result, args.out)
        print(matrix_markdown(result), end="")
    print("wrote " + ", ".join(str(p) for p in paths[-3:]))
    return result


def _columns(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def _named(value: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare path (or an existing file with ``=``): (None, it)."""
    name, sep, path = value.partition("=")
    if sep and name and not Path(value).exists():
        return name, path
    return None, value


def _print_audit(result: Mapping[str, Any]) -> None:
    for name, c in result["conditions"].items():
        print(
            f"{name:17s} robust AUROC {format_ci(c['robust_auroc'], c['robust_auroc_ci'])}  "
            f"AUROC {format_ci(c['auroc'], c['auroc_ci'])}  altered {c['n_altered']}/{c['n']}"
        )


# ---------------------------------------------------------------------------------- the audit


@register_audit
class MaskingAudit(Audit):
    """``masking``: scores with the ROI / spurious region filled (Mask of truth)."""

    name = "masking"
    table_order = 2

    compute = staticmethod(audit_masking)

    def headline(self, result: AuditResult) -> dict[str, Any]:
        data = result.data
        conditions = data["conditions"]
        return {
            "method": data.get("method"),
            "masking": {name: c["robust_auroc"] for name, c in conditions.items()},
            "masking_auroc": {name: c["auroc"] for name, c in conditions.items()},
            "masking_drop": {name: c["robust_auroc_drop"] for name, c in conditions.items()},
        }

    def summary_columns(self, headline: Mapping[str, Any]) -> dict[str, str]:
        return {f"robust AUROC: {c}": fmt(v) for c, v in headline["masking"].items()}

    def json_ready(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return _public(data)

    def markdown(self, data: Mapping[str, Any]) -> str:
        return masking_markdown(data)

    def figures(self, data: Mapping[str, Any]) -> dict[str, bytes]:
        return {"masking.png": masking_figure(data)}

    def add_arguments(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        return add_masking_parser(sub)

    def run_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        return run_masking(args)
