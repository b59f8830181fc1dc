"""The ``slices`` audit: Domino-style slice discovery, multimodal, evaluated as Domino.

Domino (Eyuboglu et al., *Domino: Discovering Systematic Errors with Cross-Modal Embeddings*,
ICLR 2022) fits an *error-aware mixture model* to embeddings together with the labels Y and the
predictions Ŷ, so that each mixture component — a *slice* — is coherent both in embedding space
and in the kind of mistake the model makes. This audit, on one checkpoint and one split:

1. embeds the split's images with the model (:mod:`spatialspec.audit.embeddings`) and fits the
   mixture (:mod:`spatialspec.audit.mixture`; γ = γ̂ = 10, soft Ŷ) on the split itself, ranking
   slices by error gap and scoring them against the anti-correlated subgroup
   (:mod:`spatialspec.audit.slices_discover`; keys ``slices``, ``top_slice``, ``best_slice``);
2. evaluates slices as Domino does (:mod:`spatialspec.audit.slice_eval`): reduction and mixture
   fitted on val and applied to the split; per known subgroup (anti-correlated, ``spurious ==
   1``, ``spurious == 0``) the best slice or complement by average precision, with P@10, P@25
   and precision / recall / F1 — once per *modality set*: ``image`` (the model's embeddings),
   ``text`` (a report column, TF-IDF + SVD or a local sentence encoder), ``metadata`` (manifest
   columns) and ``combined`` (all of them, weighted; :mod:`spatialspec.audit.modalities`);
   key ``modality_evaluation`` (the image set also as ``subgroup_evaluation``);
3. describes every slice by the report tokens and metadata values most enriched in it, or
   depleted, with counts (:mod:`spatialspec.audit.describe`), in place of Domino's CLIP text.

Markdown and figure: :mod:`spatialspec.audit.slices_render`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from spatialspec.audit.base import Audit, AuditResult, fmt, register_audit, write_result
from spatialspec.audit.describe import SliceDescriber
from spatialspec.audit.embeddings import embed, reduce_embeddings
from spatialspec.audit.mixture import DEFAULT_WEIGHT, ErrorAwareMixture
from spatialspec.audit.modalities import (
    DEFAULT_METADATA_COLUMNS,
    DEFAULT_TEXT_COLUMN,
    MODALITIES,
    modality_blocks,
    parse_modalities,
    parse_weights,
)
from spatialspec.audit.slice_eval import SplitData, evaluate_modality_sets
from spatialspec.audit.slices_discover import (
    anti_correlated,
    discover_slices,
    fit_slices,
    rank_slices,
    subgroup_overlap,
)
from spatialspec.audit.slices_render import (
    image_rows,
    plot_slices,
    slices_markdown,
    top_slice_examples,
)
from spatialspec.runinfo import run_metadata

__all__ = [
    "DEFAULT_WEIGHT",
    "MODALITY_SETS",
    "ErrorAwareMixture",
    "SlicesAudit",
    "add_slices_parser",
    "anti_correlated",
    "audit_slices",
    "discover_slices",
    "embed",
    "fit_slices",
    "plot_slices",
    "rank_slices",
    "reduce_embeddings",
    "run_slices",
    "slices_ap",
    "slices_markdown",
    "subgroup_overlap",
    "write_slices",
]

#: The modality sets of the evaluation (``combined``: every modality used, weighted).
MODALITY_SETS = (*MODALITIES, "combined")
#: The two cells of the anti-correlated subgroup (one label each; see
#: :mod:`spatialspec.audit.slice_eval` for why A's own AP is capped near 0.55).
A_CELLS = ("label == 1 & spurious == 0", "label == 0 & spurious == 1")
TEXT_NOTE = (
    "Domino names slices with CLIP text embeddings; offline, each slice is described by the "
    "report tokens and metadata values most enriched in it (or depleted), with counts."
)


@dataclass
class _Split:
    """A split's model outputs and manifest rows."""

    embeddings: np.ndarray  # (N, D)
    labels: np.ndarray  # (N,)
    scores: np.ndarray  # (N,)
    spurious: np.ndarray  # (N,), NaN where unknown
    frame: pd.DataFrame


def audit_slices(
    checkpoint: str | Path,
    manifest: str | Path | None = None,
    split: str = "test",
    n_slices: int = 8,
    n_components: int = 16,
    y_weight: float = DEFAULT_WEIGHT,
    y_hat_weight: float = DEFAULT_WEIGHT,
    limit: int | None = None,
    seed: int = 0,
    *,
    threshold: float | str = "val",
    features: str = "encoder",
    batch_size: int = 64,
    modalities: str | Sequence[str] = MODALITIES,
    modality_weights: str | Mapping[str, float] | None = None,
    metadata_columns: Sequence[str] | None = None,
    text_column: str | None = None,
    text_encoder: str | Path | None = None,
    describe_min_count: int = 5,
    describe_against: str = "label",
) -> dict[str, Any]:
    """Discover the slices where a checkpoint fails on ``split``, in every modality.

    Args:
        checkpoint: A spatialspec checkpoint.
        manifest: Data to audit (default: the run's own manifest).
        split: Split to embed and slice.
        n_slices: Mixture components (every one is a candidate slice).
        n_components: PCA dimensions of each modality block (and the weights' total, see
            :func:`~spatialspec.audit.modalities.combine_blocks`).
        y_weight: γ, weight of the label term.
        y_hat_weight: γ̂, weight of the prediction term.
        limit: Use a seeded random subset of this many images.
        seed: Subset, PCA, SVD and EM seed.
        threshold: ``"val"`` (Youden's J on the val split; 0.5 if val has one class) or a
            number.
        features: ``"encoder"`` or ``"decoder"`` (dense methods), see :func:`embed`.
        batch_size: Images per forward pass.
        modalities: Modalities evaluated alone and mixed into ``combined``
            (``"image,text,metadata"``); unavailable ones are skipped and reported.
        modality_weights: ``"image=1,text=1,metadata=1"`` or a mapping (shares of the mixture's
            embedding term).
        metadata_columns: Metadata columns (None: ``view``, ``age``, ``sex`` where present).
        text_column: Report column (None: ``report`` where present).
        text_encoder: Folder of a local sentence encoder (None: TF-IDF + SVD).
        describe_min_count: The describer's minimum count of an indicator.
        describe_against: ``"label"``: a slice is described against the other images of its
            majority label (what the label itself brings is not listed); ``"rest"``: against
            every other image.

    Returns:
        :func:`discover_slices`'s dict (image embeddings, fitted on ``split``) plus
        ``metadata``, per-image ``images`` rows, ``modality_evaluation`` (Domino's evaluation
        per modality set), ``subgroup_evaluation`` (its image set), a ``description`` per
        slice, and private ``_examples`` (the top slice's images).
    """
    from spatialspec.audit.common import load_audit_set, load_model

    method, config, data = load_model(checkpoint, manifest)
    audit = load_audit_set(data, split, limit, seed)
    embeddings, scores = embed(method, audit.images, batch_size, features)
    test = _Split(embeddings, audit.labels, scores, audit.spurious, audit.frame)
    val = _val_split(method, data, split, batch_size, features, threshold)
    thr, source = _threshold(threshold, val)
    mixture = {
        "n_slices": n_slices,
        "n_components": n_components,
        "y_weight": y_weight,
        "y_hat_weight": y_hat_weight,
        "seed": seed,
    }
    options = {
        "modalities": parse_modalities(modalities),
        "weights": parse_weights(modality_weights),
        "metadata_columns": metadata_columns,
        "text_column": text_column,
        "text_encoder": text_encoder,
        "min_count": describe_min_count,
        "describe_against": describe_against,
        "features": features,
    }
    with threadpool_limits(limits=1):  # small arrays: BLAS/OpenMP threads cost more than they give
        result = _slice(test, val if split != "val" else None, split, thr, mixture, options)
    result["settings"].update(
        threshold_source=source,
        features=features,
        split=split,
        embedding_dim=int(embeddings.shape[1]),
    )
    result["metadata"] = run_metadata(
        checkpoint=str(checkpoint),
        method=config.get("method"),
        manifest=str(data.manifest_path),
        split=split,
        limit=limit,
    )
    result["images"] = image_rows(result, audit.image_ids, audit.labels, scores, audit.spurious)
    result["_examples"] = top_slice_examples(result, audit.images, audit.image_ids)
    result["note"] = TEXT_NOTE
    return result


def _slice(
    test: _Split,
    val: _Split | None,
    split: str,
    threshold: float,
    mixture: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The image slices fitted on ``split``, the evaluation per modality set, descriptions."""
    result = discover_slices(
        test.embeddings, test.labels, test.scores, test.spurious, threshold=threshold, **mixture
    )
    evaluation, describe = _modality_evaluation(test, val, split, threshold, mixture, options)
    result["modality_evaluation"] = evaluation
    result["subgroup_evaluation"] = _image_evaluation(evaluation, split)
    _describe_main(result, describe)
    return result


def _val_split(
    method: torch.nn.Module,
    data: Any,
    split: str,
    batch_size: int,
    features: str,
    threshold: float | str,
) -> _Split | None:
    """Val embeddings, labels, scores, attribute and rows (one pass for threshold and fit).

    None when neither the threshold nor the val-fitted evaluation needs val, or when val is
    empty and the threshold is given.
    """
    from spatialspec.audit.common import load_audit_set

    if threshold != "val" and split == "val":
        return None
    try:
        val = load_audit_set(data, "val")
    except ValueError:
        if threshold == "val":
            raise
        return None
    emb, scores = embed(method, val.images, batch_size, features)
    return _Split(emb, val.labels, scores, val.spurious, val.frame)


def _threshold(threshold: float | str, val: _Split | None) -> tuple[float, str]:
    """The decision threshold and where it came from."""
    if threshold != "val":
        return float(threshold), "given"
    from spatialspec.evaluation.report import choose_threshold

    if val is None or len(np.unique(val.labels)) < 2:
        return 0.5, "fixed 0.5 (val has one class)"
    return choose_threshold(val.scores, val.labels), "val (Youden's J)"


def _modality_evaluation(
    test: _Split,
    val: _Split | None,
    split: str,
    threshold: float,
    mixture: dict[str, Any],
    options: dict[str, Any],
) -> tuple[dict[str, Any], Any]:
    """Domino's evaluation per modality set, and the describer of the split's slices."""
    mods = options["modalities"]
    fit = val if val is not None else test
    fit_blocks, apply_blocks, info = modality_blocks(
        fit.frame,
        test.frame,
        mods,
        metadata_columns=options["metadata_columns"],
        text_column=options["text_column"],
        text_encoder=options["text_encoder"],
        n_components=mixture["n_components"],
        seed=mixture["seed"],
    )
    if "image" in mods:
        fit_blocks["image"], apply_blocks["image"] = fit.embeddings, test.embeddings
        info["image"] = {
            "status": "used",
            "features": options["features"],
            "embedding_dim": int(test.embeddings.shape[1]),
        }
    used = [m for m in MODALITIES if m in apply_blocks]
    sets = {m: (m,) for m in used}
    if len(used) > 1:
        sets["combined"] = tuple(used)
    describe = _describer(test, info, options)
    why = "" if val is not None else f"the audited split is {split}, so there is no other to fit on"
    fit_data = None if val is None else SplitData(fit_blocks, val.labels, val.scores)
    evaluated = evaluate_modality_sets(
        fit_data,
        SplitData(apply_blocks, test.labels, test.scores, test.spurious),
        sets,
        weights=options["weights"],
        threshold=threshold,
        mixture=mixture,
        describe=describe,
        why_not_val=why,
    )
    return {
        "protocol": "reduction and mixture fitted on val, applied to the audited split (Domino's)"
        if val is not None
        else f"fitted on the audited split itself: {why}",
        "eval_split": split,
        "weights": {m: options["weights"].get(m, 1.0) for m in used},
        "modalities": {m: info[m] for m in MODALITIES if m in info},
        "sets": evaluated,
        "describer": {
            "min_count": options["min_count"],
            "text_column": describe.text_column,
            "metadata_columns": describe.metadata_columns,
            "against": "the other images of the slice's majority label"
            if describe.labels is not None
            else "every other image",
        },
    }, describe


def _describer(test: _Split, info: dict[str, Any], options: dict[str, Any]) -> SliceDescriber:
    """The describer over the report column and metadata columns the manifest has."""
    frame = test.frame
    text = options["text_column"] or DEFAULT_TEXT_COLUMN
    text = text if text in frame.columns else None
    meta = info.get("metadata", {})
    columns = meta.get("columns") or options["metadata_columns"] or DEFAULT_METADATA_COLUMNS
    columns = [c for c in columns if c in frame.columns]
    labels = test.labels if options["describe_against"] == "label" else None
    return SliceDescriber(frame, text, columns, options["min_count"], labels)


def _image_evaluation(evaluation: dict[str, Any], split: str) -> dict[str, Any] | None:
    """The image set's evaluation in the shape of the ``subgroup_evaluation`` key."""
    image = evaluation["sets"].get("image")
    if image is None or not image["subgroups"]:
        return None
    fitted_on_val = image["fit_split"] == "val"
    return {
        "protocol": f"mixture fitted on val and applied to {split} (Domino's)"
        if fitted_on_val
        else image["protocol"],
        "fit_split": "val" if fitted_on_val else split,
        "eval_split": split,
        "slice": "rank by error gap on the evaluated split, of the evaluated mixture",
        "subgroups": image["subgroups"],
    }


def _describe_main(result: dict[str, Any], describe: SliceDescriber) -> None:
    """Describe the main table's slices (fitted on the audited split), in place."""
    k = len(result["slices"])
    texts = describe(result["_assign"] - 1, list(range(1, k + 1)))
    for row in result["slices"]:
        row["description"] = texts.get(str(row["rank"]))


def slices_ap(result: Mapping[str, Any], subgroup: str = "anti_correlated") -> dict[str, Any]:
    """Modality set -> AP of the best slice or complement for ``subgroup`` (None: not run)."""
    sets = (result.get("modality_evaluation") or {}).get("sets", {})
    out: dict[str, Any] = {}
    for name in MODALITY_SETS:
        best = (sets.get(name) or {}).get("subgroups", {}).get(subgroup)
        out[name] = None if best is None else best["average_precision"]
    return out


def _json_ready(value: Any) -> Any:
    """``value`` without keys starting with ``_``, at any depth."""
    if isinstance(value, Mapping):
        return {k: _json_ready(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def write_slices(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``slices.json``, ``slices.md`` and ``slices.png`` atomically; returns the paths."""
    return write_result(SlicesAudit(), AuditResult("slices", result), out_dir)


# --------------------------------------------------------------------------- CLI


def _threshold_arg(text: str) -> float | str:
    if text == "val":
        return text
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'val' or a number, got {text!r}") from err


def _checked(parse: Any) -> Any:
    """An argparse type from a parser raising ValueError."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return convert


def _columns_arg(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def add_slices_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``slices`` to the ``audit`` subcommands; returns its parser."""
    p = sub.add_parser("slices", help="Domino-style slice discovery: where does the model fail?")
    p.add_argument("--checkpoint", required=True, help="a spatialspec checkpoint")
    p.add_argument("--manifest", help="data to audit (default: the run's manifest)")
    p.add_argument("--split", default="test", help="split to slice (default test)")
    p.add_argument("--n-slices", type=int, default=8, help="mixture components (default 8)")
    p.add_argument(
        "--n-components",
        type=int,
        default=16,
        help="PCA dimensions per modality block (default 16)",
    )
    p.add_argument(
        "--y-weight",
        type=float,
        default=DEFAULT_WEIGHT,
        help="γ, weight of the label term (default 10)",
    )
    p.add_argument(
        "--y-hat-weight",
        type=float,
        default=DEFAULT_WEIGHT,
        help="γ̂, weight of the prediction term (default 10)",
    )
    p.add_argument(
        "--threshold",
        type=_threshold_arg,
        default="val",
        help="'val' (Youden's J on val, default) or a number",
    )
    p.add_argument(
        "--features",
        choices=("encoder", "decoder"),
        default="encoder",
        help="pooled encoder (default) or decoder features (dense methods)",
    )
    p.add_argument(
        "--modalities",
        type=_checked(parse_modalities),
        default=MODALITIES,
        help="modalities sliced alone and mixed into 'combined' (default "
        "image,text,metadata; unavailable ones are skipped and reported)",
    )
    p.add_argument(
        "--modality-weights",
        type=_checked(parse_weights),
        default=None,
        metavar="NAME=W,...",
        help="shares of the mixture's embedding term, e.g. "
        "image=1,text=1,metadata=1 (default 1 each)",
    )
    p.add_argument(
        "--metadata-columns",
        type=_columns_arg,
        default=None,
        metavar="COL,...",
        help="manifest columns of the metadata modality (default: view,age,sex where present)",
    )
    p.add_argument(
        "--text-column",
        default=None,
        help=f"free-text column (default {DEFAULT_TEXT_COLUMN!r} where present)",
    )
    p.add_argument(
        "--text-encoder",
        default=None,
        metavar="PATH",
        help="local sentence-transformers/transformers model folder (default: "
        "TF-IDF + truncated SVD)",
    )
    p.add_argument(
        "--describe-min-count",
        type=int,
        default=5,
        help="the describer's minimum count of a token or value (default 5)",
    )
    p.add_argument(
        "--describe-against",
        choices=("label", "rest"),
        default="label",
        help="describe a slice against the other images of its majority label "
        "(default) or against every other image",
    )
    p.add_argument("--limit", type=int, help="a seeded random subset of this many images")
    p.add_argument("--seed", type=int, default=0, help="subset, PCA, SVD and EM seed")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--out", required=True, help="folder for slices.json, slices.md, slices.png")
    return p


def run_slices(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``spatialspec audit slices``: audit, write the files, print the headline."""
    result = audit_slices(
        args.checkpoint,
        args.manifest,
        args.split,
        args.n_slices,
        args.n_components,
        args.y_weight,
        args.y_hat_weight,
        args.limit,
        args.seed,
        threshold=args.threshold,
        features=args.features,
        batch_size=args.batch_size,
        modalities=args.modalities,
        modality_weights=args.modality_weights,
        metadata_columns=args.metadata_columns,
        text_column=args.text_column,
        text_encoder=args.text_encoder,
        describe_min_count=args.describe_min_count,
        describe_against=args.describe_against,
    )
    paths = write_slices(result, args.out)
    top = result["top_slice"]
    aps = ", ".join(f"{k} {fmt(v)}" for k, v in slices_ap(result).items() if v is not None)
    print(
        f"top slice: n={top['n']} error rate {fmt(top['error_rate'])} "
        f"(gap {fmt(top['error_gap'])}); anti-correlated precision {fmt(top.get('precision'))}"
        f" recall {fmt(top.get('recall'))}; best slice AP for it: {aps or '–'} -> "
        + ", ".join(map(str, paths))
    )
    return result


# --------------------------------------------------------------------------- the audit


@register_audit
class SlicesAudit(Audit):
    """``slices``: Domino-style slice discovery in image / text / metadata, evaluated as Domino."""

    name = "slices"
    table_order = 1

    compute = staticmethod(audit_slices)

    def headline(self, result: AuditResult) -> dict[str, Any]:
        top = result.data["top_slice"]
        return {
            "top_slice_precision": top.get("precision"),
            "top_slice_recall": top.get("recall"),
            "top_slice_size": top.get("n"),
            "slices_ap": slices_ap(result.data),
            "slices_ap_cells": {cell: slices_ap(result.data, cell) for cell in A_CELLS},
        }

    def summary_columns(self, headline: Mapping[str, Any]) -> dict[str, str]:
        aps = headline.get("slices_ap") or {}
        return {
            "top-slice precision": fmt(headline["top_slice_precision"]),
            "slice AP (A): image / text / metadata / combined": " / ".join(
                fmt(aps.get(name), 2) for name in MODALITY_SETS
            ),
        }

    def json_ready(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return _json_ready(dict(data))

    def markdown(self, data: Mapping[str, Any]) -> str:
        return slices_markdown(dict(data))

    def figures(self, data: Mapping[str, Any]) -> dict[str, bytes]:
        return {"slices.png": plot_slices(dict(data), data.get("_examples"))}

    def add_arguments(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        return add_slices_parser(sub)

    def run_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        return run_slices(args)
