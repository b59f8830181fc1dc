"""Build an output folder out of sight and swap it in only when it is complete."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["staged_folder"]


@contextlib.contextmanager
def staged_folder(out: str | Path, marker: str) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to fill; on success it replaces ``out``.

    An interrupted or failed build leaves the previous ``out`` untouched, and a rebuilt folder
    holds no stale files. A non-empty ``out`` without ``marker`` (a file every build writes) is
    not ours and is never replaced.

    Args:
        out: Final folder.
        marker: Name of a file that every complete build of this kind contains.

    Raises:
        FileExistsError: If ``out`` is non-empty and lacks ``marker``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / marker).exists():
        raise FileExistsError(
            f"{out} is not empty and holds no {marker}: not a folder this command wrote, "
            "refusing to replace it; choose another --out"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        yield staging
        old = out.with_name(f".{out.name}.old-{staging.name.rsplit('-', 1)[-1]}")
        if out.exists():
            out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
