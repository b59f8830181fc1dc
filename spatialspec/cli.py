"""``spatialspec`` command line: prepare | fit | evaluate | sweep | compare | audit | analyze |
demo.

``fit`` takes config files and dotted overrides (``--trainer.max_epochs 3``) and is parsed by
jsonargparse; the other commands use argparse.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

COMMANDS = ("prepare", "fit", "evaluate", "sweep", "compare", "audit", "analyze", "demo")
#: ``spatialspec audit all``: module and glue functions; the other ``audit`` subcommands are the
#: registered audits (:data:`spatialspec.audit.base.AUDITS`, imported only for ``audit``).
AUDIT_SUITE = ("spatialspec.audit.suite", "add_suite_parser", "run_suite_cli")


def _prepare_parser(sub: argparse._SubParsersAction) -> None:
    from spatialspec.data.synthetic import SyntheticConfig

    d = SyntheticConfig()
    p = sub.add_parser("prepare", help="build a dataset and its manifest.csv")
    kinds = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    s = kinds.add_parser("synthetic", help="the embedded spurious-feature benchmark")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n-train", type=int, default=d.n_train)
    s.add_argument("--n-val", type=int, default=d.n_val)
    s.add_argument("--n-test", type=int, default=d.n_test)
    s.add_argument("--size", type=int, default=d.size, help="image side in pixels")
    s.add_argument("--correlation", type=float, default=d.correlation,
                   help="P(spurious == label) in every split")  # fmt: skip
    s.add_argument("--prevalence", type=float, default=d.prevalence)
    s.add_argument("--balanced-test", action="store_true",
                   help="make the spurious feature independent of the label in test")  # fmt: skip
    s.add_argument("--seed", type=int, default=d.seed)
    s.add_argument("--pathology-contrast", type=float, default=d.pathology_contrast)
    s.add_argument("--spurious-contrast", type=float, default=d.spurious_contrast)
    s.add_argument("--tube-placement", default=d.tube_placement, choices=("near", "independent"),
                   help="near: the tube beside the pathology (default); independent: placed "
                   "independently of it, as the theory of Saab et al. assumes")  # fmt: skip
    s.add_argument("--force", action="store_true", help="regenerate even if up to date")
    _siim_parser(kinds)
    _isic_parser(kinds)


def _siim_parser(kinds: argparse._SubParsersAction) -> None:
    s = kinds.add_parser("siim", help="SIIM-ACR pneumothorax (DICOM tree + RLE label CSV)")
    s.add_argument("--root", required=True, help="folder searched recursively for *.dcm")
    s.add_argument("--rle-csv", required=True, help="train-rle.csv (gzip accepted)")
    s.add_argument(
        "--tube-labels", help="chest-tube labels: cxr_tube_dict.pkl or CSV image_id,tube"
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="split seed")
    s.add_argument("--val-fraction", type=float, default=0.5,
                   help="share of tube-labelled patients in val (the rest: test)")  # fmt: skip
    s.add_argument("--strict", action="store_true", help="fail instead of skipping any item")
    s.add_argument("--no-verify", dest="verify", action="store_false",
                   help="read DICOM headers only (skip decoding every image)")  # fmt: skip
    s.add_argument("--workers", type=int, default=2, help="reader/writer threads")


def _isic_parser(kinds: argparse._SubParsersAction) -> None:
    s = kinds.add_parser("isic", help="ISIC 2018 Task 1/2 with the Bissoto et al. trap sets")
    s.add_argument("--root", required=True,
                   help="folder with ISIC2018_Task1-2_Training_Input/ and "
                        "ISIC2018_Task1_Training_GroundTruth/")  # fmt: skip
    s.add_argument("--trap-sets", required=True, help="folder of isic_annotated_*{K}.csv")
    s.add_argument("--seed", type=int, required=True, help="trap-set split K in 1..5")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--paper-splits", action="store_true",
                   help="keep val images in train too, as the original CSVs do")  # fmt: skip
    s.add_argument("--strict", action="store_true", help="fail instead of skipping any item")


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="robust-AUROC report from predictions or a checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="CSV with columns image_id,score (val rows optional)")
    src.add_argument("--checkpoint", help="a spatialspec checkpoint (.ckpt)")
    p.add_argument("--manifest", help="manifest.csv (default with --checkpoint: the run's)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", required=True, help="report JSON path (a .md is written beside it)")
    p.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--accelerator", default="auto", help="with --checkpoint: cpu, gpu, auto")
    p.add_argument("--pooling", metavar="LIST",
                   help="with --checkpoint of a dense model (bbox, seg, seg_ssl, seg_spl): "
                        "robust AUROC under each pooling of its pixel logits, e.g. "
                        "max,mean,topk:16,topk:256 (forms: max, mean, topk:K); the network "
                        "runs once, the other numbers stay the trained pooling's")  # fmt: skip


#: Commands whose parsers live in modules that import the model stack: the full parser is built
#: only when the command is the one being run, so ``spatialspec prepare`` starts fast.
LAZY_COMMANDS = {
    "sweep": ("spatialspec.sweep", "add_sweep_parser", "run_sweep_cli",
              "grid of methods x mask budgets x seeds -> summary.csv + plot (resumable)"),
    "compare": ("spatialspec.evaluation.compare", "add_compare_parser", "run_compare",
                "reports or NAME=GLOB seed groups side by side + seed-aware bootstrap differences"),
    "analyze": ("spatialspec.analysis.cli", "add_analyze_parser", "run_analyze_cli",
                "measures of a dataset (no model): specificity"),
    "demo": ("spatialspec.demo", "add_demo_parser", "run_demo",
             "synthetic benchmark -> binary, bbox, seg x 3 seeds -> seed-aware robust AUROC"),
}  # fmt: skip


def _lazy_parser(sub: argparse._SubParsersAction, name: str, full: bool) -> None:
    module, add, _, help_text = LAZY_COMMANDS[name]
    if full:
        getattr(importlib.import_module(module), add)(sub)
    else:
        sub.add_parser(name, help=help_text, add_help=False)


def _run_lazy(args: argparse.Namespace) -> int | None:
    module, _, run, _ = LAZY_COMMANDS[args.command]
    result = getattr(importlib.import_module(module), run)(args)
    return result if isinstance(result, int) else None


def _audit_parser(sub: argparse._SubParsersAction, full: bool) -> None:
    """``audit``; its subcommands are built only when ``full`` (they import the model stack)."""
    from spatialspec.audit import audit_names

    names = [*audit_names(), "all"]
    p = sub.add_parser("audit", help="why does a model score what it scores: " + ", ".join(names))
    kinds = p.add_subparsers(dest="audit", required=True, metavar="AUDIT")
    if not full:
        for name in names:
            kinds.add_parser(name)
        return
    from spatialspec.audit.base import load_audits

    audits = load_audits()
    for name in audits:
        audits.get(name)().add_arguments(kinds)
    module, add, _ = AUDIT_SUITE
    getattr(importlib.import_module(module), add)(kinds)


def _run_audit(args: argparse.Namespace) -> None:
    if args.audit == "all":
        module, _, run = AUDIT_SUITE
        getattr(importlib.import_module(module), run)(args)
        return
    from spatialspec.audit.base import load_audits

    load_audits().get(args.audit)().run_from_args(args)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser (``fit`` is parsed separately by jsonargparse).

    Args:
        command: The command being run: its options are built in full even when that means
            importing the model stack (``sweep``, ``compare``, ``audit``); None builds all.
    """
    parser = argparse.ArgumentParser(
        prog="spatialspec",
        description="Spatial specificity of supervision vs. spurious features.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _prepare_parser(sub)
    sub.add_parser("fit", help="train one method: fit --config FILE [--section.key VALUE ...]")
    _evaluate_parser(sub)
    for name in LAZY_COMMANDS:
        _lazy_parser(sub, name, command in (None, name))
    _audit_parser(sub, command in (None, "audit"))
    return parser


def _run_prepare(args: argparse.Namespace) -> None:
    if args.dataset == "siim":
        from spatialspec.data.siim import prepare_siim

        summary = prepare_siim(
            args.root, args.rle_csv, args.out, tube_labels=args.tube_labels, seed=args.seed,
            val_fraction=args.val_fraction, strict=args.strict, verify=args.verify,
            workers=args.workers,
        )  # fmt: skip
        _print_summary(args.out, summary)
        return
    if args.dataset == "isic":
        from spatialspec.data.isic import prepare_isic

        summary = prepare_isic(
            args.root, args.trap_sets, args.seed, args.out,
            paper_splits=args.paper_splits, strict=args.strict,
        )  # fmt: skip
        _print_summary(args.out, summary)
        return
    _prepare_synthetic(args)


def _print_summary(out: str, summary: dict) -> None:
    """One line per split, then the skips by reason."""
    print(f"manifest: {Path(out) / 'manifest.csv'}  ({summary['n_images']} images)")
    for split, counts in summary.get("splits", {}).items():
        robust = ", ".join(f"{k}={v}" for k, v in counts.get("robust_subgroups", {}).items())
        print(
            f"  {split}: {counts['images']} images ({counts['positive']} positive, "
            f"{counts['negative']} negative); robust subgroups: {robust or 'none'}"
            + ("  <- EMPTY: training needs train and val images" if not counts["images"] else "")
        )
    skipped = summary.get("skipped_counts", {})
    if skipped:
        print("skipped: " + "; ".join(f"{n} {reason}" for reason, n in skipped.items()))
    print(f"summary: {Path(out) / 'summary.json'}")


def _prepare_synthetic(args: argparse.Namespace) -> None:
    from spatialspec.data.manifest import load_manifest
    from spatialspec.data.synthetic import SyntheticConfig, prepare, robust_subgroup_sizes

    cfg = SyntheticConfig(
        n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, size=args.size,
        correlation=args.correlation, prevalence=args.prevalence,
        balanced_test=args.balanced_test, seed=args.seed,
        pathology_contrast=args.pathology_contrast, spurious_contrast=args.spurious_contrast,
        tube_placement=args.tube_placement,
    )  # fmt: skip
    path = prepare(cfg, args.out, force=args.force)
    sizes = robust_subgroup_sizes(load_manifest(path, check_files=False), "test")
    print(f"manifest: {path}")
    print(f"test robust subgroups: {sizes}")


def _run_evaluate(args: argparse.Namespace) -> None:
    from spatialspec.evaluation.render import write_markdown
    from spatialspec.evaluation.report import evaluate_predictions
    from spatialspec.evaluation.runner import evaluate_checkpoint

    if args.predictions:
        if not args.manifest:
            raise ValueError("--manifest is required with --predictions")
        if args.pooling is not None:
            raise ValueError(
                "--pooling works only with --checkpoint: it pools a dense model's pixel "
                "logits, and a predictions CSV holds one score per image"
            )
        report = evaluate_predictions(
            args.manifest, args.predictions, args.split, args.out,
            n_resamples=args.n_resamples, seed=args.seed,
        )  # fmt: skip
    else:
        report = evaluate_checkpoint(
            args.checkpoint, args.out, manifest=args.manifest, split=args.split,
            n_resamples=args.n_resamples, seed=args.seed, accelerator=args.accelerator,
            pooling=args.pooling,
        )  # fmt: skip
    md = write_markdown(report, Path(args.out).with_suffix(".md"))
    lo, hi = report["robust_auroc_ci"]
    print(
        f"{args.split}: robust AUROC {report['robust_auroc']:.3f} [{lo:.3f}, {hi:.3f}]  "
        f"AUROC {report['auroc']:.3f}  n={report['n']}  -> {args.out}, {md}"
    )
    for name, m in report.get("poolings", {}).items():
        trained = "  (trained)" if name == report.get("trained_pooling") else ""
        value = "–" if m["robust_auroc"] is None else f"{m['robust_auroc']:.3f}"
        print(f"  pooling {name}: robust AUROC {value}  AUROC {m['auroc']:.3f}{trained}")


def _message(err: Exception) -> str:
    """The text of an exception (KeyError's str() adds quotes)."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def _no_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def _quiet_lightning() -> None:
    """Drop Lightning's advertising tips and a deprecation warning from its own internals."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tips)  # idempotent
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


#: Exit code of a fit that checkpointed and requeued its SLURM job (the job ends; SLURM
#: starts it again and ``--resume auto`` continues).
EXIT_REQUEUED = 3


def _run_fit(argv: Sequence[str]) -> int:
    """``spatialspec fit``; the closing line comes from rank 0 only."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from spatialspec.training import Requeued, fit

    try:
        info = fit(argv)
    except Requeued as stop:
        print(f"spatialspec fit: requeued: {stop}", file=sys.stderr)
        return EXIT_REQUEUED
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, ModuleNotFoundError) as err:
        print(f"spatialspec fit: error: {_message(err)}", file=sys.stderr)
        return 2
    if rank_zero_only.rank == 0:
        best = f"{info['monitor']}={info['best_score']}"
        print(f"best checkpoint: {info['best_checkpoint']} ({best})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spatialspec`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_lightning()
    if argv and argv[0] == "fit":
        return _run_fit(argv[1:])
    args = build_parser(argv[0] if argv else "").parse_args(argv)
    try:
        if args.command == "prepare":
            _run_prepare(args)
        elif args.command == "evaluate":
            _run_evaluate(args)
        elif args.command in LAZY_COMMANDS:
            return _run_lazy(args) or 0
        elif args.command == "audit":
            _run_audit(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"spatialspec {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
