"""``spatialspec audit all`` / ``make audit``: the three audits on several models, one summary.

Each model gets ``OUT/<name>/{masking,saliency,slices}.*``; ``OUT/summary.json`` holds the
headline numbers per model (``localization_auprc``, ``spurious_attribution_share``,
``top_slice_precision``, ``masking``: condition -> robust AUROC, ...) and, when models named
``binary`` and ``seg`` are both audited, the checks the paper's story predicts.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spatialspec.audit.masking import audit_masking, write_masking
from spatialspec.audit.saliency import audit_saliency, write_saliency
from spatialspec.audit.slices import audit_slices, write_slices
from spatialspec.runinfo import run_metadata, write_json_atomic, write_text_atomic

#: Attribution method whose numbers the summary reports (Grad-CAM on a U-Net's bottleneck
#: says little about dense models; see the saliency audit's notes).
HEADLINE_ATTRIBUTION = "integrated_gradients"

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


def audit_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    manifest: str | Path | None = None,
    second_checkpoint: str | Path | None = None,
    saliency_limit: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Run masking, saliency and slices on one checkpoint; write their files; return headlines."""
    out = Path(out)
    times = {}
    start = time.perf_counter()
    masking = audit_masking(checkpoint, manifest, seed=seed)
    write_masking(masking, out)
    times["masking"] = time.perf_counter() - start
    start = time.perf_counter()
    saliency = audit_saliency(
        checkpoint, manifest, limit=saliency_limit, second_checkpoint=second_checkpoint, seed=seed
    )
    write_saliency(saliency, out)
    times["saliency"] = time.perf_counter() - start
    start = time.perf_counter()
    slices = audit_slices(checkpoint, manifest, seed=seed)
    write_slices(slices, out)
    times["slices"] = time.perf_counter() - start
    return _headlines(masking, saliency, slices, times)


def _headlines(masking: dict, saliency: dict, slices: dict, times: dict) -> dict[str, Any]:
    conditions = masking["conditions"]
    attribution = saliency["attributions"][HEADLINE_ATTRIBUTION]
    top = slices["top_slice"]
    repeat = attribution.get("repeatability") or {}
    return {
        "method": masking.get("method"),
        "localization_auprc": attribution["localization_auprc"]["mean"],
        "spurious_attribution_share": attribution["spurious_attribution_share"]["mean"],
        "spurious_share_uniform": attribution["spurious_attribution_share"]["uniform"],
        "saliency_repeatability_ssim": repeat.get("ssim"),
        "randomization_ssim": {r["layer"]: r["ssim"] for r in attribution.get("randomization", [])},
        "attribution_method": HEADLINE_ATTRIBUTION,
        "top_slice_precision": top.get("precision"),
        "top_slice_recall": top.get("recall"),
        "top_slice_size": top.get("n"),
        "masking": {name: c["robust_auroc"] for name, c in conditions.items()},
        "masking_auroc": {name: c["auroc"] for name, c in conditions.items()},
        "masking_drop": {name: c["robust_auroc_drop"] for name, c in conditions.items()},
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }


def run_suite(
    models: Mapping[str, str | Path],
    out: str | Path,
    *,
    manifest: str | Path | None = None,
    second_checkpoints: Mapping[str, str | Path] | None = None,
    saliency_limit: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Audit every model; write ``OUT/summary.json`` and ``OUT/summary.md``."""
    out = Path(out)
    per_model = {}
    for name, checkpoint in models.items():
        print(f"auditing {name} ({checkpoint}) ...", flush=True)
        per_model[name] = audit_model(
            checkpoint, out / name, manifest=manifest,
            second_checkpoint=(second_checkpoints or {}).get(name),
            saliency_limit=saliency_limit, seed=seed,
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
    """The per-model headline table and the expectation checks."""
    models = summary["models"]
    conditions = list(next(iter(models.values()))["masking"]) if models else []
    head = ["model", "localization AUPRC", "spurious share (uniform)", "top-slice precision"]
    head += [f"robust AUROC: {c}" for c in conditions]
    lines = ["# Audit summary", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in models.items():
        cells = [
            name,
            _f(m["localization_auprc"]),
            f"{_f(m['spurious_attribution_share'])} ({_f(m['spurious_share_uniform'])})",
            _f(m["top_slice_precision"]),
            *(_f(m["masking"][c]) for c in conditions),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Attribution method: {HEADLINE_ATTRIBUTION}. Per-model details: "
              "`<model>/masking.md`, `saliency.md`, `slices.md`."]  # fmt: skip
    if summary["expectations"]:
        lines += ["", "Expectations:"]
        lines += [f"- {'✓' if ok else '✗'} {name}" for name, ok in summary["expectations"].items()]
    return "\n".join(lines) + "\n"


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} expects NAME=CHECKPOINT, got {item!r}")
        out[name] = path
    return out


def add_suite_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``spatialspec audit all``."""
    p = sub.add_parser("all", help="masking + saliency + slices on several models, one summary")
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT",
                   help="a model to audit (repeat; binary and seg enable the checks)")  # fmt: skip
    p.add_argument("--second-checkpoint", action="append", metavar="NAME=CHECKPOINT",
                   help="another training seed of model NAME (saliency repeatability)")  # fmt: skip
    p.add_argument("--manifest", help="data to audit (default: each run's manifest)")
    p.add_argument("--saliency-limit", type=int, default=200, help="images for saliency maps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    return p


def run_suite_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``spatialspec audit all`` and print the summary table."""
    summary = run_suite(
        _pairs(args.model, "--model"), args.out, manifest=args.manifest,
        second_checkpoints=_pairs(args.second_checkpoint, "--second-checkpoint"),
        saliency_limit=args.saliency_limit, seed=args.seed,
    )  # fmt: skip
    print(summary_markdown(summary))
    print(f"-> {Path(args.out) / 'summary.json'}")
    return summary
