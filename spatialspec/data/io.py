"""Image and mask I/O: PNG/JPEG via Pillow, DICOM via pydicom, atomic PNG writes.

Every image comes back as ``float32`` in ``[0, 1]`` with shape ``(H, W)`` (grayscale) or
``(H, W, 3)`` (colour); every mask as a ``bool`` array of shape ``(H, W)``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from PIL import Image

__all__ = ["ImageReadError", "atomic_open", "read_image", "read_mask", "write_png"]

_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"
_MAX_LISTED_VALUES = 10


class ImageReadError(ValueError):
    """An image or mask file could not be read or does not meet the expected format."""


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing and move it into place on success.

    The temporary file lives in the same directory (so ``os.replace`` is atomic), is fsynced
    before the move, and is removed if the block raises. Parent directories are created.

    Args:
        path: Final destination.
        mode: ``"wb"`` or ``"w"`` (the file is always created fresh).
        **kwargs: Passed to :func:`open` (e.g. ``newline=""``, ``encoding="utf-8"``).

    Yields:
        The open temporary file object.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Atomically write an 8-bit grayscale or RGB PNG, creating parent directories.

    Args:
        path: Destination file.
        array: ``(H, W)`` or ``(H, W, 3)`` array; ``bool`` is written as 0/255, ``uint8`` as
            is, and floating point values in ``[0, 1]`` are scaled by 255 and rounded.

    Raises:
        ValueError: On an unsupported shape, dtype or value range.
    """
    data = _to_uint8(np.asarray(array))
    with atomic_open(path, "wb") as fh:
        Image.fromarray(data).save(fh, format="PNG")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"write_png expects shape (H, W) or (H, W, 3), got {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
            raise ValueError("write_png expects floating point values in [0, 1]")
        return np.rint(array * 255.0).astype(np.uint8)
    raise ValueError(f"write_png expects bool, uint8 or float arrays, got dtype {array.dtype}")


# --------------------------------------------------------------------------- reading images


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG/JPEG (or other Pillow format) or DICOM image as float32 in ``[0, 1]``.

    DICOM is detected by a ``.dcm`` suffix or the ``DICM`` magic at byte 128. For DICOM,
    the modality LUT (rescale) and VOI LUT (window) are applied when present, MONOCHROME1 is
    inverted, and values are scaled by the possible output range of those LUTs (falling back
    to the data min/max when that range is degenerate). 8-bit Pillow images are divided by
    255, 16-bit ones by 65535; alpha channels are dropped.

    Args:
        path: Image file.

    Returns:
        ``float32`` array of shape ``(H, W)`` or ``(H, W, 3)`` with values in ``[0, 1]``.

    Raises:
        ImageReadError: If the file is missing, not an image, truncated or unsupported.
    """
    path = Path(path)
    head = _read_head(path)
    if path.suffix.lower() == ".dcm" or _is_dicom_head(head):
        return _read_dicom(path, head)
    return _read_pillow(path, head)


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    except OSError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc.strerror or exc}") from exc


def _is_dicom_head(head: bytes) -> bool:
    end = _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)
    return head[_DICOM_MAGIC_OFFSET:end] == _DICOM_MAGIC


def _describe_non_image(head: bytes) -> str | None:
    """Return a hint when the file is obviously text (e.g. a saved HTML error page)."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "the file is an HTML/XML document (e.g. a saved error page), not an image"
    if not head:
        return "the file is empty"
    return None


def _read_pillow(path: Path, head: bytes) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return _pillow_to_float(img)
    except Exception as exc:
        hint = _describe_non_image(head)
        cause = hint or f"{type(exc).__name__}: {exc}"
        raise ImageReadError(f"cannot read image {path}: {cause}") from exc


def _pillow_to_float(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.float32)
    if mode in ("L", "LA"):
        return _scale_int(np.asarray(img.getchannel(0)), 255)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float32) / 65535.0
        return np.clip(arr, 0.0, 1.0)
    if mode in ("P", "PA"):
        rgb = np.asarray(img.convert("RGB"))
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return _scale_int(rgb[..., 0], 255)
        return _scale_int(rgb, 255)
    if mode == "F":
        raise ValueError("32-bit float images have no defined value range")
    if mode != "RGB":
        img = img.convert("RGB")
    return _scale_int(np.asarray(img), 255)


def _scale_int(arr: np.ndarray, maximum: int) -> np.ndarray:
    return arr.astype(np.float32) / np.float32(maximum)


# --------------------------------------------------------------------------- DICOM


def _read_dicom(path: Path, head: bytes) -> np.ndarray:
    hint = _describe_non_image(head)
    if hint is not None:
        raise ImageReadError(f"cannot read DICOM {path}: {hint}")
    try:
        ds = _dcmread(path)
        arr = _dicom_to_float(ds)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"cannot read DICOM {path}: {type(exc).__name__}: {exc}") from exc
    return arr


def _dcmread(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        # Some files lack the 128-byte preamble; retry leniently, validated by _dicom_to_float.
        return pydicom.dcmread(path, force=True)


def _dicom_to_float(ds: Any) -> np.ndarray:
    if "PixelData" not in ds:
        raise ValueError("the dataset has no Pixel Data element")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames) is not supported")
    arr = ds.pixel_array
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return _dicom_colour(arr, ds)
    return _dicom_grey(arr, ds)


def _dicom_colour(arr: np.ndarray, ds: Any) -> np.ndarray:
    # pydicom 3 converts YBR colour spaces to RGB in ``pixel_array``.
    maximum = 2 ** int(ds.BitsStored) - 1
    return np.clip(_scale_int(arr, maximum), 0.0, 1.0)


def _apply_luts(arr: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    return apply_voi_lut(apply_modality_lut(arr, ds), ds)


def _possible_range(ds: Any) -> tuple[float, float] | None:
    """Min/max of the LUT output over every storable value, or None for > 16 bits."""
    bits = int(ds.BitsStored)
    if bits > 16:
        return None
    if int(ds.get("PixelRepresentation", 0)) == 1:
        values = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=np.int32)
    else:
        values = np.arange(0, 2**bits, dtype=np.int32)
    out = _apply_luts(values, ds)
    return float(out.min()), float(out.max())


#: Integer pixel dtypes handled by a lookup table -> the unsigned dtype that indexes it.
_TABLE_INDEX = {
    np.dtype(np.uint8): np.dtype(np.uint8),
    np.dtype(np.int8): np.dtype(np.uint8),
    np.dtype(np.uint16): np.dtype(np.uint16),
    np.dtype(np.int16): np.dtype(np.uint16),
}


def _dicom_grey(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values -> float32 in [0, 1]: modality LUT, VOI LUT, scaling, MONOCHROME1.

    For 8/16-bit integer pixels (BitsStored <= 16) the whole chain is evaluated once per
    file on every value the pixel dtype can hold, and the pixels index that table: the same
    element-wise arithmetic as the direct path, so the same float32 results, much faster.
    """
    bounds = _possible_range(ds)
    degenerate = bounds is None or bounds[1] <= bounds[0]
    if not degenerate and arr.dtype in _TABLE_INDEX:
        table = _grey_table(arr.dtype, ds, bounds)  # (2**8,) or (2**16,) float32
        return _lookup(table, arr)
    values = _apply_luts(arr, ds).astype(np.float64)
    if degenerate:  # no usable LUT range: scale by the data range
        bounds = (float(values.min()), float(values.max()))
    return _scale_grey(values, bounds, ds)


def _grey_table(dtype: np.dtype, ds: Any, bounds: tuple[float, float]) -> np.ndarray:
    """The grey chain for every value of ``dtype``, ordered by its unsigned bit pattern."""
    index = _TABLE_INDEX[dtype]
    values = np.arange(np.iinfo(index).max + 1, dtype=index).view(dtype)  # same dtype as arr
    return _scale_grey(_apply_luts(values, ds).astype(np.float64), bounds, ds)


def _lookup(table: np.ndarray, arr: np.ndarray) -> np.ndarray:
    """``table[arr]`` with signed values reinterpreted as their unsigned bit patterns."""
    index = arr.view(_TABLE_INDEX[arr.dtype])
    if index.dtype == np.uint8:
        return cv2.LUT(index, table)  # ~4x faster than NumPy indexing for 8-bit pixels
    return np.take(table, index)


def _scale_grey(values: np.ndarray, bounds: tuple[float, float], ds: Any) -> np.ndarray:
    """float64 LUT output -> float32 in [0, 1] by ``bounds``; MONOCHROME1 is inverted."""
    low, high = bounds
    if high <= low:
        scaled = np.zeros(values.shape, dtype=np.float64)
    else:
        scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


# --------------------------------------------------------------------------- masks


def read_mask(path: str | os.PathLike[str], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a binary PNG mask.

    Args:
        path: Mask file; pixel values must be only {0, 255} or only {0, 1} (a 16-bit mask
            may also use {0, 65535}). Colour masks are accepted when all channels agree.
        shape: Expected ``(H, W)``; a trailing channel dimension (as in an RGB image's
            shape) is ignored.

    Returns:
        ``bool`` array of shape ``(H, W)``.

    Raises:
        ImageReadError: If the file is unreadable, has other values, or the shape differs.
    """
    path = Path(path)
    values = _read_mask_values(path)
    _check_mask_values(path, values)
    mask = values > 0
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise ImageReadError(
            f"mask {path} has shape {tuple(mask.shape)} but the image has shape {tuple(shape[:2])}"
        )
    return mask


def _read_mask_values(path: Path) -> np.ndarray:
    head = _read_head(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "PA"):
                img = img.convert("L")
            arr = np.asarray(img)
    except Exception as exc:
        cause = _describe_non_image(head) or f"{type(exc).__name__}: {exc}"
        raise ImageReadError(f"cannot read mask {path}: {cause}") from exc
    if arr.ndim == 3:
        colour = arr[..., : 3 if arr.shape[2] >= 3 else 1]
        if not (colour == colour[..., :1]).all():
            raise ImageReadError(f"mask {path} is a colour image with differing channels")
        arr = colour[..., 0]
    return arr


def _check_mask_values(path: Path, arr: np.ndarray) -> None:
    if arr.dtype == np.bool_:
        return
    if arr.dtype == np.uint8:  # the common case: a 256-bin histogram (3x faster than bincount)
        counts = cv2.calcHist([np.ascontiguousarray(arr)], [0], None, [256], [0, 256])
        present = {int(v) for v in np.flatnonzero(counts.ravel())}
    else:
        present = {int(v) for v in np.unique(arr)}
    allowed = [{0, 255}, {0, 1}, {0, 65535}] if arr.dtype.itemsize > 1 else [{0, 255}, {0, 1}]
    if any(present <= ok for ok in allowed):
        return
    unexpected = sorted(present - {0, 255}) if 255 in present else sorted(present - {0, 1})
    shown = ", ".join(str(v) for v in unexpected[:_MAX_LISTED_VALUES])
    more = f" (and {len(unexpected) - _MAX_LISTED_VALUES} more)" if len(unexpected) > 10 else ""
    raise ImageReadError(
        f"mask {path} has unexpected values {shown}{more}; expected only {{0, 255}} or {{0, 1}}"
    )
