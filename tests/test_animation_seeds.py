"""Tests for sdbatch.animation.seeds (Deforum seed_behavior).

Deforum's next_seed (sd-webui-deforum seed.py), called after every diffusion:
    iter:      if seed_internal % seed_iter_N == 0: seed += 1; seed_internal += 1
    ladder:    seed_internal == 0 -> seed += 2, seed_internal = 1; else seed -= 1, seed_internal = 0
    alternate: seed_internal == 0 -> seed += 1, seed_internal = 1; else seed -= 1, seed_internal = 0
    fixed:     unchanged
    random:    random.randint(0, 2**32 - 1)   (here: a seeded numpy Generator)
"""

from __future__ import annotations

import numpy as np
import pytest

from sdbatch.animation.seeds import SEED_BEHAVIORS, frame_seeds, next_seed


def _deforum_reference(seed: int, behavior: str, frames: int, iter_n: int = 1) -> list[int]:
    """Deforum's stateful next_seed loop, for the deterministic behaviours."""
    seeds, internal = [], 0
    for _ in range(frames):
        seeds.append(seed)
        if behavior == "iter":
            if internal % iter_n == 0:
                seed += 1
            internal += 1
        elif behavior in ("ladder", "alternate"):
            step = 2 if behavior == "ladder" else 1
            seed, internal = (seed + step, 1) if internal == 0 else (seed - 1, 0)
    return seeds


def test_iter() -> None:
    assert frame_seeds(100, "iter", 5) == [100, 101, 102, 103, 104]


def test_iter_n() -> None:
    assert frame_seeds(100, "iter", 7, iter_n=3) == [100, 101, 101, 101, 102, 102, 102]


def test_fixed() -> None:
    assert frame_seeds(42, "fixed", 4) == [42, 42, 42, 42]


def test_ladder() -> None:
    assert frame_seeds(10, "ladder", 8) == [10, 12, 11, 13, 12, 14, 13, 15]


def test_alternate() -> None:
    assert frame_seeds(10, "alternate", 6) == [10, 11, 10, 11, 10, 11]


@pytest.mark.parametrize("behavior", ["iter", "fixed", "ladder", "alternate"])
@pytest.mark.parametrize("iter_n", [1, 2, 5])
def test_matches_deforum_stateful_loop(behavior: str, iter_n: int) -> None:
    assert frame_seeds(7, behavior, 25, iter_n=iter_n) == _deforum_reference(7, behavior, 25, iter_n)  # type: ignore[arg-type]


def test_random_is_reproducible_and_in_range() -> None:
    seeds = frame_seeds(1234, "random", 50)
    assert seeds == frame_seeds(1234, "random", 50)
    assert seeds[0] == 1234
    assert all(0 <= s < 2**32 for s in seeds)
    assert len(set(seeds)) == 50
    assert frame_seeds(1235, "random", 50)[1:] != seeds[1:]


def test_random_prefix_property_and_no_global_state() -> None:
    np.random.seed(0)
    short = frame_seeds(99, "random", 5)
    np.random.seed(12345)
    long = frame_seeds(99, "random", 20)
    assert long[:5] == short


def test_next_seed_steps_agree_with_frame_seeds() -> None:
    for behavior in SEED_BEHAVIORS:
        seeds = frame_seeds(500, behavior, 12, iter_n=2)  # type: ignore[arg-type]
        for k in range(11):
            assert next_seed(seeds[k], behavior, k, rng_seed=500, iter_n=2) == seeds[k + 1]  # type: ignore[arg-type]


def test_next_seed_examples() -> None:
    assert next_seed(10, "ladder", 0, rng_seed=10) == 12
    assert next_seed(12, "ladder", 1, rng_seed=10) == 11
    assert next_seed(10, "alternate", 0, rng_seed=10) == 11
    assert next_seed(11, "alternate", 1, rng_seed=10) == 10
    assert next_seed(10, "iter", 4, rng_seed=10) == 11
    assert next_seed(10, "fixed", 4, rng_seed=10) == 10


def test_zero_frames_and_large_seeds() -> None:
    assert frame_seeds(5, "iter", 0) == []
    assert frame_seeds(2**32 - 1, "iter", 2) == [2**32 - 1, 2**32]
    assert frame_seeds(np.int64(3), "iter", 2) == [3, 4]  # type: ignore[arg-type]
    assert all(type(s) is int for s in frame_seeds(3, "random", 3))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, "schedule", 3), {}),
        ((1, "Iter", 3), {}),
        ((-1, "iter", 3), {}),
        ((1.5, "iter", 3), {}),
        ((True, "iter", 3), {}),
        ((1, "iter", -1), {}),
        ((1, "iter", 3), {"iter_n": 0}),
    ],
)
def test_frame_seeds_bad_arguments(args: tuple, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        frame_seeds(*args, **kwargs)


def test_next_seed_bad_arguments() -> None:
    with pytest.raises(ValueError, match="behavior must be one of"):
        next_seed(1, "wobble", 0, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        next_seed(1, "iter", -1, 1)
