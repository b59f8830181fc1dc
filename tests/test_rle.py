"""Tests for SIIM-ACR RLE label files: parsing, decoding, encoding and file reading."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest

from spatialspec.data.rle import (
    RLEError,
    RLERow,
    decode_rows,
    parse_rle,
    read_rle_csv,
    rle_decode,
    rle_encode,
)

#: The worked example of the format description (and its encoding).
EXAMPLE = np.array(
    [
        [0, 1, 1, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 1],
        [0, 0, 0, 0],
    ],
    dtype=bool,
)
EXAMPLE_RLE = "4 2 2 1 5 1"


def _naive_decode(text: str, height: int, width: int) -> np.ndarray:
    """Reference decoder: one pixel at a time, column-major (flat index = col * h + row)."""
    mask = np.zeros((height, width), dtype=bool)
    if text.strip() == "-1":
        return mask
    values = [int(token) for token in text.split()]
    position = 0
    for start, length in zip(values[0::2], values[1::2], strict=True):
        position += start
        for index in range(position, position + length):
            mask[index % height, index // height] = True
        position += length
    return mask


def _naive_encode(mask: np.ndarray) -> str:
    """Reference encoder: walk the pixels column by column."""
    height, width = mask.shape
    tokens: list[int] = []
    previous_end, run_start = 0, None
    for index in range(height * width + 1):
        on = index < height * width and bool(mask[index % height, index // height])
        if on and run_start is None:
            run_start = index
        elif not on and run_start is not None:
            tokens += [run_start - previous_end, index - run_start]
            previous_end, run_start = index, None
    return " ".join(map(str, tokens)) or "-1"


def _random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blobs of varying density (runs of several lengths, some crossing columns)."""
    density = rng.uniform(0.05, 0.95)
    coarse = rng.random((height // 2 + 1, width // 3 + 1)) < density
    noise = rng.random((height, width)) < 0.05
    return np.kron(coarse, np.ones((2, 3), bool))[:height, :width] ^ noise


def _write(path: Path, text: str, *, bom: bool = False, crlf: bool = False) -> Path:
    if crlf:
        text = text.replace("\n", "\r\n")
    data = ("\ufeff" if bom else "").encode() + text.encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _as_plain(labels: dict[str, list[RLERow]]) -> dict[str, list[list[int] | None]]:
    return {
        key: [None if row.runs is None else row.runs.ravel().tolist() for row in rows]
        for key, rows in labels.items()
    }


# --------------------------------------------------------------------------- strings and masks


def test_worked_example_both_ways() -> None:
    runs = parse_rle(EXAMPLE_RLE)
    assert runs is not None and runs.dtype == np.int64
    assert runs.tolist() == [[4, 2], [2, 1], [5, 1]]
    decoded = rle_decode(runs, 4, 4)
    assert decoded.dtype == bool and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, EXAMPLE)
    assert rle_encode(EXAMPLE) == EXAMPLE_RLE
    assert rle_encode(EXAMPLE.astype(np.uint8)) == EXAMPLE_RLE


def test_column_major_on_non_square_image() -> None:
    mask = np.zeros((3, 5), dtype=bool)
    mask[1, 2] = True  # flat index 2 * 3 + 1 = 7
    mask[0, 4] = True  # flat index 4 * 3 + 0 = 12
    assert rle_encode(mask) == "7 1 4 1"
    np.testing.assert_array_equal(rle_decode(parse_rle("7 1 4 1"), 3, 5), mask)
    assert rle_encode(mask.T) == _naive_encode(mask.T) == "4 1 2 1"  # 0 * 5 + 4, 1 * 5 + 2


@pytest.mark.parametrize("shape", [(4, 4), (3, 7), (7, 3), (1, 9), (9, 1), (33, 20), (20, 64)])
def test_round_trip_matches_naive_reference(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(4):
        mask = _random_mask(rng, *shape)
        text = rle_encode(mask)
        assert text == _naive_encode(mask)
        np.testing.assert_array_equal(rle_decode(parse_rle(text), *shape), mask)
        np.testing.assert_array_equal(_naive_decode(text, *shape), mask)


@pytest.mark.parametrize("fill", [False, True])
def test_empty_and_full_masks(fill: bool) -> None:
    mask = np.full((5, 3), fill)
    text = rle_encode(mask)
    assert text == ("0 15" if fill else "-1")
    np.testing.assert_array_equal(rle_decode(parse_rle(text), 5, 3), mask)


def test_decode_none_and_run_ending_on_last_pixel() -> None:
    assert not rle_decode(None, 2, 3).any()
    assert rle_decode(None, 2, 3).shape == (2, 3)
    last = rle_decode(parse_rle("5 1"), 2, 3)
    assert last.sum() == 1 and last[1, 2]


def test_decode_run_past_the_end_says_how_far() -> None:
    with pytest.raises(
        RLEError, match=r"run 2 \(of 2\) ends at pixel 18, 2 pixel\(s\) past.*4x4 image \(16"
    ):
        rle_decode(parse_rle("4 2 9 3"), 4, 4)


def test_adjacent_runs_with_zero_gap() -> None:
    np.testing.assert_array_equal(rle_decode(parse_rle("1 1 0 2"), 4, 1)[:, 0], [0, 1, 1, 1])


def test_encode_rejects_bad_masks() -> None:
    with pytest.raises(RLEError, match="2-D"):
        rle_encode(np.zeros((2, 2, 2), bool))
    with pytest.raises(RLEError, match="0/1"):
        rle_encode(np.array([[0, 2]]))


def test_decode_full_size_mask_with_many_runs() -> None:
    rng = np.random.default_rng(0)
    runs = np.column_stack([rng.integers(200, 1500, 600), rng.integers(1, 400, 600)])
    assert runs.sum() < 1024 * 1024
    mask = rle_decode(runs, 1024, 1024)
    assert mask.sum() == runs[:, 1].sum()
    assert rle_encode(mask) == " ".join(str(v) for v in runs.ravel())


# --------------------------------------------------------------------------- parse_rle errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("  \t ", "is empty"),
        ("1 x", r"token 2 \('x'\) is not an integer"),
        ("1.5 2", r"token 1 \('1.5'\) is not an integer"),
        ("1 2 3", r"odd number of tokens \(3\)"),
        ("1 -2", r"token 2 \('-2'\) is negative"),
        ("3 4 1 0", r"run 2 \(of 2\) has length 0"),
        ("-1 3 4", r"mixes '-1'.*2 other token"),
    ],
)
def test_parse_rle_errors(text: str, message: str) -> None:
    with pytest.raises(RLEError, match=message):
        parse_rle(text)


def test_parse_rle_ignores_surrounding_whitespace() -> None:
    assert parse_rle(" -1\r\n") is None
    runs = parse_rle("\t 3  4\n5 6 ")
    assert runs is not None and runs.tolist() == [[3, 4], [5, 6]]


# --------------------------------------------------------------------------- decode_rows


def test_decode_rows_is_the_union_of_overlapping_rows() -> None:
    first = np.zeros((6, 5), bool)
    first[1:4, 1:3] = True
    second = np.zeros((6, 5), bool)
    second[2:5, 2:4] = True
    assert (first & second).any()
    rows = [RLERow(2, parse_rle(rle_encode(first))), RLERow(7, parse_rle(rle_encode(second)))]
    out = decode_rows(rows, 6, 5)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, first | second)
    assert out.sum() == (first | second).sum() < first.sum() + second.sum()


def test_decode_rows_ignores_negative_rows_and_names_the_line() -> None:
    assert not decode_rows([RLERow(1, None)], 4, 4).any()
    assert not decode_rows([], 4, 4).any()
    rows = [RLERow(2, parse_rle("0 1")), RLERow(9, parse_rle("15 2"))]
    with pytest.raises(RLEError, match=r"^labels\.csv:9: run 1 \(of 1\).*1 pixel\(s\) past"):
        decode_rows(rows, 4, 4, source="labels.csv")


# --------------------------------------------------------------------------- files

ROWS = "a,-1\nb,4 2 2 1 5 1\nc,0 3\nb,10 2\n"
EXPECTED = {"a": [None], "b": [[4, 2, 2, 1, 5, 1], [10, 2]], "c": [[0, 3]]}


@pytest.mark.parametrize(
    ("name", "text", "bom", "crlf"),
    [
        ("header.csv", "ImageId,EncodedPixels\n" + ROWS, False, False),
        ("space.csv", "ImageId, EncodedPixels\n" + ROWS.replace(",", ", "), False, False),
        ("lower.csv", "imageid,encodedpixels\n" + ROWS, False, False),
        ("bare.csv", ROWS, False, False),
        ("sample.csv", ROWS.replace(",", ", ").replace(", -1", ",-1"), True, True),
        ("blank.csv", "\nImageId,EncodedPixels\n\n" + ROWS.replace("\n", "\n  \n"), False, True),
        ("labels.csv.gz", "ImageId, EncodedPixels\n" + ROWS, True, True),
        ("no_suffix.txt", "ImageId,EncodedPixels\n" + ROWS, False, False),
    ],
)
def test_read_rle_csv_variants(tmp_path: Path, name: str, text: str, bom: bool, crlf: bool) -> None:
    path = _write(tmp_path / name, text, bom=bom, crlf=crlf)
    assert _as_plain(read_rle_csv(path)) == EXPECTED


def test_gzip_detected_by_magic_bytes(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(gzip.compress(("ImageId,EncodedPixels\n" + ROWS).encode()))
    assert _as_plain(read_rle_csv(path)) == EXPECTED


def test_line_numbers_are_physical(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.csv", "ImageId,EncodedPixels\n\na,-1\n\nb,1 2\nb,5 1\n", crlf=True)
    labels = read_rle_csv(str(path))
    assert [row.line for row in labels["a"]] == [3]
    assert [row.line for row in labels["b"]] == [5, 6]
    bare = read_rle_csv(_write(tmp_path / "bare.csv", ROWS))
    assert [row.line for row in bare["b"]] == [2, 4]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("a,1 2,3\n", r":2: expected 2 fields \(ImageId,EncodedPixels\), found 3"),
        ("a,-1\nb\n", r":3: expected 2 fields.*found 1"),
        (" ,1 2\n", r":2: ImageId is empty"),
        ("a,\n", r":2: image 'a': EncodedPixels is empty"),
        ("a,-1\nb,1 x\n", r":3: image 'b': EncodedPixels token 2 \('x'\) is not an integer"),
        ("a,1 2 3\n", r":2: image 'a': EncodedPixels has an odd number of tokens \(3\)"),
        ("a,1 -2\n", r":2: image 'a': EncodedPixels token 2 \('-2'\) is negative"),
        ("a,1 0\n", r":2: image 'a': EncodedPixels run 1 \(of 1\) has length 0"),
        ("a,-1 1 2\n", r":2: image 'a': EncodedPixels mixes '-1'"),
        ("a,1 2\nb,-1\na,-1\n", r":4: image 'a' is '-1'.* runs at line 2 \(contradictory"),
    ],
)
def test_read_rle_csv_errors_name_file_and_line(tmp_path: Path, rows: str, message: str) -> None:
    path = _write(tmp_path / "bad.csv", "ImageId,EncodedPixels\n" + rows)
    with pytest.raises(RLEError, match=re.escape(str(path)) + message) as info:
        read_rle_csv(path)
    assert "1 problem\n" in str(info.value)


def test_read_rle_csv_lists_first_five_problems(tmp_path: Path) -> None:
    rows = "".join(f"id{i},{i} x\n" for i in range(8))
    path = _write(tmp_path / "many.csv", "ImageId,EncodedPixels\nok,-1\n" + rows)
    with pytest.raises(RLEError, match=r"8 problems") as info:
        read_rle_csv(path)
    message = str(info.value)
    assert f"{path}:3: image 'id0'" in message and f"{path}:7: image 'id4'" in message
    assert "id5" not in message
    assert message.endswith("... and 3 more")


def test_read_rle_csv_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    with pytest.raises(RLEError, match=re.escape(str(missing))):
        read_rle_csv(missing)
    with pytest.raises(RLEError, match=re.escape(str(tmp_path))):
        read_rle_csv(tmp_path)
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(gzip.compress(b"ImageId,EncodedPixels\na,-1\n")[:-12])
    with pytest.raises(RLEError, match=re.escape(str(corrupt)) + ": not a readable"):
        read_rle_csv(corrupt)


# --------------------------------------------------------------------------- real data


def _shared(name: str) -> Path:
    root = os.environ.get("SPATIALSPEC_SHARED_DATA")
    if not root:
        pytest.skip("SPATIALSPEC_SHARED_DATA is not set")
    return Path(root, "siim", name)


@pytest.mark.integration
def test_real_sample_label_file() -> None:
    path = _shared("train-rle-sample.csv")
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf" and b"\r\n" in path.read_bytes()
    labels = read_rle_csv(path)
    assert len(labels) == 10
    assert [rows[0].line for rows in labels.values()] == list(range(1, 11))
    positive = {key for key, rows in labels.items() if rows[0].runs is not None}
    assert len(positive) == 5
    for key in positive:
        mask = decode_rows(labels[key], 1024, 1024, source=str(path))
        assert 0 < mask.sum() == sum(int(row.runs[:, 1].sum()) for row in labels[key])


@pytest.mark.integration
def test_real_full_label_file() -> None:
    labels = read_rle_csv(_shared("siim-pneumothorax-train-rle.csv.gz"))
    assert sum(len(rows) for rows in labels.values()) == 12_954
    assert len(labels) == 12_047
    positive = {key for key, rows in labels.items() if rows[0].runs is not None}
    assert len(positive) == 2_669
    overlapping = 0
    for key in positive:
        rows = labels[key]
        if len(rows) > 1:
            union = decode_rows(rows, 1024, 1024).sum()
            overlapping += union < sum(int(row.runs[:, 1].sum()) for row in rows)
    assert overlapping == 183
