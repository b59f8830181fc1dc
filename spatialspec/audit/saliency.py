"""Saliency trustworthiness audit (Arun et al. 2021): eight methods, four criteria, baselines.

For every attribution method (:mod:`spatialspec.audit.attributions`: gradient, SmoothGrad,
integrated gradients, smooth IG, Grad-CAM, guided backprop, guided Grad-CAM, XRAI), on maps of
the model's image-level score post-processed alike (sum |·| over channels, clip at the 99th
percentile, scale to [0, 1]), the audit scores (:mod:`spatialspec.audit.saliency_metrics`):

- **localization utility**: AUPRC per positive image with a mask, against the average training
  mask and, for dense models, the model's own pixel probabilities; with the mask's prevalence;
- **randomization**: cascading randomization (:mod:`spatialspec.audit.randomization`), the SSIM
  of the fully randomised model's maps to the trained maps against the similarity floor (SSIM
  between maps of different images);
- **repeatability**: pairwise SSIM of the maps of training seeds (``replicates``) vs the floor;
- **reproducibility**: SSIM between the maps of two architectures trained on the same data
  (``other_architectures``) vs the floor;

each with a pass / fail verdict (:data:`~spatialspec.audit.saliency_metrics.RULES`), plus the
spurious-attribution share and its lift over the spurious region's area.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from spatialspec.audit.attributions import (
    ATTRIBUTIONS,
    EXPENSIVE,
    AttributionSettings,
    ScoreModel,
    attribution_maps,
    check_attribution,
    missing_dependency,
)
from spatialspec.audit.base import Audit, AuditResult, fmt, register_audit, write_result
from spatialspec.audit.common import AuditSet, load_audit_set, load_model
from spatialspec.audit.randomization import cascading_randomization, randomization_layers
from spatialspec.audit.saliency_criteria import (
    CriteriaContext,
    activations,
    audit_method,
    load_other_model,
    pixel_probabilities,
    training_mask_paths,
    training_masks,
)
from spatialspec.audit.saliency_metrics import (
    average_mask,
    localization_auprc,
    repeatability,
    spurious_attribution_share,
    ssim_maps,
)
from spatialspec.audit.saliency_render import (
    SaliencyExamples,
    figure_rows,
    plot_examples,
    saliency_markdown,
    verdict_table,
)
from spatialspec.data.dataset import MEAN, STD
from spatialspec.data.roi import DEFAULT_DILATE
from spatialspec.runinfo import run_metadata

__all__ = [
    "ATTRIBUTIONS",
    "DEFAULT_EXPENSIVE_IMAGES",
    "DEFAULT_N_IMAGES",
    "HEADLINE_ATTRIBUTION",
    "SaliencyAudit",
    "SaliencyExamples",
    "ScoreModel",
    "add_saliency_parser",
    "attribution_maps",
    "audit_saliency",
    "cascading_randomization",
    "figure_rows",
    "localization_auprc",
    "randomization_layers",
    "repeatability",
    "run_saliency",
    "saliency_markdown",
    "spurious_attribution_share",
    "ssim_maps",
    "write_saliency",
]

#: Images audited per method (a seeded subset of the split) and the fewer images of the
#: expensive methods (:data:`~spatialspec.audit.attributions.EXPENSIVE`): sized so that
#: ``make audit`` (2 models, 3 seeds + 1 other architecture each, all methods) stays in budget.
DEFAULT_N_IMAGES = 64
DEFAULT_EXPENSIVE_IMAGES = 12
DEFAULT_RANDOMIZATION_IMAGES = 16

#: Attribution method whose numbers ``audit all``'s flat headline keys report (the first method
#: audited when it is not among them); every method's numbers are under ``saliency_methods``.
HEADLINE_ATTRIBUTION = "integrated_gradients"
#: The attribution settings' defaults, shared by :func:`audit_saliency` and its command line.
DEFAULTS = AttributionSettings()


# --------------------------------------------------------------------------- the audit


def _unique(paths: Sequence[str | Path | None]) -> list[Path]:
    """The paths without None and without repeats (compared resolved), in order."""
    out: list[Path] = []
    for path in paths:
        if path is not None and Path(path).resolve() not in {p.resolve() for p in out}:
            out.append(Path(path))
    return out


def _prefix(order: np.ndarray, k: int | None) -> np.ndarray:
    """Sorted first ``k`` entries of ``order`` (all when None): nested subsets of one draw."""
    return np.sort(order if k is None else order[:k])


def audit_saliency(
    checkpoint: str | Path,
    manifest: str | Path | None = None,
    split: str = "test",
    methods: Sequence[str] | None = None,
    n_images: int | None = DEFAULT_N_IMAGES,
    replicates: Sequence[str | Path] = (),
    other_architectures: Sequence[str | Path] = (),
    randomization: bool = True,
    seed: int = 0,
    batch_size: int = DEFAULTS.batch_size,
    *,
    expensive_images: int | None = DEFAULT_EXPENSIVE_IMAGES,
    randomization_images: int = DEFAULT_RANDOMIZATION_IMAGES,
    n_steps: int = DEFAULTS.n_steps,
    baseline: float = DEFAULTS.baseline,
    noise: float = DEFAULTS.noise,
    nt_samples: int = DEFAULTS.nt_samples,
    smooth_ig_samples: int = DEFAULTS.smooth_ig_samples,
    dilate: int = DEFAULT_DILATE,
    exclude_roi: bool = True,
    second_checkpoint: str | Path | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Arun et al.'s four criteria with their baselines, per attribution method.

    Args:
        checkpoint: A spatialspec checkpoint.
        manifest: Manifest to audit on (default: the run's).
        split: Split to audit.
        methods: Attribution methods (default: all of
            :data:`~spatialspec.audit.attributions.ATTRIBUTIONS`); one whose optional
            dependency is missing (``xrai``) is skipped and listed under ``skipped``.
        n_images: Audit a seeded random subset of this many images (None: all).
        replicates: Other training seeds of the same model (repeatability).
        other_architectures: The same method with another encoder, trained on the same data
            (reproducibility).
        randomization: Run cascading randomization.
        seed: Subset, pairing, bootstrap and randomization seed.
        batch_size: Images per attribution call.
        expensive_images: Images (a nested subset) for the expensive methods (None: all).
        randomization_images: Images (a nested subset) for cascading randomization, at most
            half of a method's images (it costs one set of maps per layer group).
        n_steps: Integrated-gradients steps (IG, smooth IG, XRAI).
        baseline: Raw intensity in [0, 1] of the integrated-gradients baseline image.
        noise: Noise-tunnel standard deviation as a fraction of the input range.
        nt_samples: SmoothGrad samples.
        smooth_ig_samples: Smooth-IG samples.
        dilate: Pixels by which spurious masks are grown.
        exclude_roi: Keep pixels within ``dilate`` pixels of the pathology out of the spurious
            region (see :func:`spurious_attribution_share`).
        second_checkpoint: One more replicate (the former single repeatability model).
        limit: Alias of ``n_images`` (wins when given).

    Returns:
        JSON-ready results (``attributions``: per method its criteria, baselines and verdicts;
        ``verdicts``: the method × criterion table; ``skipped``; ``metadata``) and ``figure``:
        :class:`SaliencyExamples` (not JSON).
    """
    n_images = limit if limit is not None else n_images
    methods = list(ATTRIBUTIONS) if methods is None else list(methods)
    for name in methods:
        check_attribution(name)
    skipped = {name: why for name in methods if (why := missing_dependency(name))}
    ran = [name for name in methods if name not in skipped]
    method, config, data = load_model(checkpoint, manifest)
    reps = _unique([*replicates, second_checkpoint])
    archs = _unique(other_architectures)
    replicas = [ScoreModel(load_other_model(p, config, method, True)) for p in reps]
    others = [ScoreModel(load_other_model(p, config, method, False)) for p in archs]
    audit = load_audit_set(data, split, n_images, seed)
    if len(audit) < 2:
        raise ValueError(
            f"split {split!r} of {data.manifest_path} has {len(audit)} image(s); "
            "the saliency audit needs at least 2"
        )
    n_train_masks = len(training_mask_paths(data))
    settings = AttributionSettings(
        n_steps=n_steps,
        baseline=baseline,
        noise=noise,
        nt_samples=nt_samples,
        smooth_ig_samples=smooth_ig_samples,
        batch_size=batch_size,
        seed=seed,
    )
    ctx = CriteriaContext(
        audit=audit,
        method=method,
        model=ScoreModel(method),
        replicates=replicas,
        others=others,
        baselines={
            "average_training_mask": (
                average_mask(training_masks(data, data.image_size)) if n_train_masks else None
            ),
            "pixel_probabilities": pixel_probabilities(method, audit.images),
        },
        settings=settings,
        seed=seed,
        randomization=randomization,
        dilate=dilate,
        exclude_roi=exclude_roi,
    )
    order = np.random.default_rng(seed + 1).permutation(len(audit))
    sizes = {n: (expensive_images if n in EXPENSIVE else None) for n in ran}
    results, figure_maps = {}, {}
    smallest = _prefix(order, min((s or len(audit) for s in sizes.values()), default=None))
    rows = smallest[figure_rows(audit.labels[smallest], audit.has_spurious_mask[smallest])]
    for name in ran:
        idx = _prefix(order, sizes[name])
        ridx = _prefix(order, min(randomization_images, max(2, len(idx) // 2)))
        results[name], maps = audit_method(name, ctx, idx, ridx)
        figure_maps[name] = maps[np.searchsorted(idx, rows)]
    return {
        "split": split,
        "n_images": len(audit),
        "n_positive": int(audit.labels.sum()),
        "n_with_spurious_mask": int(audit.has_spurious_mask.sum()),
        "settings": {
            "methods": ran,
            "n_images": n_images,
            "expensive_images": expensive_images,
            "randomization_images": randomization_images,
            "seed": seed,
            "n_steps": n_steps,
            "baseline": baseline,
            "noise": noise,
            "noise_stdev": settings.stdev,
            "nt_samples": nt_samples,
            "smooth_ig_samples": smooth_ig_samples,
            "dilate": dilate,
            "exclude_roi": exclude_roi,
            "randomization": randomization,
            "n_replicates": len(reps),
            "n_other_architectures": len(archs),
        },
        "baselines": {
            "average_training_mask": {"n_train_masks": n_train_masks},
            "pixel_probabilities": ctx.baselines["pixel_probabilities"] is not None,
        },
        "skipped": skipped,
        "attributions": results,
        "verdicts": verdict_table(results),
        "figure_image_ids": [audit.image_ids[i] for i in rows],
        "metadata": _metadata(checkpoint, reps, archs, data, method, config),
        "figure": _examples(audit, rows, figure_maps),
    }


def _metadata(
    checkpoint: str | Path,
    reps: list[Path],
    archs: list[Path],
    data: Any,
    method: nn.Module,
    config: dict[str, Any],
) -> dict[str, Any]:
    hp = dict(method.hparams)
    return run_metadata(
        checkpoint=str(Path(checkpoint).resolve()),
        replicates=[str(p.resolve()) for p in reps],
        other_architectures=[str(p.resolve()) for p in archs],
        manifest=str(Path(data.manifest_path).resolve()),
        method=config.get("method"),
        encoder=method.backbone.encoder_name,
        pooling=hp.get("pooling"),
        activations=activations(method),
        attribution_target="log-odds of the image-level score (method.score: probability)",
    )


def _examples(audit: AuditSet, rows: np.ndarray, maps: dict[str, np.ndarray]) -> SaliencyExamples:
    images = audit.images[rows].numpy() * STD + MEAN  # (R, C, S, S)
    images = np.clip(images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1), 0, 1)
    return SaliencyExamples(
        image_ids=[audit.image_ids[i] for i in rows],
        images=images,
        roi_masks=audit.roi_masks[rows],
        spurious_masks=audit.spurious_masks[rows],
        labels=audit.labels[rows],
        has_spurious_mask=audit.has_spurious_mask[rows],
        maps=maps,
    )


def write_saliency(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``saliency.json``, ``saliency.md`` and ``saliency_grid.png`` into ``out_dir``.

    Every file is written atomically; the JSON holds everything but ``figure``.

    Returns:
        ``{"json": path, "markdown": path, "figure": path}``.
    """
    paths = write_result(SaliencyAudit(), AuditResult("saliency", result), out_dir)
    return dict(zip(("json", "markdown", "figure"), paths, strict=True))


# --------------------------------------------------------------------------- command line


def add_saliency_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``saliency`` to the ``audit`` subcommands."""
    p = sub.add_parser(
        "saliency",
        help="saliency trustworthiness (Arun et al.): 8 methods x "
        "localization, randomization, repeatability, reproducibility",
    )
    p.add_argument("--checkpoint", required=True, help="a spatialspec checkpoint (.ckpt)")
    p.add_argument(
        "--replicate",
        action="append",
        default=[],
        metavar="CKPT",
        help="another training seed of the model (repeatability; repeat)",
    )
    p.add_argument("--second-checkpoint", help="one replicate (same as --replicate)")
    p.add_argument(
        "--other-architecture",
        action="append",
        default=[],
        metavar="CKPT",
        help="the method with another encoder on the same data (reproducibility)",
    )
    p.add_argument("--manifest", help="manifest.csv (default: the run's)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument(
        "--methods",
        default=",".join(ATTRIBUTIONS),
        help=f"comma-separated subset of: {', '.join(ATTRIBUTIONS)}",
    )
    p.add_argument(
        "--n-images",
        "--limit",
        dest="n_images",
        type=int,
        default=DEFAULT_N_IMAGES,
        help="images audited (seeded subset; --limit is an alias)",
    )
    p.add_argument(
        "--expensive-images",
        type=int,
        default=DEFAULT_EXPENSIVE_IMAGES,
        help=f"images for {', '.join(sorted(EXPENSIVE))} (nested subset)",
    )
    p.add_argument(
        "--no-randomization",
        dest="randomization",
        action="store_false",
        help="skip cascading randomization",
    )
    p.add_argument(
        "--randomization-images",
        type=int,
        default=DEFAULT_RANDOMIZATION_IMAGES,
        help="images for cascading randomization (at most half of a method's images)",
    )
    p.add_argument(
        "--n-steps", type=int, default=DEFAULTS.n_steps, help="integrated-gradients steps"
    )
    p.add_argument("--nt-samples", type=int, default=DEFAULTS.nt_samples, help="SmoothGrad samples")
    p.add_argument(
        "--smooth-ig-samples",
        type=int,
        default=DEFAULTS.smooth_ig_samples,
        help="smooth-IG samples",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=DEFAULTS.noise,
        help="noise-tunnel stdev as a fraction of the input range",
    )
    p.add_argument(
        "--dilate",
        type=int,
        default=DEFAULT_DILATE,
        help="pixels by which spurious masks are grown",
    )
    p.add_argument(
        "--no-exclude-roi",
        dest="exclude_roi",
        action="store_false",
        help="count spurious-region pixels next to the pathology too",
    )
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--seed", type=int, default=0, help="subset, pairing and randomization seed")
    p.add_argument("--out", required=True, help="folder for saliency.json, .md, _grid.png")
    return p


def run_saliency(args: argparse.Namespace) -> dict[str, Any]:
    """Run the audit from parsed ``audit saliency`` arguments, write it, print a summary."""
    result = audit_saliency(
        args.checkpoint,
        manifest=args.manifest,
        split=args.split,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        n_images=args.n_images,
        replicates=args.replicate,
        other_architectures=args.other_architecture,
        randomization=args.randomization,
        seed=args.seed,
        batch_size=args.batch_size,
        expensive_images=args.expensive_images,
        randomization_images=args.randomization_images,
        n_steps=args.n_steps,
        nt_samples=args.nt_samples,
        smooth_ig_samples=args.smooth_ig_samples,
        noise=args.noise,
        dilate=args.dilate,
        exclude_roi=args.exclude_roi,
        second_checkpoint=args.second_checkpoint,
    )
    paths = write_saliency(result, args.out)
    for why in result["skipped"].values():
        print(why)
    for name, r in result["attributions"].items():
        loc, share = r["localization_auprc"], r["spurious_attribution_share"]
        base = r["localization_baselines"]["average_training_mask"] or {}
        print(
            f"{name} ({r['n_images']} images, {r['seconds']:.0f} s): localization AUPRC "
            f"{fmt(loc['mean'])} (average training mask {fmt(base.get('mean'))}, prevalence "
            f"{fmt(loc['prevalence'])}); spurious share {fmt(share['mean'])} (lift "
            f"{fmt(share['lift'], 2)}); floor SSIM {fmt(r['similarity_floor']['mean'])}"
        )
    print(f"-> {paths['json']}, {paths['markdown']}, {paths['figure']}")
    return result


# --------------------------------------------------------------------------- registration


def _headline_method(data: Mapping[str, Any]) -> str | None:
    ran = list(data["attributions"])
    return HEADLINE_ATTRIBUTION if HEADLINE_ATTRIBUTION in ran else (ran[0] if ran else None)


def method_headlines(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``saliency_methods`` of ``summary.json``: per method, each criterion and its baseline."""
    out = {}
    for name, r in data["attributions"].items():
        base = r["localization_baselines"]
        test, rep, rpr = r["randomization_test"], r["repeatability"], r["reproducibility"]
        out[name] = {
            "localization_auprc": r["localization_auprc"]["mean"],
            "baseline_auprc": (base["average_training_mask"] or {}).get("mean"),
            "pixel_probability_auprc": (base["pixel_probabilities"] or {}).get("mean"),
            "prevalence": r["localization_auprc"]["prevalence"],
            "randomization_ssim": test and test["ssim"],
            "similarity_floor": r["similarity_floor"]["mean"],
            "repeatability_ssim": rep and rep["ssim"],
            "reproducibility_ssim": rpr and rpr["ssim"],
            "spurious_attribution_share": r["spurious_attribution_share"]["mean"],
            "spurious_lift": r["spurious_attribution_share"]["lift"],
            "passes": data["verdicts"].get(name, {}),
            "seconds": r["seconds"],
            "cpu_seconds": r["cpu_seconds"],
        }
    return out


@register_audit
class SaliencyAudit(Audit):
    """``saliency``: Arun et al.'s eight methods on four criteria, with baselines."""

    name = "saliency"
    table_order = 0

    compute = staticmethod(audit_saliency)
    uses_second_checkpoint = True
    #: ``audit all`` passes each model's ``replicates`` and ``other_architectures``.
    uses_replicates = True

    def headline(self, result: AuditResult) -> dict[str, Any]:
        data = result.data
        name = _headline_method(data)
        r = data["attributions"].get(name, {}) if name else {}
        share = r.get("spurious_attribution_share", {})
        return {
            "localization_auprc": r.get("localization_auprc", {}).get("mean"),
            "spurious_attribution_share": share.get("mean"),
            "spurious_share_uniform": share.get("uniform"),
            "saliency_repeatability_ssim": (r.get("repeatability") or {}).get("ssim"),
            "randomization_ssim": {s["layer"]: s["ssim"] for s in r.get("randomization") or []},
            "attribution_method": name,
            "saliency_methods": method_headlines(data),
            "saliency_skipped": dict(data["skipped"]),
        }

    def summary_columns(self, headline: Mapping[str, Any]) -> dict[str, str]:
        share = f"{fmt(headline['spurious_attribution_share'])} "
        passes = [
            v
            for m in headline.get("saliency_methods", {}).values()
            for v in m["passes"].values()
            if v is not None
        ]
        return {
            "localization AUPRC": fmt(headline["localization_auprc"]),
            "spurious share (uniform)": share + f"({fmt(headline['spurious_share_uniform'])})",
            "saliency criteria passed": f"{sum(passes)}/{len(passes)}" if passes else "–",
        }

    def summary_note(self) -> str:
        return (
            f"Attribution method of the AUPRC and share columns: {HEADLINE_ATTRIBUTION}; "
            "'saliency criteria passed' counts method x criterion verdicts (`saliency.md`)."
        )

    def json_ready(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k != "figure"}

    def markdown(self, data: Mapping[str, Any]) -> str:
        return saliency_markdown(dict(data))

    def figures(self, data: Mapping[str, Any]) -> dict[str, bytes]:
        return {"saliency_grid.png": plot_examples(data["figure"])}

    def add_arguments(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        return add_saliency_parser(sub)

    def run_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        return run_saliency(args)

    def add_suite_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--saliency-n-images",
            "--saliency-limit",
            dest="saliency_n_images",
            type=int,
            default=DEFAULT_N_IMAGES,
            help="images for saliency maps (--saliency-limit: alias)",
        )
        parser.add_argument(
            "--saliency-methods",
            default=",".join(ATTRIBUTIONS),
            help="attribution methods of the saliency audit",
        )
        parser.add_argument(
            "--saliency-expensive-images",
            type=int,
            default=DEFAULT_EXPENSIVE_IMAGES,
            help=f"images for {', '.join(sorted(EXPENSIVE))}",
        )

    def suite_options(self, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "n_images": args.saliency_n_images,
            "methods": [m.strip() for m in args.saliency_methods.split(",") if m.strip()],
            "expensive_images": args.saliency_expensive_images,
        }
