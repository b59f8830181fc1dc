"""On-disk cache of decoded, resized (un-augmented) images and masks.

Decoding a 1024² DICOM and resizing it costs several milliseconds; loading the resized result
back costs a tenth of a millisecond. :class:`ImageCache` keeps, per sample, the image already
resized to the network input (stored as ``uint16``, i.e. quantised to 1/65535) and its resized
mask, so epochs 2+ skip decoding and resizing. Augmentation happens after the cache, so it still
differs every epoch.

An entry's key hashes the resolved image and mask paths, their sizes and modification times, the
output size, channels, interpolation and :data:`CACHE_VERSION`: editing or replacing a file,
changing the input size or changing the decoding code (bump the constant) makes a new entry.
Entries are written to a temporary file and moved into place, so DataLoader workers can fill the
cache concurrently and a reader never sees a half-written file; an unreadable entry counts as a
miss and is rewritten. Stale entries are never deleted: remove the folder to reclaim space.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["CACHE_VERSION", "ImageCache", "dequantise", "quantise"]

#: Bump when decoding, resizing or the file layout changes: old entries are then ignored.
CACHE_VERSION = 1
_SCALE = 65535

#: ``(image, mask)``: image ``(S, S, C)`` float32 in [0, 1], mask ``(S, S)`` uint8 or None.
Sample = tuple[np.ndarray, np.ndarray | None]


def quantise(image: np.ndarray) -> np.ndarray:
    """float image in [0, 1] -> uint16 (rounded; error <= 0.5 / 65535)."""
    scaled = np.clip(image, 0.0, 1.0) * np.float32(_SCALE)
    return np.rint(scaled, out=scaled).astype(np.uint16)


def dequantise(stored: np.ndarray) -> np.ndarray:
    """uint16 image -> float32 in [0, 1]."""
    return np.divide(stored, np.float32(_SCALE), dtype=np.float32)


class ImageCache:
    """Decoded, resized images and masks in ``<root>/<key[:2]>/<key>.npy``.

    Each file holds the ``uint16`` image ``(S, S, C)`` followed, for samples with a mask, by
    the ``bool`` mask ``(S, S)`` (two consecutive ``.npy`` records). Counters ``hits``,
    ``misses`` and ``corrupt`` (unreadable entries, included in ``misses``) are per process:
    each DataLoader worker counts its own.

    Args:
        root: Cache folder (created on the first write).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.hits = self.misses = self.corrupt = 0
        self._resolved: dict[str, str] = {}
        self._warned = False

    def key(
        self,
        image_path: str | os.PathLike[str],
        mask_path: str | os.PathLike[str] | None,
        image_size: int,
        channels: int,
        interpolation: str,
    ) -> str:
        """Hex key of one sample's entry; changes when any input file or setting changes.

        Raises:
            FileNotFoundError: If the image or mask does not exist.
        """
        parts: list[object] = [CACHE_VERSION, image_size, channels, interpolation]
        for path in (image_path, mask_path):
            if path is None:
                parts.append(None)
                continue
            stat = os.stat(path)
            parts += [self._resolve(path), stat.st_size, stat.st_mtime_ns]
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()

    def path(self, key: str) -> Path:
        """File of the entry ``key``."""
        return self.root / key[:2] / f"{key}.npy"

    def load(self, key: str, image_size: int, channels: int, with_mask: bool) -> Sample | None:
        """The entry ``key`` as ``(image, mask)``, or None if it is absent or unreadable.

        Args:
            key: From :meth:`key`.
            image_size: Expected side; an entry of another shape counts as unreadable.
            channels: Expected channels.
            with_mask: Whether the entry holds a mask.
        """
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            self.corrupt += 1
            return None
        side = (image_size, image_size)
        layout = [((*side, channels), "<u2")] + ([(side, "|b1")] if with_mask else [])
        arrays = _parse_npy(data, layout)
        if arrays is None:
            self.corrupt += 1
            return None
        mask = arrays[1].view(np.uint8) if with_mask else None
        return dequantise(arrays[0]), mask

    def store(self, key: str, image: np.ndarray, mask: np.ndarray | None) -> Sample:
        """Write an entry atomically; returns it as :meth:`load` would read it back.

        A failed write (e.g. a full disk) only warns: the sample is still returned.
        """
        stored = quantise(image)  # (S, S, C) uint16
        flags = None if mask is None else np.asarray(mask, dtype=bool)  # (S, S)
        try:
            self._write(self.path(key), stored, flags)
        except OSError as exc:
            if not self._warned:
                warnings.warn(f"image cache {self.root}: cannot write ({exc})", stacklevel=2)
                self._warned = True
        return dequantise(stored), None if flags is None else flags.view(np.uint8)

    def fetch(
        self,
        image_path: str | os.PathLike[str],
        mask_path: str | os.PathLike[str] | None,
        image_size: int,
        channels: int,
        interpolation: str,
        build: Callable[[], Sample],
    ) -> Sample:
        """The cached sample, or ``build()`` stored and returned on a miss.

        Hits and misses return the same (quantised) values, so a run does not depend on
        whether the cache was warm. A missing file is left to ``build`` to report.
        """
        try:
            key = self.key(image_path, mask_path, image_size, channels, interpolation)
        except OSError:
            return build()
        sample = self.load(key, image_size, channels, with_mask=mask_path is not None)
        if sample is not None:
            self.hits += 1
            return sample
        self.misses += 1
        return self.store(key, *build())

    def _resolve(self, path: str | os.PathLike[str]) -> str:
        name = os.fspath(path)
        resolved = self._resolved.get(name)
        if resolved is None:
            resolved = self._resolved[name] = os.path.realpath(name)
        return resolved

    @staticmethod
    def _write(final: Path, stored: np.ndarray, mask: np.ndarray | None) -> None:
        """Temporary sibling + ``os.replace``: readers see the old entry or the whole new one.

        No fsync: an entry damaged by a crash fails to load and is rebuilt.
        """
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with _create(tmp) as fh:
                np.save(fh, stored, allow_pickle=False)
                if mask is not None:
                    np.save(fh, mask, allow_pickle=False)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def _create(path: Path) -> BinaryIO:
    """Open a new file for writing, creating its folder on first use (one syscall after)."""
    try:
        return open(path, "xb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "xb")


@functools.lru_cache(maxsize=32)
def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    """The exact bytes ``np.save`` writes before a C-order array of ``shape`` and ``descr``."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _parse_npy(data: bytes, layout: list[tuple[tuple[int, ...], str]]) -> list[np.ndarray] | None:
    """Consecutive ``.npy`` records of known shapes and dtypes, or None if ``data`` differs.

    Comparing the headers with the expected bytes is ~3x faster than ``np.load``'s parsing;
    the total length must match exactly (a truncated or overlong file is rejected).
    """
    arrays, offset = [], 0
    for shape, descr in layout:
        header = _npy_header(shape, descr)
        if data[offset : offset + len(header)] != header:
            return None
        offset += len(header)
        count = math.prod(shape)
        if offset + count * np.dtype(descr).itemsize > len(data):
            return None
        arrays.append(np.frombuffer(data, descr, count, offset).reshape(shape))
        offset += count * np.dtype(descr).itemsize
    return arrays if offset == len(data) else None
