"""The train-condition x test-condition matrix of the masking audit (Sourget et al.).

Models trained under a masking condition (``data.roi_masking``) are each audited under every
test condition by :func:`spatialspec.audit.masking.audit_masking`; the matrix collects their
AUROC and robust AUROC (with CIs) as ``{row: {test condition: value}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spatialspec.audit.masking_render import matrix_markdown
from spatialspec.runinfo import run_metadata, write_json_atomic, write_text_atomic

__all__ = ["audit_masking_matrix", "write_masking_matrix"]

Checkpoints = Mapping[str, str | Path] | Sequence[str | Path | tuple[str | None, str | Path]]


def audit_masking_matrix(
    checkpoints: Checkpoints, manifest: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Audit several checkpoints: the train-condition x test-condition matrix.

    Each checkpoint's train condition is its config's ``data.roi_masking`` (``original`` when
    unset). Rows are named by the mapping's keys (or a sequence's ``(name, path)`` pairs);
    bare paths get ``<method>_<train condition>`` (``_2``, ``_3`` ... on repeats).

    Args:
        checkpoints: The checkpoints, named or not.
        manifest: Manifest to audit on (default: each run's).
        **options: Options of :func:`~spatialspec.audit.masking.audit_masking`, applied to
            every checkpoint.

    Returns:
        ``rows``, ``columns`` (test conditions), ``train_conditions`` / ``methods`` /
        ``checkpoints`` / ``manifests`` per row, ``robust_auroc``, ``robust_auroc_ci``,
        ``auroc``, ``auroc_ci`` as ``{row: {test condition: value}}``, ``config``,
        ``metadata``, and ``audits`` (each row's audit result).
    """
    from spatialspec.audit.masking import audit_masking

    items = _items(checkpoints)
    if not items:
        raise ValueError("no checkpoint to audit")
    audits: dict[str, dict[str, Any]] = {}
    for name, path in items:
        result = audit_masking(path, manifest, **options)
        default = f"{result['method']}_{result['train_condition']['condition']}"
        audits[_unique(name or default, audits)] = result
    config = {k: v for k, v in options.items() if k != "metadata_columns"}
    return _matrix(audits, {**config, "manifest": None if manifest is None else str(manifest)})


def _items(checkpoints: Checkpoints) -> list[tuple[str | None, str | Path]]:
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
        return {r: {c: audits[r]["conditions"].get(c, {}).get(key) for c in columns} for r in rows}

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


def write_masking_matrix(matrix: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Each audit into ``out_dir/<row>/``, then ``masking_matrix.json`` and ``.md``."""
    from spatialspec.audit.masking import write_masking

    out = Path(out_dir)
    paths = []
    for row, result in matrix["audits"].items():
        paths += write_masking(result, out / row)
    summary = {k: v for k, v in matrix.items() if k != "audits"}
    summary["audit_folders"] = {row: str(out / row) for row in matrix["audits"]}
    paths.append(write_json_atomic(out / "masking_matrix.json", summary))
    paths.append(write_text_atomic(out / "masking_matrix.md", matrix_markdown(matrix)))
    return paths
