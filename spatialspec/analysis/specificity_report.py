"""``analyze specificity`` outputs: ``specificity.json`` and ``specificity.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spatialspec.analysis.specificity_plot import plot_measures
from spatialspec.runinfo import run_metadata, write_json_atomic, write_text_atomic

__all__ = ["UNITS", "markdown", "write_outputs"]

#: What the numbers are in (recorded in the JSON).
UNITS = {
    "variance": "intensity^2: grey intensities in [0, 1] as read (before the training "
    "normalisation), population variance (ddof 0) of the pooled annotated-positive pixels",
    "mutual_information": "bits: plug-in I(S; Y | annotation = 1) from the pooled 2x2 pixel "
    "counts of the spurious (S) and pathology (Y) indicators",
    "spurious_share": "fraction of the annotated-positive pixels (with known spurious pixels) "
    "that are spurious",
    "pathology_share": "fraction of the annotated-positive pixels that are pathology",
    "radius": "pixels at the analysis resolution; null where a level has no single radius",
}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return str(value)


def _radius(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def markdown(result: dict[str, Any]) -> str:
    """The readable report: one row per level, then every nested pair."""
    size = result.get("image_size")
    where = (
        f"resized to {size} px" if size else "as stored (" + ", ".join(result["image_sizes"]) + ")"
    )
    lines = [
        "# Spatial specificity: variance and mutual information per level",
        "",
        f"Manifest `{result['manifest']}`, split `{result['split']}`: {result['n_images']} "
        f"positive images with a mask file, {where}.",
        "",
        "Over the pixels each level's annotation labels positive (pooled over the images): the "
        "variance of their grey intensities in [0, 1] (before the training normalisation), the "
        "mutual information I(S; Y | Ỹ = 1) between spurious (S) and pathology (Y) pixels in "
        "**bits** (plug-in, pooled counts), and the shares of spurious and pathology pixels.",
        "",
        "| level | r (px) | variance | I(S; Y \\| Ỹ = 1) (bits) | spurious share "
        "| pathology share | n_pixels |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["levels"]:
        lines.append(
            f"| `{row['specificity']}` | {_radius(row['radius'])} | {_fmt(row['variance'])} "
            f"| {_fmt(row['mutual_information'])} | {_fmt(row['spurious_share'])} "
            f"| {_fmt(row['pathology_share'])} | {row['n_pixels']} |"
        )
    if not result["spurious_masks"]:
        lines += ["", "The manifest has no `spurious_mask_path` column: no mutual information."]
    elif result["n_images_spurious_unknown"]:
        lines += [
            "",
            f"{result['n_images_spurious_unknown']} images have the spurious feature (or an "
            "unknown one) but no spurious mask file: they count for the variance only.",
        ]
    nested = result["nested"]
    if nested:
        lines += [
            "",
            "## Nested levels",
            "",
            "The theory says both measures fall from a level to any finer level nested in it "
            "(outer ⊇ inner for every mask).",
            "",
            "| outer ⊇ inner | variance falls | MI falls |",
            "|---|---|---|",
        ]
        for pair in nested:
            lines.append(
                f"| `{pair['outer']}` ⊇ `{pair['inner']}` | {_yes_no(pair['variance_falls'])} "
                f"| {_yes_no(pair['mutual_information_falls'])} |"
            )
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write the three files into ``out`` (created); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = run_metadata(analysis="specificity", units=UNITS, **result)
    return {
        "json": write_json_atomic(out / "specificity.json", payload),
        "md": write_text_atomic(out / "specificity.md", markdown(result)),
        "png": plot_measures(result, out / "specificity.png"),
    }
