"""Run metadata written next to every result: versions, git commit, seed, command, times."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from spatialspec.data.io import atomic_open

PACKAGES = (
    "spatialspec", "torch", "torchvision", "lightning", "torchmetrics",
    "segmentation-models-pytorch", "albumentations", "pydicom", "numpy", "pandas", "scipy",
)  # fmt: skip


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages results depend on (None if missing)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """Commit of the spatialspec checkout (``+dirty`` if modified), None outside git."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def run_metadata(**extra: Any) -> dict[str, Any]:
    """Versions, commit, host facts, command line and time, plus ``extra`` fields."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
        **extra,
    }


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write JSON via a temp file in the same folder + rename; returns the path."""
    return write_text_atomic(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text via a temp file in the same folder + rename; returns the path."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
