"""``spatialspec audit all`` / ``make audit``: every registered audit on several models.

The audits are those of :data:`spatialspec.audit.base.AUDITS` (today masking, saliency and
slices), run in name order. Each model gets ``OUT/<name>/<audit>.*``; ``OUT/summary.json`` holds
each audit's headline numbers per model (``localization_auprc``, ``spurious_attribution_share``,
``saliency_methods``: attribution method -> its four criteria and baselines,
``top_slice_precision``, ``masking``: condition -> robust AUROC, ...) with the seconds each audit
took and, when models named ``binary`` and ``seg`` are both audited, the checks the paper's
story predicts.

Besides a model's checkpoint, an audit may use other models of the same data: a second
training seed (``second_checkpoint``, audits with ``uses_second_checkpoint``), and lists of
``replicates`` (training seeds) and ``other_architectures`` (another encoder), passed to audits
that set ``uses_replicates`` (the saliency audit's repeatability and reproducibility).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spatialspec.audit.base import Audit, load_audits, write_result
from spatialspec.audit.saliency import HEADLINE_ATTRIBUTION  # re-exported (it moved)
from spatialspec.runinfo import run_metadata, write_json_atomic, write_text_atomic

__all__ = [
    "EXPECTATIONS",
    "HEADLINE_ATTRIBUTION",
    "add_suite_parser",
    "audit_model",
    "run_suite",
    "run_suite_cli",
    "summary_markdown",
]

#: Expectations on the synthetic benchmark (issue 5), checked when ``binary`` and ``seg`` exist.
EXPECTATIONS = {
    "binary spurious share > seg": lambda m: (
        m["binary"]["spurious_attribution_share"] > m["seg"]["spurious_attribution_share"]
    ),
    "binary localization AUPRC < seg": lambda m: (
        m["binary"]["localization_auprc"] < m["seg"]["localization_auprc"]
    ),
    "removing the pathology hurts seg more than binary (robust AUROC drop)": lambda m: (
        m["seg"]["masking_drop"]["roi_removed"] > m["binary"]["masking_drop"]["roi_removed"]
    ),
    "binary top slice precision >= 0.7": lambda m: m["binary"]["top_slice_precision"] >= 0.7,
}


def _audits(names: Sequence[str] | None = None) -> list[Audit]:
    """Instances of the registered audits (all, in name order, when ``names`` is None)."""
    registry = load_audits()
    return [registry.get(name)() for name in (registry.names() if names is None else names)]


def audit_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    manifest: str | Path | None = None,
    second_checkpoint: str | Path | None = None,
    replicates: Sequence[str | Path] = (),
    other_architectures: Sequence[str | Path] = (),
    saliency_limit: int | None = None,
    seed: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    audits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run every audit on one checkpoint; write their files; return their merged headlines.

    Args:
        replicates: Other training seeds of the model (audits with ``uses_replicates``).
        other_architectures: The model's method with other encoders on the same data (idem).
        options: Audit name -> extra :meth:`Audit.run` options (e.g. ``{"saliency":
            {"limit": 200}}``); ``saliency_limit`` is a shorthand for that one.
        audits: Names of the audits to run (default: every registered one).
    """
    out = Path(out)
    options = _with_saliency_limit(options, saliency_limit)
    headline: dict[str, Any] = {}
    times = {}
    for audit in _audits(audits):
        start = time.perf_counter()
        result = audit.run(
            checkpoint,
            manifest,
            seed=seed,
            second_checkpoint=second_checkpoint,
            replicates=replicates,
            other_architectures=other_architectures,
            **options.get(audit.name, {}),
        )
        write_result(audit, result, out)
        times[audit.name] = time.perf_counter() - start
        for key, value in audit.headline(result).items():
            if key in headline:
                raise ValueError(f"audit {audit.name!r} repeats the headline key {key!r}")
            headline[key] = value
    headline["seconds"] = {k: round(v, 1) for k, v in times.items()}
    return headline


def _with_saliency_limit(
    options: Mapping[str, Mapping[str, Any]] | None, saliency_limit: int | None
) -> dict[str, dict[str, Any]]:
    merged = {name: dict(opts) for name, opts in (options or {}).items()}
    if saliency_limit is not None:
        merged.setdefault("saliency", {})["limit"] = saliency_limit
    return merged


def run_suite(
    models: Mapping[str, str | Path],
    out: str | Path,
    *,
    manifest: str | Path | None = None,
    second_checkpoints: Mapping[str, str | Path] | None = None,
    replicates: Mapping[str, Sequence[str | Path]] | None = None,
    other_architectures: Mapping[str, Sequence[str | Path]] | None = None,
    saliency_limit: int | None = None,
    seed: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    audits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Audit every model; write ``OUT/summary.json`` and ``OUT/summary.md``.

    ``second_checkpoints``, ``replicates`` and ``other_architectures`` map a model's name to
    its other models; ``options`` and ``audits`` are as in :func:`audit_model`.
    """
    out = Path(out)
    per_model = {}
    for name, checkpoint in models.items():
        print(f"auditing {name} ({checkpoint}) ...", flush=True)
        per_model[name] = audit_model(
            checkpoint, out / name, manifest=manifest,
            second_checkpoint=(second_checkpoints or {}).get(name),
            replicates=(replicates or {}).get(name, ()),
            other_architectures=(other_architectures or {}).get(name, ()),
            saliency_limit=saliency_limit, seed=seed, options=options, audits=audits,
        )  # fmt: skip
    checks = {}
    if {"binary", "seg"} <= set(per_model):
        checks = {name: bool(rule(per_model)) for name, rule in EXPECTATIONS.items()}
    summary = {
        "models": per_model,
        "expectations": checks,
        "checkpoints": {k: str(v) for k, v in models.items()},
        "metadata": run_metadata(manifest=None if manifest is None else str(manifest)),
    }
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", summary_markdown(summary))
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """The per-model headline table (each audit's columns) and the expectation checks."""
    models = summary["models"]
    ran = list(next(iter(models.values())).get("seconds", {})) if models else []
    audits = _audits([name for name in ran if name in load_audits()] if models else None)
    by_table = sorted(audits, key=lambda a: a.table_order)
    cells = {name: {} for name in models}
    for audit in by_table:
        for name, m in models.items():
            cells[name].update(audit.summary_columns(m))
    head = ["model", *(next(iter(cells.values())) if cells else {})]
    lines = ["# Audit summary", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in models:
        row = [name, *(cells[name].get(h, "–") for h in head[1:])]
        lines.append("| " + " | ".join(row) + " |")
    notes = [note for note in (a.summary_note() for a in audits) if note]
    files = [f"`{a.name}.md`" for a in audits]
    if files:
        files[0] = f"`<model>/{audits[0].name}.md`"
    lines += ["", " ".join([*notes, "Per-model details: " + ", ".join(files) + "."])]
    if summary["expectations"]:
        lines += ["", "Expectations:"]
        lines += [f"- {'✓' if ok else '✗'} {name}" for name, ok in summary["expectations"].items()]
    return "\n".join(lines) + "\n"


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} expects NAME=CHECKPOINT, got {item!r}")
        out[name] = path
    return out


def _multi_pairs(values: list[str] | None, flag: str) -> dict[str, list[str]]:
    """Repeated ``NAME=CHECKPOINT`` values -> name -> checkpoints, in order."""
    out: dict[str, list[str]] = {}
    for item in values or []:
        name, path = next(iter(_pairs([item], flag).items()))
        out.setdefault(name, []).append(path)
    return out


def add_suite_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``spatialspec audit all``."""
    audits = _audits()
    names = " + ".join(a.name for a in audits)
    p = sub.add_parser("all", help=f"{names} on several models, one summary")
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT",
                   help="a model to audit (repeat; binary and seg enable the checks)")  # fmt: skip
    p.add_argument("--second-checkpoint", action="append", metavar="NAME=CHECKPOINT",
                   help="another training seed of model NAME (saliency repeatability)")  # fmt: skip
    p.add_argument(
        "--replicate",
        action="append",
        metavar="NAME=CHECKPOINT",
        help="a training seed of model NAME (repeat; saliency)",
    )
    p.add_argument(
        "--other-architecture",
        action="append",
        metavar="NAME=CHECKPOINT",
        help="model NAME's method with another encoder on the same data (repeat; "
        "saliency reproducibility)",
    )
    p.add_argument("--manifest", help="data to audit (default: each run's manifest)")
    for audit in audits:
        audit.add_suite_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    return p


def run_suite_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``spatialspec audit all`` and print the summary table."""
    summary = run_suite(
        _pairs(args.model, "--model"), args.out, manifest=args.manifest,
        second_checkpoints=_pairs(args.second_checkpoint, "--second-checkpoint"),
        replicates=_multi_pairs(args.replicate, "--replicate"),
        other_architectures=_multi_pairs(args.other_architecture, "--other-architecture"),
        saliency_limit=None, seed=args.seed,
        options={audit.name: audit.suite_options(args) for audit in _audits()},
    )  # fmt: skip
    print(summary_markdown(summary))
    print(f"-> {Path(args.out) / 'summary.json'}")
    return summary
