"""Synthetic spurious-feature benchmark following the generative model of Saab et al. (MLHC 2022).

Each image is a stylised chest film: two dark lung fields with fine "lung markings" on a brighter
body. A positive image (``label=1``) carries a *pathology* — a thin crescent hugging a lung border
in which the markings vanish and the intensity drops slightly, as a pneumothorax does. An image
with ``spurious=1`` carries a bright tube-like line entering from the side of the image. The two
regions never overlap (tube pixels within one pixel of the pathology are erased), but the tube
often lies inside the pathology's bounding box, as a chest tube lies next to the pneumothorax it
drains. The spurious label agrees with the label with probability ``correlation`` in every split
(the natural distribution, as the paper's test set); ``balanced_test`` makes it independent of
the label in the test split instead.

Counts per (label, spurious) cell are exact rather than sampled, so the robust subgroups of a
split (positives without, negatives with the spurious feature) have a known size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage

from spatialspec.data.folders import staged_folder
from spatialspec.data.io import write_png
from spatialspec.data.manifest import write_manifest
from spatialspec.data.synthetic_report import draw_metadata, draw_report
from spatialspec.runinfo import write_json_atomic

PARAMS_FILE = "synthetic.json"
#: Bumped whenever the drawing code changes, so ``prepare`` never reuses images of an older one.
GENERATOR_VERSION = 3
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
#: Last entry of the seed of an image's metadata / report stream (its image stream has none).
TEXT_STREAM = 7
TUBE_PLACEMENTS = ("near", "independent")


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic benchmark (all saved to ``DIR/synthetic.json``).

    Attributes:
        n_train: Training images.
        n_val: Validation images.
        n_test: Test images.
        size: Image side in pixels (square images).
        correlation: P(spurious == label) in every split (test too unless ``balanced_test``).
        prevalence: Fraction of positives per split.
        balanced_test: Make the spurious feature independent of the label in test (P = 0.5).
        seed: Seed; the same config always gives the same files.
        pathology_contrast: Intensity drop inside the pathology (image range is [0, 1]).
        marking_strength: Amplitude of the lung markings that vanish inside the pathology.
        spurious_contrast: Brightness of the tube.
        tube_in_box: P(tube tip inside the pathology's bounding box | both present); only with
            ``tube_placement="near"``.
        tube_placement: ``"near"`` (default): the tube enters the lung of the pathology, its
            tip inside the pathology's box with probability ``tube_in_box`` -- the spurious
            pixels then crowd the coarse annotations of positives (the tube lies beside the
            crescent), which breaks the assumption of Saab et al.'s theory that spurious pixels
            are independent of the annotation given the pathology. ``"independent"``: the
            tube's lung and tip are drawn independently of the pathology (tip anywhere in a
            lung, never aimed at the box), so that assumption holds (the tube still never
            overlaps the pathology: non-overlap holds in both).
    """

    n_train: int = 1600
    n_val: int = 600
    n_test: int = 2400
    size: int = 64
    correlation: float = 0.9
    prevalence: float = 0.5
    balanced_test: bool = False
    seed: int = 0
    pathology_contrast: float = 0.12
    marking_strength: float = 0.07
    spurious_contrast: float = 0.35
    tube_in_box: float = 0.6
    tube_placement: str = "near"

    def __post_init__(self) -> None:
        if not 0.0 <= self.correlation <= 1.0:
            raise ValueError(f"correlation must be in [0, 1], got {self.correlation}")
        if not 0.0 < self.prevalence < 1.0:
            raise ValueError(f"prevalence must be in (0, 1), got {self.prevalence}")
        if self.tube_placement not in TUBE_PLACEMENTS:
            raise ValueError(
                f"tube_placement must be one of {', '.join(TUBE_PLACEMENTS)}, "
                f"got {self.tube_placement!r}"
            )
        if self.size < 32:
            raise ValueError(f"size must be >= 32 pixels, got {self.size}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 4:
                raise ValueError(f"{name} must be >= 4, got {getattr(self, name)}")


@dataclass
class Sample:
    """One generated image with its masks (float image in [0, 1], boolean masks).

    Attributes:
        image: (S, S) float image in [0, 1].
        pathology: (S, S) pathology mask.
        spurious: (S, S) tube mask.
        lungs: (S, S) lung-field mask (the anatomy region of the masking audit).
        side: Lung index (0: the image's left) of the pathology, or where one would be.
        tube_side: Lung index of the tube (equal to ``side`` where there is no tube).
    """

    image: np.ndarray
    pathology: np.ndarray
    spurious: np.ndarray
    lungs: np.ndarray
    side: int = 0
    tube_side: int = 0


# ---------------------------------------------------------------------------------------------
# Cell counts and the drawing of one image
# ---------------------------------------------------------------------------------------------


def cell_counts(n: int, prevalence: float, correlation: float) -> dict[tuple[int, int], int]:
    """Exact number of images per (label, spurious) cell of a split."""
    n_pos = round(n * prevalence)
    n_neg = n - n_pos
    pos_spur = round(n_pos * correlation)
    neg_spur = round(n_neg * (1.0 - correlation))
    return {(1, 1): pos_spur, (1, 0): n_pos - pos_spur, (0, 1): neg_spur, (0, 0): n_neg - neg_spur}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size) + 0.5) / size
    return np.meshgrid(coords, coords, indexing="ij")  # (rows, cols), each (S, S)


def _lungs(rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """Two lung ellipses as (centre_row, centre_col, radius_row, radius_col), normalised."""
    lungs = []
    for side in (0.29, 0.71):
        lungs.append(
            (
                0.52 + rng.uniform(-0.03, 0.03),
                side + rng.uniform(-0.02, 0.02),
                0.34 + rng.uniform(-0.03, 0.03),
                0.16 + rng.uniform(-0.015, 0.015),
            )
        )
    return lungs


def _ellipse_coords(rr, cc, lung) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius and angle of every pixel w.r.t. one lung ellipse."""
    r0, c0, a, b = lung
    dr, dc = (rr - r0) / a, (cc - c0) / b
    return np.hypot(dr, dc), np.arctan2(dr, dc)


def _crescent(rr, cc, lung, rng: np.random.Generator, side: int) -> np.ndarray:
    """A thin crescent inside the lung, hugging its lateral / apical border."""
    rho, theta = _ellipse_coords(rr, cc, lung)
    # theta = 0 points to +col, -pi/2 to the apex; the lateral border of lung 0 is at theta = pi.
    lateral, towards_apex = (math.pi, 1.0) if side == 0 else (0.0, -1.0)
    centre = lateral + towards_apex * rng.uniform(-0.3, 1.3)
    half_width = rng.uniform(0.6, 1.1)  # radians
    depth = rng.uniform(0.18, 0.32)  # in normalised radius
    dtheta = np.angle(np.exp(1j * (theta - centre)))
    profile = np.cos(np.clip(dtheta / half_width, -1.0, 1.0) * math.pi / 2)
    return (rho <= 1.0) & (rho >= 1.0 - depth * profile) & (profile > 0.15)


def _tube(
    size: int, start: tuple[float, float], tip: tuple[float, float], bend: float
) -> np.ndarray:
    """Soft (anti-aliased) tube from ``start`` to ``tip`` (normalised (row, col)), in [0, 1]."""
    up = 4
    canvas = Image.new("L", (size * up, size * up), 0)
    (r0, c0), (r1, c1) = start, tip
    mid = ((r0 + r1) / 2 + bend * (c1 - c0), (c0 + c1) / 2 - bend * (r1 - r0))
    t = np.linspace(0.0, 1.0, 40)[:, None]
    pts = (1 - t) ** 2 * np.array(start) + 2 * (1 - t) * t * np.array(mid) + t**2 * np.array(tip)
    xy = [(float(c * size * up), float(r * size * up)) for r, c in pts]
    ImageDraw.Draw(canvas).line(xy, fill=255, width=max(2, round(size * up / 36)))
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _tube_endpoints(
    rng: np.random.Generator, lung, box: tuple[int, int, int, int] | None, size: int, ok: np.ndarray
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Entry point on the lateral image edge and a tip inside the lung (or the pathology box)."""
    r0, c0, a, b = lung
    if box is not None:
        rows, cols = np.nonzero(ok[box[0] : box[2] + 1, box[1] : box[3] + 1])
        k = rng.integers(len(rows))
        tip = ((rows[k] + box[0] + 0.5) / size, (cols[k] + box[1] + 0.5) / size)
    else:
        ang, rad = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0.0, 0.7))
        tip = (r0 + rad * a * math.sin(ang), c0 + rad * b * math.cos(ang))
    edge_col = 0.0 if c0 < 0.5 else 1.0
    start = (rng.uniform(0.25, 0.9), edge_col)
    return start, tip


def draw_sample(
    rng: np.random.Generator, cfg: SyntheticConfig, label: int, spurious: int
) -> Sample:
    """Draw one image with the given label and spurious attribute."""
    size = cfg.size
    rr, cc = _grid(size)
    lungs = _lungs(rng)
    in_lung = np.zeros((size, size), bool)
    for lung in lungs:
        in_lung |= _ellipse_coords(rr, cc, lung)[0] <= 1.0
    soft_lung = ndimage.gaussian_filter(in_lung.astype(np.float32), 1.0)

    body = (
        0.62 + 0.08 * (rr - 0.5) + 0.04 * ndimage.gaussian_filter(rng.normal(size=(size, size)), 6)
    )
    image = body - 0.30 * soft_lung
    markings = ndimage.gaussian_filter(rng.normal(size=(size, size)), 0.8)
    markings *= cfg.marking_strength / (markings.std() + 1e-8)

    side = int(rng.integers(2))
    lung = lungs[side]
    pathology = np.zeros((size, size), bool)
    if label:
        pathology = _crescent(rr, cc, lung, rng, side)
    soft_path = ndimage.gaussian_filter(pathology.astype(np.float32), 0.6)
    image = image + markings * soft_lung * (1.0 - soft_path) - cfg.pathology_contrast * soft_path

    tube_mask = np.zeros((size, size), bool)
    tube_side = side
    if spurious:
        keep_out = ndimage.binary_dilation(pathology, iterations=1)
        box = None
        if cfg.tube_placement == "independent":
            tube_side = int(rng.integers(2))
        elif label and rng.uniform() < cfg.tube_in_box:
            rows, cols = np.nonzero(pathology)
            box = (rows.min(), cols.min(), rows.max(), cols.max())
            if not (~keep_out[box[0] : box[2] + 1, box[1] : box[3] + 1]).any():
                box = None
        start, tip = _tube_endpoints(rng, lungs[tube_side], box, size, ~keep_out)
        tube = _tube(size, start, tip, bend=rng.uniform(-0.25, 0.25)) * (~keep_out)
        tube_mask = tube > 0.5
        image = image + cfg.spurious_contrast * tube

    image = image + rng.normal(0.0, 0.015, size=(size, size))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return Sample(image, pathology, tube_mask, in_lung, side, tube_side)


# ---------------------------------------------------------------------------------------------
# Writing a benchmark to disk
# ---------------------------------------------------------------------------------------------


def _split_cells(cfg: SyntheticConfig) -> Iterator[tuple[str, int, int, int]]:
    """Yield (split, index, label, spurious) for every image, in a deterministic order."""
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    for split, n in sizes.items():
        corr = 0.5 if (split == "test" and cfg.balanced_test) else cfg.correlation
        cells = cell_counts(n, cfg.prevalence, corr)
        pairs = [cell for cell, count in cells.items() for _ in range(count)]
        order = np.random.default_rng([cfg.seed, SPLIT_IDS[split], n]).permutation(len(pairs))
        for i, k in enumerate(order):
            yield split, i, pairs[k][0], pairs[k][1]


def generate(cfg: SyntheticConfig, out: str | Path, *, progress: bool = True) -> pd.DataFrame:
    """Generate the benchmark into ``out`` and return its manifest.

    Writes ``out/images/<id>.png``, ``out/masks/<id>.png`` (positives), ``out/spurious/<id>.png``
    (images with the spurious feature), ``out/lungs/<id>.png`` (the lung fields: the manifest's
    ``roi_mask_path``, the anatomy region of the masking audit), ``out/manifest.csv`` and
    ``out/synthetic.json``. Besides the contract's columns the manifest has
    ``spurious_mask_path``, ``roi_mask_path``, ``pathology_pixels``, the metadata columns
    ``view``, ``age``, ``sex`` and a templated ``report``
    (:mod:`spatialspec.data.synthetic_report`; drawn from a stream of their own, so they never
    change the images).

    Args:
        cfg: Benchmark parameters.
        out: Output folder (created).
        progress: Show a progress bar.

    Returns:
        The manifest as written.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    rows = []
    items = list(_split_cells(cfg))
    for split, i, label, spur in tqdm(items, desc="synthetic", disable=not progress):
        rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], i])
        sample = draw_sample(rng, cfg, label, spur)
        image_id = f"{split}_{i:05d}"
        write_png(out / "images" / f"{image_id}.png", np.round(sample.image * 255).astype(np.uint8))
        write_png(out / "lungs" / f"{image_id}.png", sample.lungs)
        mask_rel = spur_rel = ""
        if label:
            mask_rel = f"masks/{image_id}.png"
            write_png(out / mask_rel, sample.pathology)
        if spur:
            spur_rel = f"spurious/{image_id}.png"
            write_png(out / spur_rel, sample.spurious)
        rows.append(
            {
                "image_id": image_id,
                "image_path": f"images/{image_id}.png",
                "label": label,
                "split": split,
                "spurious": spur,
                "mask_path": mask_rel,
                "mask_available": 1,
                "spurious_mask_path": spur_rel,
                "roi_mask_path": f"lungs/{image_id}.png",
                "pathology_pixels": int(sample.pathology.sum()),
                **_text_columns(cfg, split, i, label, spur, sample),
            }
        )
    manifest = pd.DataFrame(rows)
    write_manifest(manifest, out / "manifest.csv")
    write_json_atomic(out / PARAMS_FILE, _params(cfg))
    return manifest


def _text_columns(
    cfg: SyntheticConfig, split: str, i: int, label: int, spurious: int, sample: Sample
) -> dict[str, object]:
    """``view``, ``age``, ``sex`` and ``report`` of one image, from the image's own text stream."""
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], i, TEXT_STREAM])
    meta = draw_metadata(rng, spurious)
    report = draw_report(rng, label, spurious, sample.side, sample.tube_side)
    return {**meta, "report": report}


def _params(cfg: SyntheticConfig) -> dict:
    params = {**asdict(cfg), "generator_version": GENERATOR_VERSION}
    if params["tube_placement"] == "near":  # benchmarks made before the option stay current
        del params["tube_placement"]
    return params


def prepare(cfg: SyntheticConfig, out: str | Path, *, force: bool = False) -> Path:
    """Generate the benchmark unless ``out`` already holds one made with the same parameters.

    The benchmark is built in a temporary sibling folder and swapped in only when complete, so
    an interrupted run never leaves a half-written benchmark and a regenerated one holds no
    stale files. A non-empty ``out`` that is not a synthetic benchmark is never replaced.

    Returns:
        Path of the manifest.
    """
    out = Path(out)
    manifest, params = out / "manifest.csv", out / PARAMS_FILE
    fresh = not force and manifest.exists() and params.exists()
    if fresh and json.loads(params.read_text()) == _params(cfg):
        return manifest
    with staged_folder(out, PARAMS_FILE) as staging:
        generate(cfg, staging)
    return manifest


def robust_subgroup_sizes(manifest: pd.DataFrame, split: str) -> dict[str, int]:
    """Sizes of the two robust subgroups of a split."""
    part = manifest[manifest["split"] == split]
    return {
        "positives_without_spurious": int(((part.label == 1) & (part.spurious == 0)).sum()),
        "negatives_with_spurious": int(((part.label == 0) & (part.spurious == 1)).sum()),
    }
