"""Spatial specificity levels (data.specificity): targets, nesting, parsing, and a fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from spatialspec.data import box_mask
from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.data.dataset import ManifestDataset
from spatialspec.data.manifest import load_manifest
from spatialspec.data.specificity import (
    Specificity,
    SpecificityError,
    is_nested,
    parse_specificities,
    parse_specificity,
    resolve_specificity,
)
from spatialspec.data.transforms import build_augmentation

LEVELS = ["mask", "dilate:1", "dilate:2", "dilate:5", "box", "grid:2", "grid:3", "grid:8", "image"]


def _grid(text: str) -> np.ndarray:
    """A bool mask from rows of '.' and '#'."""
    return np.array([[ch == "#" for ch in row] for row in text.split()], dtype=bool)


#: 6 x 6, two 8-connected components: an L (rows 1-2, cols 1-2) and a pixel at (4, 4).
MASK = _grid("""
    ......
    .#....
    .##...
    ......
    ....#.
    ......
""")


# ------------------------------------------------------------------------ hand-computed targets


def test_mask_is_the_mask() -> None:
    np.testing.assert_array_equal(parse_specificity("mask").apply(MASK), MASK)
    np.testing.assert_array_equal(parse_specificity("dilate:0").apply(MASK), MASK)


def test_dilate_1_adds_the_four_neighbours() -> None:
    # Euclidean distance <= 1: the 4-neighbourhood (the diagonal is sqrt(2) away).
    expected = _grid("""
        .#....
        ###...
        ####..
        .##.#.
        ...###
        ....#.
    """)
    np.testing.assert_array_equal(parse_specificity("dilate:1").apply(MASK), expected)


def test_dilate_2_is_the_radius_2_disk() -> None:
    point = np.zeros((7, 7), bool)
    point[3, 3] = True
    # Offsets with dr^2 + dc^2 <= 4: the 3 x 3 square plus the four (±2, 0), (0, ±2) tips.
    expected = _grid("""
        .......
        ...#...
        ..###..
        .#####.
        ..###..
        ...#...
        .......
    """)
    np.testing.assert_array_equal(parse_specificity("dilate:2").apply(point), expected)


def test_box_is_one_filled_box_per_component() -> None:
    expected = _grid("""
        ......
        .##...
        .##...
        ......
        ....#.
        ......
    """)
    np.testing.assert_array_equal(parse_specificity("box").apply(MASK), expected)
    np.testing.assert_array_equal(parse_specificity("box").apply(MASK), box_mask(MASK))


def test_grid_2_keeps_the_touched_quadrants() -> None:
    # Rows 0-2 / 3-5 and cols 0-2 / 3-5: the L touches the top-left cell, the pixel the
    # bottom-right one.
    expected = _grid("""
        ###...
        ###...
        ###...
        ...###
        ...###
        ...###
    """)
    np.testing.assert_array_equal(parse_specificity("grid:2").apply(MASK), expected)


def test_grid_with_uneven_cells() -> None:
    # Height 5, K = 2: row i lies in grid row floor(2 i / 5): rows 0-2 -> 0, rows 3-4 -> 1.
    mask = np.zeros((5, 4), bool)
    mask[3, 0] = True
    expected = _grid("""
        ....
        ....
        ....
        ##..
        ##..
    """)
    np.testing.assert_array_equal(parse_specificity("grid:2").apply(mask), expected)
    # More cells than pixels: every cell is at most one pixel, so the grid is the mask.
    np.testing.assert_array_equal(parse_specificity("grid:9").apply(mask), mask)


def test_image_is_every_pixel() -> None:
    assert parse_specificity("image").apply(MASK).all()
    assert parse_specificity("grid:1").apply(MASK).all()


@pytest.mark.parametrize("name", LEVELS)
def test_an_empty_mask_stays_empty(name: str) -> None:
    target = parse_specificity(name).apply(np.zeros((5, 7), np.uint8))
    assert target.dtype == bool and target.shape == (5, 7) and not target.any()


def test_apply_accepts_0_255_masks_and_rejects_3d() -> None:
    out = parse_specificity("box").apply(MASK.astype(np.uint8) * 255)
    np.testing.assert_array_equal(out, box_mask(MASK))
    with pytest.raises(ValueError, match="2-D mask"):
        parse_specificity("mask").apply(np.zeros((2, 2, 2)))


# ------------------------------------------------------------------------------------ nesting


def _random_masks(n: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(n):
        h, w = rng.integers(5, 40, size=2)
        masks.append(rng.uniform(size=(h, w)) < rng.uniform(0.005, 0.2))
    return masks


@pytest.mark.parametrize("name", LEVELS)
def test_every_level_contains_the_mask_and_image_contains_every_level(name: str) -> None:
    level, image = parse_specificity(name), parse_specificity("image")
    for mask in _random_masks():
        target = level.apply(mask)
        assert (target | ~mask).all(), f"{name} drops mask pixels"
        assert (image.apply(mask) | ~target).all()


def test_dilations_and_divisible_grids_nest() -> None:
    for mask in _random_masks():
        d1, d2, d4 = (parse_specificity(f"dilate:{r}").apply(mask) for r in (1, 2, 4))
        assert (d2 | ~d1).all() and (d4 | ~d2).all()
        g2, g4 = parse_specificity("grid:2").apply(mask), parse_specificity("grid:4").apply(mask)
        assert (g2 | ~g4).all()


def test_is_nested_pairs() -> None:
    p = parse_specificity
    assert is_nested(p("image"), p("box")) and is_nested(p("box"), p("mask"))
    assert is_nested(p("dilate:8"), p("dilate:2")) and not is_nested(p("dilate:2"), p("dilate:8"))
    assert is_nested(p("grid:2"), p("grid:4")) and not is_nested(p("grid:2"), p("grid:3"))
    assert is_nested(p("mask"), p("dilate:0")) and is_nested(p("dilate:2"), p("dilate:0"))
    assert not is_nested(p("box"), p("dilate:2")) and not is_nested(p("dilate:2"), p("box"))
    assert not is_nested(p("mask"), p("image"))


# ------------------------------------------------------------------------------------ parsing


def test_names_and_radii() -> None:
    assert parse_specificity(" Dilate:04 ").name == "dilate:4"
    assert parse_specificity("grid:8") == Specificity("grid", 8)
    assert str(parse_specificity("box")) == "box"
    assert parse_specificity("mask").radius(64) == 0
    assert parse_specificity("dilate:4").radius(64) == 4
    assert parse_specificity("image").radius(64) == 64
    assert parse_specificity("image").radius() == math.inf
    assert math.isnan(parse_specificity("box").radius(64))
    assert math.isnan(parse_specificity("grid:4").radius(64))
    level = parse_specificity("dilate:2")
    assert parse_specificity(level) is level


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("boxes", "unknown level 'boxes'"),
        ("dilate", "needs an integer"),
        ("dilate:", "needs an integer"),
        ("dilate:2.5", "'2.5' is not an integer"),
        ("dilate:-1", "dilate needs an integer >= 0"),
        ("grid:0", "grid needs an integer >= 1"),
        ("box:3", "'box' takes no ':' argument"),
        ("", "unknown level ''"),
    ],
)
def test_parse_errors_name_the_value_and_the_forms(value: str, why: str) -> None:
    with pytest.raises(SpecificityError) as err:
        parse_specificity(value)
    message = str(err.value)
    assert repr(value) in message and why in message
    assert "mask, dilate:R (R >= 0 pixels), box, grid:K (K >= 1 cells a side), image" in message


def test_parse_lists() -> None:
    names = [lv.name for lv in parse_specificities("mask, dilate:2,box,,image")]
    assert names == ["mask", "dilate:2", "box", "image"]
    with pytest.raises(SpecificityError, match="listed twice"):
        parse_specificities("mask,dilate:0,mask")
    with pytest.raises(SpecificityError, match="no spatial specificity"):
        parse_specificities(" , ")


def test_methods_resolve_their_levels() -> None:
    assert resolve_specificity("mask", None).name == "mask"
    assert resolve_specificity("mask", "dilate:4").name == "dilate:4"
    assert resolve_specificity("box", None).name == "box"
    assert resolve_specificity("box", "box").name == "box"
    assert resolve_specificity("label", None) is None
    with pytest.raises(SpecificityError, match=r"'binary' trains on image labels.*'dilate:4'"):
        resolve_specificity("label", "dilate:4", method="binary")
    with pytest.raises(SpecificityError, match=r"use --method seg --data\.specificity mask"):
        resolve_specificity("box", "mask", method="bbox")
    with pytest.raises(SpecificityError, match="unknown annotation"):
        resolve_specificity("points", None)


# ------------------------------------------------------------------------------- the pipeline


def test_dataset_targets_follow_the_level(tiny_synthetic: Path) -> None:
    frame = load_manifest(tiny_synthetic)
    frame = frame[frame["label"] == 1].head(3)
    true = ManifestDataset(frame, None, "mask", image_size=64)
    for name in ("dilate:2", "grid:4", "image"):
        coarse = ManifestDataset(frame, None, "mask", image_size=64, specificity=name)
        for i in range(len(frame)):
            mask = true[i]["mask"][0].numpy() > 0
            np.testing.assert_array_equal(
                coarse[i]["mask"][0].numpy() > 0, parse_specificity(name).apply(mask)
            )
    # bbox's annotation and seg at `box` are one code path: the same targets.
    boxes = ManifestDataset(frame, None, "box", image_size=64)
    seg_box = ManifestDataset(frame, None, "mask", image_size=64, specificity="box")
    for i in range(len(frame)):
        np.testing.assert_array_equal(boxes[i]["mask"].numpy(), seg_box[i]["mask"].numpy())


def test_level_applies_after_augmentation(tiny_synthetic: Path) -> None:
    frame = load_manifest(tiny_synthetic)
    frame = frame[frame["label"] == 1].head(1)
    masks = ManifestDataset(frame, build_augmentation(True, seed=0), "mask", image_size=64)
    dilated = ManifestDataset(
        frame, build_augmentation(True, seed=0), "mask", image_size=64, specificity="dilate:3"
    )
    for seed in range(5):
        masks.transform.set_random_seed(seed)
        mask = masks[0]["mask"][0].numpy() > 0
        dilated.transform.set_random_seed(seed)
        target = dilated[0]["mask"][0].numpy() > 0
        np.testing.assert_array_equal(target, parse_specificity("dilate:3").apply(mask))


def test_datamodule_resolves_and_checks_at_construction(tiny_synthetic: Path) -> None:
    assert SpatialDataModule(str(tiny_synthetic), annotation="box").specificity == "box"
    assert SpatialDataModule(str(tiny_synthetic), annotation="label").specificity is None
    dm = SpatialDataModule(str(tiny_synthetic), specificity="Grid:4", mask_budget=5)
    assert dm.specificity == "grid:4"
    train = dm.dataset("train", train=True)
    assert train.specificity == parse_specificity("grid:4")
    with pytest.raises(SpecificityError, match="valid forms"):
        SpatialDataModule(str(tiny_synthetic), specificity="dilate:big")


def test_budget_leaves_unannotated_rows_unannotated(tiny_synthetic: Path) -> None:
    """A mask budget and a level combine: rows outside the budget keep mask_available 0."""
    dm = SpatialDataModule(str(tiny_synthetic), specificity="image", mask_budget=5, augment=False)
    train = dm.dataset("train")
    flags = [s["mask_available"].item() for s in (train[i] for i in range(len(train)))]
    assert sum(flags) < len(flags)
    for i, rec in enumerate(train.records):
        sample = train[i]
        if rec["label"] == 1 and rec["mask_path"]:
            assert sample["mask"].all()  # `image`: the whole positive image
        else:
            assert not sample["mask"].any()


def test_fit_at_dilate_2_records_its_level(tmp_path: Path, quick_fit_args: list[str]) -> None:
    from spatialspec.training import fit

    out = tmp_path / "seg-dilate"
    info = fit(["--method", "seg", "--out_dir", str(out), "--data.specificity", "dilate:2",
                *quick_fit_args])  # fmt: skip
    assert info["specificity"] == "dilate:2"
    assert json.loads((out / "run.json").read_text())["specificity"] == "dilate:2"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["specificity"] == "dilate:2"
    assert info["epochs_run"] == 1 and Path(info["last_checkpoint"]).is_file()


@pytest.mark.parametrize(
    ("method", "extra", "expected"),
    [("seg", [], "mask"), ("bbox", [], "box"), ("seg_ssl", ["grid:4"], "grid:4"),
     ("binary", [], None)],
)  # fmt: skip
def test_fit_config_resolves_the_method_default(
    method: str, extra: list[str], expected: str | None
) -> None:
    from spatialspec.training import _specificity, parse_fit_args

    argv = ["--method", method, "--out_dir", "unused"]
    if extra:
        argv += ["--data.specificity", *extra]
    _, cfg = parse_fit_args([*argv, "--data.manifest", "unused.csv"])
    assert _specificity(cfg) == expected


def test_fit_refuses_a_level_for_binary_and_a_non_box_bbox(
    tmp_path: Path, quick_fit_args: list[str]
) -> None:
    from spatialspec.training import fit

    for method, level in (("binary", "dilate:2"), ("bbox", "mask")):
        with pytest.raises(SpecificityError, match=f"method {method!r}"):
            fit(["--method", method, "--out_dir", str(tmp_path / method),
                 "--data.specificity", level, *quick_fit_args])  # fmt: skip
        assert not (tmp_path / method).exists()  # refused before anything is written
