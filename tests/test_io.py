"""Tests for image/mask I/O: Pillow formats, synthetic DICOMs and error reporting."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from spatialspec.data import ImageReadError, read_image, read_mask, write_png

# --------------------------------------------------------------------------- helpers


def _gradient(height: int = 24, width: int = 32) -> np.ndarray:
    """A smooth, non-symmetric uint8 image (height != width catches transposes)."""
    return (np.add.outer(np.arange(height) * 4, np.arange(width) * 3) % 256).astype(np.uint8)


def _mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    **elements: object,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixel_data if pixel_data is not None else pixels.tobytes()
    if pixel_data is not None:
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- Pillow formats


def test_png_8bit_grey_exact(tmp_path: Path) -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)[:, ::-1][6:]
    Image.fromarray(pixels).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.float32
    assert out.shape == (10, 16)
    np.testing.assert_array_equal(out, pixels.astype(np.float32) / np.float32(255))
    assert out[0, 0] == np.float32(111 / 255)
    assert out.max() == 1.0


def test_png_16bit_exact(tmp_path: Path) -> None:
    pixels = np.array([[0, 1, 1000], [32768, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    assert _mode(tmp_path / "g16.png").startswith("I")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.float32
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, pixels / 65535.0, rtol=0, atol=1e-7)
    assert out[1, 2] == 1.0 and out[0, 0] == 0.0


def test_png_rgb_and_rgba_exact(tmp_path: Path) -> None:
    rgb = np.stack([_gradient(), 255 - _gradient(), np.full((24, 32), 7, np.uint8)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    alpha = np.full((24, 32, 1), 100, np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), mode="RGBA").save(tmp_path / "a.png")
    expected = rgb.astype(np.float32) / np.float32(255)
    for name in ("c.png", "a.png"):
        out = read_image(tmp_path / name)
        assert out.shape == (24, 32, 3)
        np.testing.assert_array_equal(out, expected)


def test_png_la_and_palette(tmp_path: Path) -> None:
    grey = _gradient()
    Image.fromarray(np.stack([grey, np.full_like(grey, 9)], -1), mode="LA").save(
        tmp_path / "la.png"
    )
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), grey / np.float32(255))

    Image.fromarray(grey).quantize(colors=256).save(tmp_path / "p_grey.png")
    assert _mode(tmp_path / "p_grey.png") == "P"
    out = read_image(tmp_path / "p_grey.png")
    assert out.shape == (24, 32)
    np.testing.assert_array_equal(out, grey / np.float32(255))

    colour = np.zeros((4, 5, 3), np.uint8)
    colour[..., 0] = 200
    colour[1:, :, 2] = 50
    Image.fromarray(colour).quantize(colors=4).save(tmp_path / "p_col.png")
    assert _mode(tmp_path / "p_col.png") == "P"
    out = read_image(tmp_path / "p_col.png")
    assert out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out, colour / np.float32(255))


def test_jpeg_reads(tmp_path: Path) -> None:
    grey = _gradient()
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == (24, 32) and out.dtype == np.float32
    assert np.abs(out - grey / 255.0).max() < 0.05

    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.jpeg", quality=95)
    out = read_image(tmp_path / "c.jpeg")
    assert out.shape == (24, 32, 3)
    assert np.abs(out - rgb / 255.0).mean() < 0.03


def test_write_png_round_trip(tmp_path: Path) -> None:
    grey = _gradient()
    target = tmp_path / "new" / "dir" / "g.png"
    write_png(target, grey)
    np.testing.assert_array_equal(_pixels(target), grey)
    mask = grey > 100
    write_png(tmp_path / "m.png", mask)
    stored = _pixels(tmp_path / "m.png")
    assert stored.dtype == np.uint8 and set(np.unique(stored)) == {0, 255}
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)
    write_png(tmp_path / "f.png", np.array([[0.0, 0.5, 1.0]]))
    assert _pixels(tmp_path / "f.png").tolist() == [[0, 128, 255]]
    rgb = np.stack([grey] * 3, -1)
    write_png(tmp_path / "rgb.png", rgb)
    assert _mode(tmp_path / "rgb.png") == "RGB"
    # Atomic writes leave no temporary files behind.
    assert sorted(os.listdir(tmp_path)) == ["f.png", "m.png", "new", "rgb.png"]
    assert os.listdir(target.parent) == ["g.png"]


def test_write_png_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_png(tmp_path / "x.png", np.array([[1.5]]))
    with pytest.raises(ValueError, match="dtype"):
        write_png(tmp_path / "x.png", np.zeros((2, 2), np.int64))
    assert os.listdir(tmp_path) == []


def test_truncated_png_raises(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(
        tmp_path / "full.png"
    )
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"nope\.png"):
        read_image(tmp_path / "nope.png")


# --------------------------------------------------------------------------- DICOM


def test_dicom_8bit_monochrome2(tmp_path: Path) -> None:
    pixels = _gradient()
    path = _write_dicom(tmp_path / "a.dcm", pixels)
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (24, 32)
    np.testing.assert_allclose(out, pixels / 255.0, rtol=0, atol=1e-7)
    assert out[0, 0] == 0.0 and out[0, 1] == pytest.approx(3 / 255)


def test_dicom_12bit_monochrome1_rescaled(tmp_path: Path) -> None:
    pixels = (np.add.outer(np.arange(20) * 150, np.arange(30) * 37) % 4096).astype(np.uint16)
    pixels[0, 0], pixels[-1, -1] = 0, 4095
    path = _write_dicom(
        tmp_path / "b.dcm",
        pixels,
        photometric="MONOCHROME1",
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-100,
    )
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (20, 30)
    # Possible range after rescale is [-100, 8090]; MONOCHROME1 is inverted.
    np.testing.assert_allclose(out, 1.0 - pixels / 4095.0, rtol=0, atol=1e-6)
    assert out[0, 0] == 1.0 and out[-1, -1] == 0.0


def test_dicom_windowing(tmp_path: Path) -> None:
    pixels = np.array([[0, 900, 1000, 1100, 4000]], dtype=np.uint16)
    path = _write_dicom(
        tmp_path / "w.dcm", pixels, bits_stored=12, WindowCenter=1000, WindowWidth=201
    )
    out = read_image(path)
    # DICOM LINEAR window: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to [0, 1].
    expected = np.clip((pixels - 999.5) / 200.0 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert out[0, 0] == 0.0 and out[0, -1] == 1.0 and 0.45 < out[0, 2] < 0.55


def test_dicom_signed_16bit(tmp_path: Path) -> None:
    pixels = np.array([[-32768, -1000, 0], [1000, 20000, 32767]], dtype=np.int16)
    out = read_image(_write_dicom(tmp_path / "s.dcm", pixels))
    np.testing.assert_allclose(out, (pixels.astype(np.float64) + 32768) / 65535, atol=1e-6)


def test_dicom_detected_by_preamble_without_suffix(tmp_path: Path) -> None:
    pixels = _gradient()
    _write_dicom(tmp_path / "a.dcm", pixels)
    (tmp_path / "a.dcm").rename(tmp_path / "no_suffix")
    np.testing.assert_allclose(read_image(tmp_path / "no_suffix"), pixels / 255.0, atol=1e-7)


def test_dicom_jpeg_baseline(tmp_path: Path) -> None:
    pixels = _gradient()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    path = _write_dicom(
        tmp_path / "j.dcm",
        pixels,
        transfer_syntax=JPEGBaseline8Bit,
        pixel_data=encapsulate([buffer.getvalue()]),
    )
    assert JPEGBaseline8Bit == "1.2.840.10008.1.2.4.50"
    out = read_image(path)
    assert out.shape == (24, 32) and out.dtype == np.float32
    assert np.abs(out - pixels / 255.0).max() < 0.05
    assert out[0, 0] < 0.05 and out[-1, -1] > 0.7


def test_html_saved_as_dcm_raises(tmp_path: Path) -> None:
    path = tmp_path / "error_page.dcm"
    path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    with pytest.raises(ImageReadError, match=r"error_page\.dcm.*HTML"):
        read_image(path)


def test_garbage_dcm_raises(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(bytes(range(256)) * 3)
    with pytest.raises(ImageReadError, match=r"junk\.dcm"):
        read_image(path)


# --------------------------------------------------------------------------- masks


def test_read_mask_values(tmp_path: Path) -> None:
    mask = _gradient() > 60
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m255.png")
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "m1.png")
    for name in ("m255.png", "m1.png"):
        out = read_mask(tmp_path / name, shape=(24, 32, 3))
        assert out.dtype == np.bool_
        np.testing.assert_array_equal(out, mask)
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / "empty.png")
    assert not read_mask(tmp_path / "empty.png").any()


def test_read_mask_rejects_unexpected_values(tmp_path: Path) -> None:
    bad = np.zeros((4, 4), np.uint8)
    bad[0, 0], bad[1, 1] = 255, 128
    Image.fromarray(bad).save(tmp_path / "soft.png")
    with pytest.raises(ImageReadError, match=r"soft\.png.*unexpected values 128"):
        read_mask(tmp_path / "soft.png")


def test_read_mask_rejects_wrong_shape(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(ImageReadError, match=r"m\.png.*\(4, 5\).*\(5, 4\)"):
        read_mask(tmp_path / "m.png", shape=(5, 4))


# --------------------------------------------------------------------------- real data

SHARED = os.environ.get("SPATIALSPEC_SHARED_DATA")


@pytest.mark.integration
@pytest.mark.skipif(not SHARED, reason="SPATIALSPEC_SHARED_DATA is not set")
def test_real_siim_dicoms() -> None:
    files = sorted(Path(str(SHARED), "siim", "sample_images").glob("*.dcm"))
    assert len(files) == 10
    for path in files:
        out = read_image(path)
        assert out.shape == (1024, 1024), path
        assert out.dtype == np.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert float(out.std()) > 0.01, path
