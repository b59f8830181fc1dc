"""Tests for the synthetic spurious-feature benchmark (spatialspec.data.synthetic)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from spatialspec.data import load_manifest, read_mask
from spatialspec.data import synthetic as syn
from spatialspec.data.synthetic import (
    SyntheticConfig,
    cell_counts,
    draw_sample,
    generate,
    prepare,
    robust_subgroup_sizes,
)
from spatialspec.data.synthetic_report import REPORT_NOISE, draw_metadata, draw_report

SMALL = SyntheticConfig(n_train=6, n_val=4, n_test=8, size=48, seed=11)


def _cells(frame: pd.DataFrame, split: str) -> dict[tuple[int, int], int]:
    part = frame[frame["split"] == split]
    counts = part.groupby(["label", "spurious"]).size()
    return {(int(y), int(s)): int(n) for (y, s), n in counts.items()}


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------- cell counts


@pytest.mark.parametrize(
    ("n", "prevalence", "correlation", "expected"),
    [
        (48, 0.5, 0.9, {(1, 1): 22, (1, 0): 2, (0, 1): 2, (0, 0): 22}),
        (2400, 0.5, 0.9, {(1, 1): 1080, (1, 0): 120, (0, 1): 120, (0, 0): 1080}),
        (40, 0.5, 0.5, {(1, 1): 10, (1, 0): 10, (0, 1): 10, (0, 0): 10}),
        (10, 0.3, 0.75, {(1, 1): 2, (1, 0): 1, (0, 1): 2, (0, 0): 5}),
        (20, 0.5, 1.0, {(1, 1): 10, (1, 0): 0, (0, 1): 0, (0, 0): 10}),
        (20, 0.25, 0.0, {(1, 1): 0, (1, 0): 5, (0, 1): 15, (0, 0): 0}),
    ],
)
def test_cell_counts_exact(n, prevalence, correlation, expected) -> None:
    counts = cell_counts(n, prevalence, correlation)
    assert counts == expected
    assert sum(counts.values()) == n


def test_default_test_split_has_100_images_per_robust_subgroup() -> None:
    cfg = SyntheticConfig()
    counts = cell_counts(cfg.n_test, cfg.prevalence, cfg.correlation)
    assert counts[(1, 0)] >= 100  # positives without the spurious feature
    assert counts[(0, 1)] >= 100  # negatives with it


def test_tiny_manifest_matches_cell_counts(tiny_synthetic: Path, tiny_config) -> None:
    cfg = tiny_config
    frame = load_manifest(tiny_synthetic)
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        expected = {k: v for k, v in cell_counts(n, cfg.prevalence, cfg.correlation).items() if v}
        assert _cells(frame, split) == expected
    assert robust_subgroup_sizes(frame, "test") == {
        "positives_without_spurious": 2,
        "negatives_with_spurious": 2,
    }
    # masks exist exactly for positives, spurious masks exactly for spurious images
    assert ((frame["mask_path"] != "") == (frame["label"] == 1)).all()
    assert ((frame["spurious_mask_path"] != "") == (frame["spurious"] == 1)).all()
    assert ((frame["pathology_pixels"] > 0) == (frame["label"] == 1)).all()
    assert (frame["mask_available"] == 1).all()
    assert frame["image_id"].is_unique
    row = frame[frame["label"] == 1].iloc[0]
    assert read_mask(row["mask_path"]).sum() == row["pathology_pixels"]


def test_balanced_test_makes_spurious_independent_in_test(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_train=20, n_val=4, n_test=40, size=32, balanced_test=True)
    frame = generate(cfg, tmp_path, progress=False)
    test = frame[frame["split"] == "test"]
    for label in (0, 1):
        assert test.loc[test["label"] == label, "spurious"].mean() == 0.5
    # the other splits keep the configured correlation
    assert _cells(frame, "train") == {(1, 1): 9, (1, 0): 1, (0, 1): 1, (0, 0): 9}


# ------------------------------------------------------------------------------- determinism


def test_generate_is_deterministic(tmp_path: Path) -> None:
    a = generate(SMALL, tmp_path / "a", progress=False)
    b = generate(SMALL, tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(a, b)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert files_a.keys() == files_b.keys()
    assert len([k for k in files_a if k.startswith("images/")]) == 6 + 4 + 8
    for name in files_a:
        assert files_a[name] == files_b[name], name


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    generate(SMALL, tmp_path / "a", progress=False)
    other = SyntheticConfig(**{**asdict(SMALL), "seed": SMALL.seed + 1})
    generate(other, tmp_path / "b", progress=False)
    images_a = _files(tmp_path / "a" / "images")
    images_b = _files(tmp_path / "b" / "images")
    assert images_a.keys() == images_b.keys()
    assert all(images_a[k] != images_b[k] for k in images_a)


def test_generate_writes_params_file(tmp_path: Path) -> None:
    generate(SMALL, tmp_path, progress=False)
    saved = json.loads((tmp_path / syn.PARAMS_FILE).read_text())
    expected = {**asdict(SMALL), "generator_version": syn.GENERATOR_VERSION}
    del expected["tube_placement"]  # the default is not saved: older benchmarks stay current
    assert saved == expected


# ------------------------------------------------------------------------------- the drawing


@pytest.fixture(scope="module")
def samples() -> list[tuple[int, int, int, syn.Sample]]:
    """60 drawn samples, 15 per (label, spurious) cell, as (seed index, label, spurious, sample)."""
    cfg = SyntheticConfig(size=64)
    out = []
    for i in range(60):
        label, spurious = i % 2, (i // 2) % 2
        out.append(
            (i, label, spurious, draw_sample(np.random.default_rng([5, i]), cfg, label, spurious))
        )
    return out


def test_sample_types(samples) -> None:
    for _, _, _, s in samples:
        assert s.image.shape == (64, 64)
        assert s.image.dtype == np.float32
        assert s.image.min() >= 0.0
        assert s.image.max() <= 1.0
        assert s.pathology.dtype == bool
        assert s.spurious.dtype == bool


def test_pathology_iff_label_and_tube_iff_spurious(samples) -> None:
    for i, label, spurious, s in samples:
        assert s.pathology.any() == bool(label), i
        assert s.spurious.any() == bool(spurious), i


def test_pathology_and_tube_never_touch(samples) -> None:
    for i, _, _, s in samples:
        assert not (s.pathology & s.spurious).any(), i
        # stronger: no tube pixel within one pixel of the pathology
        assert not (ndimage.binary_dilation(s.pathology) & s.spurious).any(), i


def test_pathology_is_a_thin_crescent_on_a_lung_border(samples) -> None:
    rr, cc = syn._grid(64)
    fills = []
    for i, label, _, s in samples:
        if not label:
            continue
        rows, cols = np.nonzero(s.pathology)
        box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fills.append(s.pathology.sum() / box_area)
        # the lungs are the first thing drawn from the generator: redraw them
        lungs = syn._lungs(np.random.default_rng([5, i]))
        rhos = [syn._ellipse_coords(rr, cc, lung)[0][s.pathology] for lung in lungs]
        # every pixel lies inside one lung, within its outer 32 % (the maximal crescent depth)
        assert any(rho.max() <= 1.0 and rho.min() >= 1.0 - 0.32 for rho in rhos), i
    assert len(fills) == 30
    assert np.median(fills) < 0.6


def test_tube_often_crosses_the_pathology_box(samples) -> None:
    hits = []
    for _, label, spurious, s in samples:
        if label and spurious:
            rows, cols = np.nonzero(s.pathology)
            box = s.spurious[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            hits.append(box.any())
    assert len(hits) == 15
    assert np.mean(hits) > 0.3


def _near_share(placement: str, n: int = 80) -> tuple[float, float]:
    """Share of tube pixels within 4 px of the crescent, and of tubes in the crescent's half
    of the image, over positives with the tube."""
    cfg = SyntheticConfig(size=64, tube_placement=placement)
    near, same_half = [], []
    for i in range(n):
        s = draw_sample(np.random.default_rng([9, i]), cfg, 1, 1)
        band = ndimage.distance_transform_edt(~s.pathology) <= 4
        near.append((band & s.spurious).sum() / s.spurious.sum())
        side = lambda m: np.nonzero(m)[1].mean() < 32  # noqa: E731
        same_half.append(side(s.pathology) == side(s.spurious))
        assert not (ndimage.binary_dilation(s.pathology) & s.spurious).any(), i
    return float(np.mean(near)), float(np.mean(same_half))


def test_independent_tube_placement_decouples_tube_and_pathology() -> None:
    near_share, near_same = _near_share("near")
    free_share, free_same = _near_share("independent")
    assert near_same == 1.0  # today: always the pathology's lung
    assert 0.3 < free_same < 0.7  # independent: either lung
    assert free_share < 0.5 * near_share
    with pytest.raises(ValueError, match="tube_placement must be one of near, independent"):
        SyntheticConfig(tube_placement="far")


def test_spurious_feature_is_bright(samples) -> None:
    for i, _, spurious, s in samples:
        if spurious:
            rest = s.image[~s.spurious & ~ndimage.binary_dilation(s.spurious, iterations=2)]
            assert s.image[s.spurious].mean() > rest.mean() + 0.1, i


# ------------------------------------------------------------------------------- prepare


def test_prepare_reuses_an_up_to_date_folder(tmp_path: Path, monkeypatch) -> None:
    manifest = prepare(SMALL, tmp_path)
    assert manifest == tmp_path / "manifest.csv"
    stamp = manifest.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("generate() called although the folder is up to date")

    monkeypatch.setattr(syn, "generate", fail)
    assert prepare(SMALL, tmp_path) == manifest
    assert manifest.stat().st_mtime_ns == stamp


def test_prepare_regenerates_when_params_change(tmp_path: Path) -> None:
    manifest = prepare(SMALL, tmp_path)
    before = manifest.read_text()
    changed = SyntheticConfig(**{**asdict(SMALL), "n_test": 12})
    prepare(changed, tmp_path)
    assert manifest.read_text() != before
    assert json.loads((tmp_path / syn.PARAMS_FILE).read_text())["n_test"] == 12
    assert (load_manifest(manifest)["split"] == "test").sum() == 12


def test_prepare_force_regenerates(tmp_path: Path) -> None:
    manifest = prepare(SMALL, tmp_path)
    (tmp_path / "images" / "test_00000.png").unlink()
    prepare(SMALL, tmp_path, force=True)
    assert (tmp_path / "images" / "test_00000.png").is_file()
    assert load_manifest(manifest).shape[0] == 18


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"correlation": 1.5}, "correlation must be in [0, 1], got 1.5"),
        ({"correlation": -0.1}, "correlation must be in [0, 1], got -0.1"),
        ({"prevalence": 0.0}, "prevalence must be in (0, 1), got 0.0"),
        ({"size": 16}, "size must be >= 32 pixels, got 16"),
        ({"n_test": 3}, "n_test must be >= 4, got 3"),
    ],
)
def test_invalid_config_raises(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SyntheticConfig(**overrides)


def test_prepare_regeneration_leaves_no_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    prepare(SMALL, out)
    smaller = SyntheticConfig(**{**asdict(SMALL), "n_test": 4})
    prepare(smaller, out)
    on_disk = {p.stem for p in (out / "images").glob("*.png")}
    assert on_disk == set(load_manifest(out / "manifest.csv")["image_id"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # no staging leftovers


def test_prepare_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a folder this command wrote"):
        prepare(SMALL, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_prepare_interrupted_keeps_the_previous_benchmark(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "bench"
    manifest = prepare(SMALL, out)
    before = manifest.read_text()

    def boom(cfg, folder, **kwargs):
        (Path(folder) / "images").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(syn, "generate", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(SyntheticConfig(**{**asdict(SMALL), "seed": 99}), out)
    assert manifest.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]


def test_prepare_regenerates_after_a_generator_change(tmp_path: Path, monkeypatch) -> None:
    manifest = prepare(SMALL, tmp_path)
    stamp = manifest.stat().st_mtime_ns
    monkeypatch.setattr(syn, "GENERATOR_VERSION", syn.GENERATOR_VERSION + 1)
    prepare(SMALL, tmp_path)
    assert manifest.stat().st_mtime_ns != stamp
    assert json.loads((tmp_path / syn.PARAMS_FILE).read_text())["generator_version"] == (
        syn.GENERATOR_VERSION
    )


# ------------------------------------------------------------- anatomy, metadata and reports


def test_lung_masks_are_the_roi_column_and_hold_the_pathology(tmp_path: Path) -> None:
    generate(SMALL, tmp_path, progress=False)
    frame = load_manifest(tmp_path / "manifest.csv")
    for rec in frame.itertuples():
        lungs = read_mask(rec.roi_mask_path)
        assert lungs.shape == (48, 48)
        assert 0.15 < lungs.mean() < 0.5  # two lung fields, not the whole film
        if rec.label:
            assert (read_mask(rec.mask_path) <= lungs).all()  # the crescent lies in a lung


def test_text_columns_never_change_the_images(tmp_path: Path) -> None:
    manifest = generate(SMALL, tmp_path, progress=False)
    assert {"view", "age", "sex", "report"} <= set(manifest.columns)
    for rec in manifest.head(6).itertuples():
        split, i = rec.image_id.split("_")
        rng = np.random.default_rng([SMALL.seed, syn.SPLIT_IDS[split], int(i)])
        sample = draw_sample(rng, SMALL, rec.label, rec.spurious)
        stored = np.asarray(Image.open(tmp_path / rec.image_path))
        assert np.array_equal(stored, np.round(sample.image * 255).astype(np.uint8))


def _affirmed_pneumothorax(text: str) -> bool:
    sentences = [x for x in text.split(". ") if "pneumothorax" in x.lower()]
    return any(not x.startswith("No ") for x in sentences)


def test_report_noise_rates_match_the_documented_model() -> None:
    rng = np.random.default_rng(0)
    tube = re.compile(r"tube|drain|catheter", re.IGNORECASE)
    rates = {}
    for label, spurious in ((0, 0), (0, 1), (1, 0), (1, 1)):
        texts = [draw_report(rng, label, spurious, 0, 1) for _ in range(4000)]
        tube_rate = np.mean([bool(tube.search(t)) for t in texts])
        rates[label, spurious] = (tube_rate, np.mean([_affirmed_pneumothorax(t) for t in texts]))
    noise = REPORT_NOISE
    for label in (0, 1):
        assert rates[label, 1][0] == pytest.approx(noise["tube_mentioned_if_present"], abs=0.025)
        assert rates[label, 0][0] == pytest.approx(noise["tube_mentioned_if_absent"], abs=0.015)
    for spurious in (0, 1):
        p_true, p_false = rates[1, spurious][1], rates[0, spurious][1]
        assert p_true == pytest.approx(noise["pneumothorax_mentioned_if_present"], abs=0.025)
        assert p_false == pytest.approx(noise["pneumothorax_false_mention"], abs=0.012)
    # sides follow the radiological convention: the tube's lung 1 is the patient's left
    mentions = [t for t in (draw_report(rng, 0, 1, 0, 1) for _ in range(50)) if tube.search(t)]
    assert mentions and all(tube.search(t) and "left" in t.lower() for t in mentions)


def test_view_depends_on_the_tube_only() -> None:
    rng = np.random.default_rng(1)
    ap = {s: np.mean([draw_metadata(rng, s)["view"] == "AP" for _ in range(3000)]) for s in (0, 1)}
    assert ap[1] == pytest.approx(REPORT_NOISE["view_ap_if_tube"], abs=0.03)
    assert ap[0] == pytest.approx(REPORT_NOISE["view_ap_if_no_tube"], abs=0.03)
    ages = [draw_metadata(rng, 0)["age"] for _ in range(500)]
    assert min(ages) >= 18 and max(ages) <= 95
