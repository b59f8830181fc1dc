"""``spatialspec audit masking``: the command line of the masking audit.

:func:`add_masking_options` holds the options ``audit masking`` shares with ``audit all``
(there prefixed ``--masking-``); :func:`run_masking` runs one checkpoint (an audit folder) or
several (their train-condition x test-condition matrix).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spatialspec.audit.dose_response import DEFAULT_DOSES, parse_doses
from spatialspec.audit.fill_control import DEFAULT_FILLS
from spatialspec.audit.masking_matrix import audit_masking_matrix, write_masking_matrix
from spatialspec.audit.masking_render import matrix_markdown
from spatialspec.data.roi import CONDITIONS, DEFAULT_DILATE, FILLS, REGIONS
from spatialspec.evaluation.render import format_ci

__all__ = ["add_masking_options", "add_masking_parser", "masking_options", "run_masking"]


def add_masking_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``masking`` to the ``audit`` subcommands; returns its parser."""
    p = sub.add_parser(
        "masking",
        help="scores with the ROI / anatomy / spurious region filled (Mask of truth)",
        description="Score checkpoints with the ROI, the anatomy (roi_mask_path) or the "
        "spurious region removed or kept alone, trace AUROC as the removed ROI / anatomy is "
        "eroded and dilated, and repeat the conditions under several fills. Several "
        "--checkpoint: one audit folder each under --out plus the train-condition x "
        "test-condition matrix (masking_matrix.json/.md).",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="[NAME=]CKPT",
        help="a spatialspec checkpoint; repeat for the matrix (NAME names its row "
        "and folder; default <method>_<train condition>)",
    )
    p.add_argument("--manifest", help="manifest.csv (default: each run's)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument(
        "--conditions",
        default=None,
        help="comma-separated test conditions (default: all the manifest allows: "
        f"{', '.join(CONDITIONS)})",
    )
    p.add_argument(
        "--region",
        default="mask",
        choices=REGIONS,
        help="ROI as its mask or its filled bounding boxes",
    )
    p.add_argument(
        "--fill",
        default="mean",
        choices=FILLS,
        help="fill of the conditions and curves: mean / noise / blur (from the "
        "kept pixels) or zero",
    )
    p.add_argument(
        "--dilate",
        type=int,
        default=DEFAULT_DILATE,
        help="pixels by which spurious masks are grown",
    )
    add_masking_options(p)
    p.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="subset, bootstrap and noise seed")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="output folder")
    return p


def add_masking_options(
    p: argparse.ArgumentParser,
    prefix: str = "",
    limit: int | None = None,
    fill_conditions: str | None = None,
) -> None:
    """The options ``audit masking`` shares with ``audit all`` (there with ``--masking-``),
    with their defaults ``limit`` and ``fill_conditions`` (None: all images / conditions)."""
    p.add_argument(
        f"--{prefix}limit",
        type=int,
        default=limit,
        help=f"audit a seeded random subset of N images (default {limit})",
    )
    p.add_argument(
        f"--{prefix}dose-range",
        default=_doses_text(DEFAULT_DOSES),
        metavar="DOSES",
        help="pixels by which the removed ROI / anatomy is eroded (<0) or dilated: "
        "START:STOP:STEP or a comma list, written with '=' when it starts with a minus "
        "(--dose-range=-8:16:4; default %(default)s; '' for no curve)",
    )
    p.add_argument(
        f"--{prefix}fills",
        default=",".join(DEFAULT_FILLS),
        metavar="FILLS",
        help="fills of the fill control (default %(default)s; '' for none)",
    )
    p.add_argument(
        f"--{prefix}fill-conditions",
        default=fill_conditions,
        metavar="CONDITIONS",
        help="conditions of the fill control, comma-separated (default: "
        f"{fill_conditions or 'the audited ones'})",
    )
    p.add_argument(
        f"--{prefix}metadata-columns",
        action="append",
        default=None,
        metavar="COLS",
        help="manifest columns of a metadata-only reference (logistic regression "
        "fit on train), comma-separated; repeat for several references; "
        "default spurious when known; '' for none",
    )


def masking_options(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """:func:`audit_masking` options from :func:`add_masking_options`' parsed arguments."""
    get = lambda name: getattr(args, prefix.replace("-", "_") + name)  # noqa: E731
    columns = get("metadata_columns")
    return {
        "limit": get("limit"),
        "doses": parse_doses(get("dose_range")),
        "fills": _list(get("fills")),
        "fill_conditions": _list(get("fill_conditions")),
        "metadata_columns": None if columns is None else [_list(c) for c in columns],
    }


def run_masking(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``audit masking`` from parsed arguments; prints a summary, returns the result."""
    from spatialspec.audit.masking import audit_masking, write_masking

    checkpoints = [_named(value) for value in args.checkpoint]
    kwargs = {
        "manifest": args.manifest,
        "split": args.split,
        "region": args.region,
        "fill": args.fill,
        "n_resamples": args.n_resamples,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "dilate": args.dilate,
        "conditions": _list(args.conditions),
        **masking_options(args),
    }
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


def _list(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def _doses_text(doses: Sequence[int]) -> str:
    return ",".join(str(d) for d in doses)


def _named(value: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare path (or an existing file with ``=``): (None, it)."""
    name, sep, path = value.partition("=")
    if sep and name and not Path(value).exists():
        return name, path
    return None, value


def _print_audit(result: Mapping[str, Any]) -> None:
    for name, c in result["conditions"].items():
        print(
            f"{name:19s} robust AUROC {format_ci(c['robust_auroc'], c['robust_auroc_ci'])}  "
            f"AUROC {format_ci(c['auroc'], c['auroc_ci'])}  altered {c['n_altered']}/{c['n']}"
        )
    control = result.get("fill_control")
    if control:
        print(
            f"fill control ({', '.join(control['fills'])}): flagged "
            f"{', '.join(control['flagged']) or 'none'}"
        )
