"""Training draws that depend on (seed, epoch) alone, sharded over processes and resumable.

Every training epoch is one *draw*: the list of batches one process would train on, a function
of the seed and the epoch only (:class:`ShuffleDraw`, :class:`NegativeUndersampler`,
:class:`AnnotatedShareBatchSampler`, batched by :class:`IndexBatches` where needed).
:class:`EpochBatchSampler` hands one process its share of that draw:

* **Ranks** (DDP): rank ``r`` of ``W`` takes batches ``r, r + W, r + 2W, ...`` of the epoch's
  draw, so the ranks together train on exactly the batches one process would, disjoint, each
  batch whole (the annotated share of a batch is kept on every rank). When the number of
  batches is not a multiple of ``W``, the first batches are reused to even out the ranks (at
  most ``W - 1`` of them, as ``DistributedSampler`` pads), because DDP needs every rank to run
  the same number of steps.
* **Keys**: batches hold :class:`SampleKey` ``(epoch, index)`` pairs, so the dataset can seed a
  sample's augmentation with (seed, epoch, index): the same image gets the same augmentation in
  that epoch whatever the number of workers, ranks or restarts.
* **Resuming**: :meth:`EpochBatchSampler.set_position` starts the next pass at a batch of an
  epoch (a fit resumed from a mid-epoch checkpoint continues where it stopped), and
  :class:`ResumableLoader` gives Lightning the ``state_dict`` / ``load_state_dict`` pair it
  saves in checkpoints and restores before the first batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
from torch.utils.data import DataLoader, Sampler

__all__ = [
    "AnnotatedShareBatchSampler",
    "EpochBatchSampler",
    "EpochDraw",
    "IndexBatches",
    "NegativeUndersampler",
    "ResumableLoader",
    "SampleKey",
    "ShardSampler",
    "ShuffleDraw",
    "check_annotated_fraction",
]


class SampleKey(NamedTuple):
    """A training sample's dataset ``index`` and the ``epoch`` it is drawn in."""

    epoch: int
    index: int


class EpochDraw(Protocol):
    """The batches of a whole epoch, as one process trains on them; the same count each epoch."""

    def batches(self, epoch: int) -> list[list[int]]: ...

    def __len__(self) -> int: ...


# ---------------------------------------------------------------------------------------------
# Index draws (an epoch's order of dataset indices) and their batching
# ---------------------------------------------------------------------------------------------


class ShuffleDraw:
    """A fresh permutation of ``n`` indices each epoch, drawn from ``(seed, epoch)``.

    Args:
        n: Dataset size.
        seed: Seed of the draws.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def indices(self, epoch: int) -> np.ndarray:
        """The shuffled indices of epoch ``epoch``."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __len__(self) -> int:
        return self.n


class NegativeUndersampler(Sampler[int]):
    """All positives plus a fresh random subset of the negatives every epoch, shuffled.

    Epoch ``e`` uses ``min(n_neg, round(ratio * n_pos))`` negatives drawn from ``(seed, e)``
    alone, so a run is reproducible. Lightning calls :meth:`set_epoch` before every epoch; a
    plain loop that does not moves on to the next epoch's draw after each pass.

    Args:
        labels: Per-dataset-index label (positive: > 0.5).
        ratio: Negatives per positive (> 0).
        seed: Seed of the draws.
    """

    def __init__(self, labels: Sequence[float] | np.ndarray, ratio: float, seed: int = 0) -> None:
        if not (ratio > 0 and math.isfinite(ratio)):
            raise ValueError(f"undersample_negatives must be a positive ratio, got {ratio}")
        labels = np.asarray(labels, dtype=float)
        self.positives = np.flatnonzero(labels > 0.5)
        self.negatives = np.flatnonzero(labels <= 0.5)
        if self.positives.size == 0:
            raise ValueError("undersample_negatives needs positives, but the split has none")
        self.num_negatives = min(self.negatives.size, round(ratio * self.positives.size))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of epoch ``epoch``."""
        self.epoch = epoch

    def indices(self, epoch: int) -> np.ndarray:
        """Shuffled dataset indices of epoch ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        negatives = rng.choice(self.negatives, self.num_negatives, replace=False)
        return rng.permutation(np.concatenate([self.positives, negatives]))

    def __iter__(self) -> Iterator[int]:
        chosen = self.indices(self.epoch)
        self.epoch += 1  # the next pass draws anew unless set_epoch says otherwise
        return iter(chosen.tolist())

    def __len__(self) -> int:
        return self.positives.size + self.num_negatives


class IndexBatches:
    """An index draw (:class:`ShuffleDraw`, :class:`NegativeUndersampler`) cut into batches.

    Args:
        source: Has ``indices(epoch)`` and a constant ``len``.
        batch_size: Rows per batch.
        drop_last: Drop the last, partial batch.
    """

    def __init__(
        self, source: ShuffleDraw | NegativeUndersampler, batch_size: int, drop_last: bool
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source, self.batch_size, self.drop_last = source, batch_size, drop_last

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of epoch ``epoch``."""
        order = self.source.indices(epoch).tolist()
        size = self.batch_size
        return [order[i : i + size] for i in range(0, len(self) * size, size)]

    def __len__(self) -> int:
        n = len(self.source)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


# ---------------------------------------------------------------------------------------------
# Batches with a minimum share of annotated rows
# ---------------------------------------------------------------------------------------------


class AnnotatedShareBatchSampler(Sampler[list[int]]):
    """Training batches in which at least a given share of rows has a pixel annotation.

    Under a small mask budget only a few training images keep their annotation, and plain
    shuffling gives each batch a handful of them; this sampler puts
    ``k = max(round(fraction * batch_size), round(batch_size * n_annotated / n))`` annotated rows
    in every batch (never fewer than shuffling would on average) and fills the rest with rows
    without one, as the mean teacher's two-stream batch sampler does (Tarvainen & Valpola 2017).
    An epoch has ``len(epoch_indices) // batch_size`` batches (at least 1), like a shuffled
    loader that drops its last partial batch. The annotated rows cycle, reshuffled on every pass;
    the others are drawn without replacement from a fresh permutation each epoch (so with ``k``
    above the natural share some of them sit an epoch out, different ones each time). Every
    draw comes from ``(seed, epoch)`` alone.

    Args:
        annotated: Per-dataset-index flag: the row has a known annotation (``mask_available``).
        batch_size: Rows per batch.
        fraction: Minimum share of annotated rows per batch, in (0, 1).
        seed: Seed of the draws.
        base: Sampler whose epoch indices to batch (a :class:`NegativeUndersampler`); None: all
            dataset indices.
    """

    def __init__(
        self,
        annotated: Sequence[bool] | np.ndarray,
        batch_size: int,
        fraction: float,
        seed: int = 0,
        base: NegativeUndersampler | None = None,
    ) -> None:
        check_annotated_fraction(fraction)
        if batch_size < 2:
            raise ValueError(f"annotated_batch_fraction needs batch_size >= 2, got {batch_size}")
        self.annotated = np.asarray(annotated, dtype=bool)
        if self.annotated.all() or not self.annotated.any():
            raise ValueError("annotated_batch_fraction needs rows with and without annotation")
        self.batch_size, self.fraction, self.seed, self.base = batch_size, fraction, seed, base
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of epoch ``epoch`` (Lightning calls this before every epoch)."""
        self.epoch = epoch
        if self.base is not None:
            self.base.set_epoch(epoch)

    def _epoch_indices(self, epoch: int, rng: np.random.Generator) -> np.ndarray:
        if self.base is not None:
            return self.base.indices(epoch)
        return rng.permutation(self.annotated.size)

    def _n_annotated(self, n_annotated: int, n: int) -> int:
        """Annotated rows per batch, for an epoch of ``n`` rows of which ``n_annotated`` are."""
        if n_annotated == 0 or n_annotated == n:  # an undersampled epoch may hold one kind only
            return self.batch_size if n_annotated else 0
        natural = round(self.batch_size * n_annotated / n)
        return min(max(round(self.fraction * self.batch_size), natural), self.batch_size - 1)

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of epoch ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        indices = self._epoch_indices(epoch, rng)
        flags = self.annotated[indices]
        pool_a, pool_u = indices[flags], indices[~flags]
        n_batches = max(1, indices.size // self.batch_size)
        k = self._n_annotated(pool_a.size, indices.size)
        u = self.batch_size - k
        annotated = _cycle(pool_a, n_batches * k, rng).reshape(n_batches, k)
        others = _cycle(pool_u, n_batches * u, rng).reshape(n_batches, u)
        rows = np.concatenate([annotated, others], axis=1)  # (n_batches, batch_size)
        return [rng.permutation(row).tolist() for row in rows]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1  # the next pass draws anew unless set_epoch says otherwise
        return iter(batches)

    def __len__(self) -> int:
        size = len(self.base) if self.base is not None else self.annotated.size
        return max(1, size // self.batch_size)


def _cycle(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` items of ``pool`` in passes, each pass a fresh permutation (no repeats within)."""
    if n == 0 or pool.size == 0:
        return pool[:0]
    passes = -(-n // pool.size)
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:n]


def check_annotated_fraction(fraction: float | None) -> None:
    """``data.annotated_batch_fraction`` must be None or in (0, 1)."""
    if fraction is not None and not (0 < fraction < 1):
        raise ValueError(f"annotated_batch_fraction must be in (0, 1) or null, got {fraction}")


# ---------------------------------------------------------------------------------------------
# One process's share of a draw
# ---------------------------------------------------------------------------------------------


class EpochBatchSampler(Sampler[list[SampleKey]]):
    """The training batches of one process: its rank's share of each epoch's draw.

    Args:
        draw: The epoch's batches as one process would train on them (:class:`EpochDraw`).
        rank: This process's rank in ``[0, world_size)``.
        world_size: Number of training processes.

    Each pass (``iter``) serves the current epoch and moves on to the next one; Lightning calls
    :meth:`set_epoch` before every epoch. A pass starts at the batch given by
    :meth:`set_position` (0 unless resuming mid-epoch).
    """

    def __init__(self, draw: EpochDraw, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.draw, self.rank, self.world_size = draw, rank, world_size
        self.epoch, self.start = 0, 0
        #: Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler``, not on the batch
        #: sampler itself: this forwards the call.
        self.sampler = _EpochForwarder(self)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch`` (from its first batch, unless it is already the current one)."""
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def set_position(self, epoch: int, start: int) -> None:
        """Make the next pass serve epoch ``epoch`` from this rank's batch ``start`` on."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        self.epoch, self.start = epoch, start

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of epoch ``epoch`` (dataset indices), in training order."""
        batches = self.draw.batches(epoch)
        padded = len(self) * self.world_size
        if len(batches) < padded:  # reuse the first batches so that every rank has as many
            batches = [batches[i % len(batches)] for i in range(padded)]
        return batches[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        batches = self.rank_batches(epoch)[start:]
        return iter([[SampleKey(epoch, i) for i in batch] for batch in batches])

    def __len__(self) -> int:
        return -(-len(self.draw) // self.world_size)


class _EpochForwarder:
    """Forwards ``set_epoch`` to an :class:`EpochBatchSampler` (see its ``sampler``)."""

    def __init__(self, target: EpochBatchSampler) -> None:
        self.target = target

    def set_epoch(self, epoch: int) -> None:
        self.target.set_epoch(epoch)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank`` on, without padding (evaluation shards).

    The ranks' shards are disjoint and together hold every index exactly once, so a metric
    gathered over the ranks (torchmetrics concatenates states) equals the single-process value.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class ResumableLoader(DataLoader):
    """A training DataLoader whose position in the epoch is saved in Lightning checkpoints.

    Lightning saves ``state_dict()`` in every checkpoint and calls ``load_state_dict()`` on
    restart before it iterates the loader, so a fit resumed from a checkpoint taken at the end
    of an epoch starts the next epoch, and one taken mid-epoch (a SLURM requeue, validation
    within an epoch) continues with the next batch of the same draw.

    Args:
        *args: :class:`~torch.utils.data.DataLoader` arguments; ``batch_sampler`` must be an
            :class:`EpochBatchSampler`.
        position: Returns ``(epoch, batches trained in it, batches the epoch has)`` of the
            running fit, or None outside one.
        **kwargs: :class:`~torch.utils.data.DataLoader` arguments.
    """

    def __init__(
        self, *args: Any, position: Callable[[], tuple[int, int, int] | None], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, EpochBatchSampler):
            raise TypeError("ResumableLoader needs an EpochBatchSampler as its batch_sampler")
        self.position = position

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "start"}``: where the next pass starts (the next epoch once one ends)."""
        now = self.position()
        if now is None:
            return {"epoch": self.batch_sampler.epoch, "start": self.batch_sampler.start}
        epoch, done, total = now
        if done >= total:
            return {"epoch": epoch + 1, "start": 0}
        return {"epoch": epoch, "start": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position."""
        self.batch_sampler.set_position(int(state["epoch"]), int(state["start"]))
