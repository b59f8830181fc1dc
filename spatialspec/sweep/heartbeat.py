"""Heartbeats: is the process doing a run still alive?

A run in progress refreshes ``heartbeat.json`` in its folder every ``interval_s`` seconds from a
daemon thread (pid, host, time). A process killed without a chance to record it -- ``kill -9``,
``scancel`` past its grace time, a preempted or crashed node -- leaves a heartbeat that stops
ageing well, so ``spatialspec sweep --status`` can tell a running run from a dead one from the
run folder alone: dead when the recorded process is gone (same host), or when the heartbeat is
older than :data:`STALE_AFTER` intervals plus :data:`GRACE_S` (any host).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from spatialspec.runinfo import write_json_atomic
from spatialspec.sweep.plan import HEARTBEAT

#: Seconds between heartbeats (``SPATIALSPEC_HEARTBEAT_S`` overrides it).
DEFAULT_INTERVAL_S = 30.0
INTERVAL_ENV = "SPATIALSPEC_HEARTBEAT_S"
#: A heartbeat this many intervals (+ GRACE_S) old means the process is dead.
STALE_AFTER = 3
GRACE_S = 10.0


def interval_s() -> float:
    """The heartbeat interval: ``$SPATIALSPEC_HEARTBEAT_S`` or :data:`DEFAULT_INTERVAL_S`."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def iso(epoch: float) -> str:
    """A UTC time stamp to the second."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


class Heartbeat:
    """Context manager beating into ``run_dir/heartbeat.json`` while the block runs.

    Args:
        run_dir: The run folder.
        interval: Seconds between beats (default :func:`interval_s`).
    """

    def __init__(self, run_dir: str | Path, interval: float | None = None) -> None:
        self.path = Path(run_dir) / HEARTBEAT
        self.interval = interval_s() if interval is None else float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sweep-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        """Write one heartbeat now."""
        now = time.time()
        payload = {
            "time": now,
            "iso": iso(now),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "interval_s": self.interval,
        }
        write_json_atomic(self.path, payload)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except OSError:  # a full or vanished disk must not kill the run; the next beat retries
                continue


def read_heartbeat(run_dir: str | Path) -> dict[str, Any] | None:
    """The last heartbeat of a run folder, or None."""
    try:
        beat = json.loads((Path(run_dir) / HEARTBEAT).read_text())
    except (OSError, ValueError):
        return None
    return beat if isinstance(beat, dict) and "time" in beat else None


def process_alive(pid: int) -> bool:
    """Whether a process of this machine is running (a zombie counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def liveness(beat: dict[str, Any] | None, now: float | None = None) -> tuple[bool, str]:
    """Whether the process behind a heartbeat is alive, and why one thinks so.

    Args:
        beat: A heartbeat (:func:`read_heartbeat`), or None.
        now: The time to judge at (default: now).

    Returns:
        ``(alive, text)``, e.g. ``(True, "heartbeat 12 s ago, pid 4711 on node7")`` or
        ``(False, "no heartbeat for 3 min (since 2025-...), pid 4711 on node7")``.
    """
    if beat is None:
        return False, "no heartbeat"
    now = time.time() if now is None else now
    age = max(0.0, now - float(beat["time"]))
    where = f"pid {beat.get('pid')} on {beat.get('host')}"
    same_host = beat.get("host") == socket.gethostname()
    if same_host and isinstance(beat.get("pid"), int) and not process_alive(beat["pid"]):
        return False, f"process gone ({where}; last heartbeat {iso(beat['time'])})"
    stale = STALE_AFTER * float(beat.get("interval_s") or DEFAULT_INTERVAL_S) + GRACE_S
    if age > stale:
        return False, f"no heartbeat for {_ago(age)} (since {iso(beat['time'])}, {where})"
    return True, f"heartbeat {_ago(age)} ago, {where}"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
