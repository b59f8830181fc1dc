"""Runs several ``spatialspec fit`` commands under one 2-process DDP launch (for test_ddp.py).

Importing torch and Lightning costs ~10 s per process here, so the DDP tests start the
processes once: Lightning's launcher re-runs this script as rank 1, and both ranks then run the
same fits in the same order (the process group is set up by the first and reused). Each rank
records the image ids of every training batch it trained on in ``<out_dir>/seen-rank<r>.json``.

    python tests/ddp_driver.py RUNS_JSON   # [[out_dir, [fit args...]], ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L

from spatialspec import cli, training


class BatchRecorder(L.Callback):
    """Writes the image ids of this rank's training batches when training ends."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir, self.batches = out_dir, []

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: dict, i: int) -> None:
        self.batches.append(list(batch["image_id"]))

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        path = self.out_dir / f"seen-rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"world_size": trainer.world_size, "batches": self.batches}))


def main() -> int:
    build = training.build_trainer
    codes = []
    for out_dir, args in json.loads(sys.argv[1]):

        def with_recorder(*a: Any, _out: str = out_dir, **k: Any) -> Any:
            trainer, checkpoint = build(*a, **k)
            trainer.callbacks.append(BatchRecorder(Path(_out)))
            return trainer, checkpoint

        training.build_trainer = with_recorder
        codes.append(cli.main(["fit", "--out_dir", out_dir, *args]))
    return max(codes)


if __name__ == "__main__":
    raise SystemExit(main())
