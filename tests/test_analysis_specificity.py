"""``spatialspec analyze specificity``: the two measures, by hand, on 4 x 4 images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatialspec.analysis.specificity import analyze_manifest, mutual_information_bits
from spatialspec.cli import main
from spatialspec.data.io import write_png
from spatialspec.data.manifest import write_manifest

LEVELS = "mask,dilate:1,box,image"


def _mi_bits(counts: dict[tuple[int, int], int]) -> float:
    """I(S; Y) in bits from ``{(s, y): count}``, written out term by term."""
    n = sum(counts.values())
    p_s = {s: sum(c for (si, _), c in counts.items() if si == s) / n for s in (0, 1)}
    p_y = {y: sum(c for (_, yi), c in counts.items() if yi == y) / n for y in (0, 1)}
    return sum(
        (c / n) * math.log2((c / n) / (p_s[s] * p_y[y])) for (s, y), c in counts.items() if c
    )


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Two annotated 4 x 4 positives, plus rows the analysis must leave out.

    A (spurious): pathology Y = (1, 1) at 1.0; tube S = (1, 2), (1, 3) at 0.8; the rest 0.2.
    B (no spurious feature, no spurious file): Y = (2, 0), (3, 1) at 0.6; the rest 0.0.
    Also: a negative, a positive without a mask (mask_available 0), a val positive.
    """
    a = np.full((4, 4), 0.2)
    a[1, 1] = 1.0
    a[1, 2] = a[1, 3] = 0.8
    ya = np.zeros((4, 4), bool)
    ya[1, 1] = True
    sa = np.zeros((4, 4), bool)
    sa[1, 2] = sa[1, 3] = True
    b = np.zeros((4, 4))
    b[2, 0] = b[3, 1] = 0.6
    yb = np.zeros((4, 4), bool)
    yb[2, 0] = yb[3, 1] = True
    for name, array in {"a": a, "b": b, "neg": np.full((4, 4), 0.5), "nomask": b,
                        "val": a}.items():  # fmt: skip
        write_png(tmp_path / "images" / f"{name}.png", array)
    for name, mask in {"a": ya, "b": yb, "val": ya}.items():
        write_png(tmp_path / "masks" / f"{name}.png", mask)
    write_png(tmp_path / "spurious" / "a.png", sa)
    rows = [
        ("a", 1, "train", 1, "masks/a.png", 1, "spurious/a.png"),
        ("b", 1, "train", 0, "masks/b.png", 1, ""),
        ("neg", 0, "train", 1, "", 1, ""),
        ("nomask", 1, "train", 0, "", 0, ""),
        ("val", 1, "val", 0, "masks/val.png", 1, ""),
    ]
    frame = pd.DataFrame(
        [
            {"image_id": i, "image_path": f"images/{i}.png", "label": lab, "split": sp,
             "spurious": s, "mask_path": m, "mask_available": av, "spurious_mask_path": sm}
            for i, lab, sp, s, m, av, sm in rows
        ]
    )  # fmt: skip
    write_manifest(frame, tmp_path / "manifest.csv")
    return tmp_path / "manifest.csv"


# Intensities are stored as 8-bit PNG: 0.2, 0.6, 0.8 are 51, 153, 204 / 255 (exact).
def _q(values: list[float]) -> np.ndarray:
    return np.round(np.array(values) * 255) / 255


#: Per level: the intensities of the annotated-positive pixels (A's, then B's) and the pixel
#: counts {(s, y): n}, worked out by hand from the fixture's drawings.
EXPECTED = {
    # Y itself: A (1, 1); B (2, 0), (3, 1).
    "mask": ([1.0, 0.6, 0.6], {(0, 1): 3}),
    # Euclidean distance <= 1 (the 4-neighbourhood). A: (1, 1) + (0, 1), (2, 1), (1, 0) at 0.2
    # and the tube pixel (1, 2) at 0.8. B: (2, 0), (3, 1) + (1, 0), (3, 0), (2, 1), (3, 2) at 0.
    "dilate:1": (
        [1.0, 0.2, 0.2, 0.2, 0.8, 0.6, 0.6, 0.0, 0.0, 0.0, 0.0],
        {(0, 1): 3, (1, 0): 1, (0, 0): 7},
    ),
    # A: one pixel, its own box. B: the diagonal pair is one 8-connected component: rows 2-3,
    # cols 0-1 = the two pathology pixels and (2, 1), (3, 0) at 0.
    "box": ([1.0, 0.6, 0.6, 0.0, 0.0], {(0, 1): 3, (0, 0): 2}),
    # Every pixel: A's 16 (1.0, two tube pixels at 0.8, thirteen at 0.2) and B's 16.
    "image": (
        [1.0, 0.8, 0.8] + [0.2] * 13 + [0.6, 0.6] + [0.0] * 14,
        {(0, 1): 3, (1, 0): 2, (0, 0): 27},
    ),
}


def test_measures_match_hand_computed_values(tiny: Path) -> None:
    result = analyze_manifest(tiny, LEVELS, split="train", progress=False)
    assert result["n_images"] == 2  # a, b: the negative and the unmasked positive are left out
    assert result["n_positives_without_mask"] == 1
    assert result["n_images_spurious_unknown"] == 0
    assert result["image_sizes"] == ["4x4"]
    rows = {row["specificity"]: row for row in result["levels"]}
    assert list(rows) == ["mask", "dilate:1", "box", "image"]
    for name, (values, counts) in EXPECTED.items():
        row, x = rows[name], _q(values)
        n = len(values)
        assert row["n_pixels"] == n == sum(counts.values()), name
        mean = x.sum() / n
        # images are read as float32: equal to ~1e-7 relative
        assert row["variance"] == pytest.approx(((x - mean) ** 2).sum() / n, rel=1e-6), name
        assert row["mutual_information"] == pytest.approx(_mi_bits(counts), abs=1e-12), name
        assert row["spurious_share"] == pytest.approx(counts.get((1, 0), 0) / n), name
        assert row["pathology_share"] == pytest.approx(3 / n), name
        assert row["counts"] == {
            f"s{s}_y{y}": counts.get((s, y), 0) for s in (0, 1) for y in (0, 1)
        }
    # The numbers themselves, for the record (exact 0.2 / 0.6 / 0.8 ignoring 8-bit rounding):
    # mask: mean 2.2 / 3, variance 0.32 / 9; dilate:1: MI = 7/11 log2(77/80) + 3/11 log2(11/10)
    # + 1/11 log2(11/8) bits.
    assert rows["mask"]["variance"] == pytest.approx(0.32 / 9, abs=1e-4)
    mi = 7 / 11 * math.log2(77 / 80) + 3 / 11 * math.log2(11 / 10) + 1 / 11 * math.log2(11 / 8)
    assert rows["dilate:1"]["mutual_information"] == pytest.approx(mi, abs=1e-12)
    assert rows["mask"]["mutual_information"] == 0.0  # Y is constant on the mask
    assert rows["box"]["mutual_information"] == 0.0  # no tube pixel in the boxes
    assert rows["mask"]["radius"] == 0 and rows["image"]["radius"] == 4
    assert rows["dilate:1"]["radius"] == 1 and rows["box"]["radius"] is None


def test_nested_pairs_say_which_measure_falls(tiny: Path) -> None:
    result = analyze_manifest(tiny, LEVELS, progress=False)
    pairs = {(p["outer"], p["inner"]): p for p in result["nested"]}
    assert set(pairs) == {("dilate:1", "mask"), ("box", "mask"), ("image", "mask"),
                          ("image", "dilate:1"), ("image", "box")}  # fmt: skip
    rows = {row["specificity"]: row for row in result["levels"]}
    for (outer, inner), pair in pairs.items():
        for measure in ("variance", "mutual_information"):
            assert pair[f"{measure}_falls"] == (rows[outer][measure] > rows[inner][measure])
    # MI rises from `image` to `dilate:1` here: the tube lies next to the pathology.
    assert pairs[("image", "dilate:1")]["mutual_information_falls"] is False


def test_mutual_information_bits() -> None:
    assert mutual_information_bits([[5, 0], [0, 5]]) == pytest.approx(1.0)
    assert mutual_information_bits([[2, 4], [3, 6]]) == pytest.approx(0.0, abs=1e-15)
    assert mutual_information_bits([[7, 0], [0, 0]]) == 0.0
    with pytest.raises(ValueError, match="empty table"):
        mutual_information_bits(np.zeros((2, 2)))


def test_image_size_resizes_first(tiny: Path) -> None:
    result = analyze_manifest(tiny, "mask,image", image_size=8, progress=False)
    rows = {row["specificity"]: row for row in result["levels"]}
    assert rows["image"]["n_pixels"] == 2 * 64 and rows["image"]["radius"] == 8
    assert rows["mask"]["n_pixels"] == 3 * 4  # nearest neighbour: each pixel becomes 2 x 2
    assert result["image_size"] == 8


def test_unknown_spurious_pixels_count_for_the_variance_only(tiny: Path) -> None:
    frame = pd.read_csv(tiny, keep_default_na=False)
    frame.loc[frame["image_id"] == "b", "spurious"] = 1  # a tube somewhere, no mask file
    frame.to_csv(tiny, index=False)
    result = analyze_manifest(tiny, "image", progress=False)
    row = result["levels"][0]
    assert result["n_images_spurious_unknown"] == 1 and result["images_spurious_unknown"] == ["b"]
    assert row["n_pixels"] == 32 and row["n_pixels_spurious_known"] == 16
    assert row["spurious_share"] == pytest.approx(2 / 16)
    assert row["mutual_information"] == pytest.approx(_mi_bits({(0, 1): 1, (1, 0): 2, (0, 0): 13}))


def test_without_spurious_masks_only_the_variance(tiny: Path) -> None:
    frame = pd.read_csv(tiny, keep_default_na=False).drop(columns="spurious_mask_path")
    frame.to_csv(tiny, index=False)
    result = analyze_manifest(tiny, "mask,image", progress=False)
    assert result["spurious_masks"] is False
    for row in result["levels"]:
        assert row["variance"] is not None
        assert row["mutual_information"] is None and row["spurious_share"] is None
    assert all(p["mutual_information_falls"] is None for p in result["nested"])


def test_an_unreadable_mask_names_its_row_and_file(tiny: Path) -> None:
    (tiny.parent / "masks" / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError) as err:
        analyze_manifest(tiny, "mask", progress=False)
    message = str(err.value)
    assert "line 3" in message and "image_id 'b'" in message and "b.png" in message


def test_bad_inputs(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split 'test' has no rows"):
        analyze_manifest(tiny, "mask", split="test", progress=False)
    with pytest.raises(ValueError, match="invalid spatial specificity 'dilate:r'"):
        analyze_manifest(tiny, "mask,dilate:r", progress=False)
    frame = pd.read_csv(tiny, keep_default_na=False).drop(columns="mask_path")
    frame.to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(ValueError, match="mask_path"):
        analyze_manifest(tmp_path / "broken.csv", "mask", progress=False)


def test_cli_writes_json_markdown_and_plot(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["analyze", "specificity", "--manifest", str(tiny), "--specificities", LEVELS,
            "--split", "train", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads((out / "specificity.json").read_text())
    assert [lv["specificity"] for lv in payload["levels"]] == LEVELS.split(",")
    keys = {"specificity", "variance", "mutual_information", "spurious_share", "n_pixels"}
    assert all(keys <= set(lv) for lv in payload["levels"])
    assert payload["analysis"] == "specificity" and "git_commit" in payload
    assert "bits" in payload["units"]["mutual_information"]
    assert payload["split"] == "train" and payload["manifest"] == str(tiny.resolve())
    md = (out / "specificity.md").read_text()
    assert "| `dilate:1` | 1 |" in md and "**bits**" in md and "`image` ⊇ `dilate:1`" in md
    assert (out / "specificity.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "dilate:1" in printed and str(out / "specificity.json") in printed

    assert main([*argv[:4], "--specificities", "mask,boxes", "--out", str(out)]) == 2
    assert "invalid spatial specificity 'boxes'" in capsys.readouterr().err
