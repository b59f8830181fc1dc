"""Builders of small datasets in the exact on-disk formats of the public downloads.

Used by the test suite and the benchmarks, and handy for testing code written against
spatialspec: everything here writes real files (DICOM, PNG, CSV) that the data builders read
exactly as they read the originals.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["FakeSIIM", "make_siim_tree", "write_dicom"]

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_dicom(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    sop_instance_uid: str,
    patient_id: str = "anon",
    study_uid: str | None = None,
    series_uid: str | None = None,
    photometric: str = "MONOCHROME2",
    jpeg: bool = True,
    quality: int = 95,
) -> Path:
    """Write a single-frame greyscale DICOM like the SIIM-ACR ones.

    Args:
        path: Destination ``.dcm`` (parent folders are created).
        pixels: ``(H, W)`` ``uint8`` (JPEG Baseline or uncompressed) or ``uint16``
            (uncompressed, 12 bits stored).
        sop_instance_uid: SOPInstanceUID (SIIM uses it as the file stem and image id).
        patient_id: PatientID header value.
        study_uid: StudyInstanceUID (default: derived from the SOP UID).
        series_uid: SeriesInstanceUID (default: derived from the SOP UID).
        photometric: ``MONOCHROME2`` (0 = black) or ``MONOCHROME1`` (0 = white).
        jpeg: Encode ``uint8`` pixels as JPEG Baseline (transfer syntax 1.2.840.10008.1.2.4.50),
            as the SIIM files are; otherwise explicit VR little endian, uncompressed.
        quality: JPEG quality.

    Returns:
        The written path.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate

    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"pixels must be a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}"
        )
    jpeg = jpeg and pixels.dtype == np.uint8
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = JPEG_BASELINE if jpeg else EXPLICIT_VR_LITTLE_ENDIAN
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = _SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_uid or f"{sop_instance_uid}.1"
    ds.SeriesInstanceUID = series_uid or f"{sop_instance_uid}.2"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = "CR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    bits = 8 if pixels.dtype == np.uint8 else 12
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if jpeg:
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- SIIM-ACR tree


@dataclass
class FakeSIIM:
    """A SIIM-ACR-format tree written by :func:`make_siim_tree` and its ground truth.

    Attributes:
        root: Folder holding ``dicom-images-train/<study>/<series>/<id>.dcm``.
        rle_csv: Label file (header ``ImageId, EncodedPixels``, several rows per image where
            there are several regions).
        tube_pkl: Chest-tube labels as the public pickle (id -> bool).
        masks: True pathology mask per image id (all False for negatives).
        tubes: Tube label per labelled image id.
        patients: PatientID per image id.
    """

    root: Path
    rle_csv: Path
    tube_pkl: Path
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    tubes: dict[str, bool] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)


def _xray(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth chest-film-like uint8 image (realistic JPEG sizes, unlike white noise)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((xx - 0.32) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    lungs += np.exp(-(((xx - 0.68) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    ribs = 0.08 * np.sin(yy * 60 + rng.uniform(0, 6))
    image = 0.75 - 0.45 * lungs + ribs + rng.normal(0, 0.02, (size, size))
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    ry, rx = rng.uniform(0.06, 0.15, 2) * size
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def make_siim_tree(
    folder: str | os.PathLike[str],
    n: int = 24,
    size: int = 64,
    seed: int = 0,
    positive_rate: float = 0.4,
    tube_labelled: float = 0.6,
) -> FakeSIIM:
    """Write a small SIIM-ACR download: JPEG-Baseline DICOM tree, RLE CSV, tube pickle.

    Every second positive image has two label rows whose regions overlap (as 183 real
    images do). Two images share a patient. A fraction of images carries a tube label, with
    tubes mostly on positives (the spurious correlation).

    Args:
        folder: Where to write (``folder/siim``).
        n: Number of images.
        size: Image side (the real ones are 1024).
        seed: Content seed.
        positive_rate: Share of positives.
        tube_labelled: Share of images with a tube label.

    Returns:
        Paths and ground truth.
    """
    import pickle

    from spatialspec.data.rle import rle_encode

    rng = np.random.default_rng(seed)
    base = Path(folder) / "siim"
    fake = FakeSIIM(base / "download", base / "train-rle.csv", base / "cxr_tube_dict.pkl")
    lines = ["ImageId, EncodedPixels"]
    for k in range(n):
        uid = f"1.2.276.0.7230010.3.1.4.8323329.{1000 + k}.1517875{k:03d}.{seed}"
        patient = f"patient-{k if k != 1 else 0}"  # images 0 and 1: one patient
        study, series = f"{uid}.2.{k}", f"{uid}.3.{k}"
        positive = rng.random() < positive_rate
        mask = _blob(rng, size) if positive else np.zeros((size, size), bool)
        rows = [rle_encode(mask)] if positive else ["-1"]
        if positive and len(fake.masks) % 2 == 0:
            extra = np.zeros_like(mask)  # a second region overlapping the first
            ys, xs = np.nonzero(mask)
            extra[ys.min() : ys.max() + 1, xs.min() : min(size, xs.max() + 4)] = True
            mask = mask | extra
            rows.append(rle_encode(extra))
        write_dicom(
            fake.root / "dicom-images-train" / study / series / f"{uid}.dcm",
            _xray(rng, size), uid, patient_id=patient, study_uid=study, series_uid=series,
        )  # fmt: skip
        lines += [f"{uid}, {r}" for r in rows]
        fake.masks[uid], fake.patients[uid] = mask, patient
        if rng.random() < tube_labelled:
            fake.tubes[uid] = bool(rng.random() < (0.8 if positive else 0.2))
    fake.rle_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fake.tube_pkl.write_bytes(pickle.dumps(fake.tubes))
    return fake
