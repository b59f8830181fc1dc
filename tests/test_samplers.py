"""Tests of the per-rank, resumable training draws (spatialspec.data.samplers)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from spatialspec.data.samplers import (
    AnnotatedShareBatchSampler,
    EpochBatchSampler,
    IndexBatches,
    NegativeUndersampler,
    ResumableLoader,
    SampleKey,
    ShardSampler,
    ShuffleDraw,
)

LABELS = np.array([1] * 30 + [0] * 170)
FLAGS = np.zeros(200, dtype=bool)
FLAGS[np.random.default_rng(0).choice(200, 20, replace=False)] = True  # 10 % annotated


def _draws() -> dict[str, object]:
    under = NegativeUndersampler(LABELS, ratio=1.0, seed=4)
    return {
        "shuffle": IndexBatches(ShuffleDraw(200, seed=1), 16, drop_last=True),
        "undersample": IndexBatches(under, 16, drop_last=True),
        "annotated": AnnotatedShareBatchSampler(FLAGS, 16, 0.25, seed=2),
        "annotated+undersample": AnnotatedShareBatchSampler(FLAGS, 10, 0.3, seed=3, base=under),
    }


def _indices(batches: list[list[SampleKey]]) -> list[list[int]]:
    return [[key.index for key in batch] for batch in batches]


@pytest.mark.parametrize("name", list(_draws()))
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_together_train_on_the_single_process_draw(name: str, world: int) -> None:
    draw = _draws()[name]
    single = draw.batches(5)
    ranks = []
    for rank in range(world):
        sampler = EpochBatchSampler(draw, rank, world)
        sampler.set_epoch(5)
        ranks.append(_indices(list(sampler)))
    assert len({len(r) for r in ranks}) == 1  # every rank runs the same number of steps
    assert len(ranks[0]) == len(EpochBatchSampler(draw, 0, world)) == -(-len(single) // world)
    served = [batch for r in ranks for batch in r]
    counts = Counter(map(tuple, served))
    assert set(counts) == set(map(tuple, single))  # the same batches, each one whole
    padding = len(served) - len(single)
    assert 0 <= padding < world  # at most world - 1 batches are trained twice
    assert sum(c - 1 for c in counts.values()) == padding
    assert [tuple(b) for b in single[:padding]] == [b for b, c in counts.items() if c > 1]
    for r in range(world):  # rank r takes batches r, r + W, ... in order
        assert ranks[r][: len(single[r::world])] == single[r::world]


def test_every_rank_batch_keeps_the_annotated_share() -> None:
    draw = AnnotatedShareBatchSampler(FLAGS, 16, 0.25, seed=2)
    for rank in range(3):
        for batch in _indices(list(EpochBatchSampler(draw, rank, 3))):
            assert FLAGS[batch].sum() == 4 and len(batch) == 16


def test_draws_depend_on_seed_and_epoch_only() -> None:
    draw = _draws()["annotated+undersample"]
    a, b = EpochBatchSampler(draw, 1, 2), EpochBatchSampler(draw, 1, 2)
    first = [list(a) for _ in range(3)]  # iterating moves on to the next epoch
    b.set_epoch(2)
    assert list(b) == first[2]
    assert first[0] != first[1]
    assert all(key.epoch == 1 for batch in first[1] for key in batch)  # keys carry the epoch


def test_position_resumes_mid_epoch_and_set_epoch_resets_it() -> None:
    sampler = EpochBatchSampler(_draws()["shuffle"], 0, 2)
    whole = list(sampler)  # epoch 0
    sampler.set_position(0, 3)
    assert list(sampler) == whole[3:]
    assert sampler.epoch == 1 and sampler.start == 0  # the next pass is a whole epoch
    sampler.set_position(4, 2)
    sampler.set_epoch(4)  # Lightning's call for the epoch being resumed keeps the position
    assert sampler.start == 2
    sampler.set_epoch(5)
    assert sampler.start == 0
    sampler.sampler.set_epoch(7)  # what Lightning reaches through loader.batch_sampler.sampler
    assert sampler.epoch == 7
    with pytest.raises(ValueError, match="start must be in"):
        sampler.set_position(0, len(sampler) + 1)
    with pytest.raises(ValueError, match="rank must be in"):
        EpochBatchSampler(_draws()["shuffle"], 2, 2)


def test_loader_state_is_where_the_next_pass_starts() -> None:
    progress: list[tuple[int, int, int] | None] = [None]
    sampler = EpochBatchSampler(_draws()["shuffle"])
    loader = ResumableLoader(range(200), batch_sampler=sampler, position=lambda: progress[0])
    progress[0] = (3, 5, 12)  # epoch 3, 5 of 12 batches trained: continue with the sixth
    assert loader.state_dict() == {"epoch": 3, "start": 5}
    progress[0] = (3, 12, 12)  # the epoch is complete: the next one from its start
    assert loader.state_dict() == {"epoch": 4, "start": 0}
    loader.load_state_dict({"epoch": 3, "start": 5})
    assert (sampler.epoch, sampler.start) == (3, 5)
    rest = list(sampler)
    whole = EpochBatchSampler(sampler.draw)
    whole.set_epoch(3)
    assert rest == list(whole)[5:] and all(k.epoch == 3 for b in rest for k in b)
    with pytest.raises(TypeError, match="EpochBatchSampler"):
        ResumableLoader(range(10), batch_size=2, position=lambda: None)


def test_index_batches_lengths() -> None:
    assert len(IndexBatches(ShuffleDraw(33), 8, drop_last=True)) == 4
    kept = IndexBatches(ShuffleDraw(33), 8, drop_last=False)
    assert len(kept) == 5 and [len(b) for b in kept.batches(0)] == [8, 8, 8, 8, 1]
    assert sorted(i for b in kept.batches(0) for i in b) == list(range(33))


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_eval_shards_are_disjoint_and_complete(world: int) -> None:
    shards = [list(ShardSampler(20, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(20))  # no padding, no repeat
    assert [len(ShardSampler(20, r, world)) for r in range(world)] == [len(s) for s in shards]
