"""Deforum's ``seed_behavior``: which seed each diffusion call uses.

Deforum calls ``next_seed(args)`` after every diffusion (every ``cadence``
frames in its animation loop); this module works per *call index* ``k``
(``k = 0`` is the first diffusion, which uses the base seed).  Deforum keeps a
toggling counter ``seed_internal`` (starting at 0) for ``ladder``/``alternate``
and a call counter for ``iter``; both are pure functions of ``k`` here:

* ``iter``: ``+1`` on every call (with ``iter_n = N``: ``+1`` on calls
  ``k = 0, N, 2N, ...``, i.e. each seed is used ``N`` times after the first);
* ``fixed``: always the base seed;
* ``ladder``: ``+2`` then ``-1`` alternately -> ``s, s+2, s+1, s+3, s+2, ...``;
* ``alternate``: ``+1`` then ``-1`` alternately -> ``s, s+1, s, s+1, ...``;
* ``random``: a fresh seed in ``[0, 2**32)`` per call, drawn from a ``numpy``
  Generator seeded with ``(rng_seed, k)`` -- reproducible, unlike Deforum's
  ``random.randint`` on the global RNG.

>>> frame_seeds(10, "ladder", 6)
[10, 12, 11, 13, 12, 14]
>>> frame_seeds(10, "alternate", 5)
[10, 11, 10, 11, 10]
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["SEED_BEHAVIORS", "frame_seeds", "next_seed"]

SeedBehavior = Literal["iter", "fixed", "random", "ladder", "alternate"]

#: Accepted ``behavior`` values.
SEED_BEHAVIORS = ("iter", "fixed", "random", "ladder", "alternate")


def _int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def next_seed(seed: int, behavior: SeedBehavior, frame_index: int, rng_seed: int, iter_n: int = 1) -> int:
    """Seed for diffusion call ``frame_index + 1`` given the seed used at call ``frame_index``.

    ``rng_seed`` seeds the ``random`` behaviour (use the base seed);
    ``iter_n`` is Deforum's ``seed_iter_N``.

    >>> next_seed(100, "ladder", 0, rng_seed=100), next_seed(102, "ladder", 1, rng_seed=100)
    (102, 101)
    >>> next_seed(5, "iter", 3, rng_seed=5)
    6
    """
    seed = _int(seed, "seed", 0)
    k = _int(frame_index, "frame_index", 0)
    rng_seed = _int(rng_seed, "rng_seed", 0)
    iter_n = _int(iter_n, "iter_n", 1)
    if behavior == "iter":
        return seed + 1 if k % iter_n == 0 else seed
    if behavior == "fixed":
        return seed
    if behavior == "ladder":
        return seed + 2 if k % 2 == 0 else seed - 1
    if behavior == "alternate":
        return seed + 1 if k % 2 == 0 else seed - 1
    if behavior == "random":
        return int(np.random.default_rng([rng_seed, k]).integers(0, 2**32))
    raise ValueError(f"behavior must be one of {', '.join(map(repr, SEED_BEHAVIORS))}; got {behavior!r}")


def frame_seeds(base_seed: int, behavior: SeedBehavior, frames: int, iter_n: int = 1) -> list[int]:
    """Seeds of the first ``frames`` diffusion calls, starting with ``base_seed``.

    >>> frame_seeds(7, "iter", 4), frame_seeds(7, "fixed", 3)
    ([7, 8, 9, 10], [7, 7, 7])
    >>> frame_seeds(7, "iter", 5, iter_n=2)
    [7, 8, 8, 9, 9]
    >>> frame_seeds(7, "random", 3) == frame_seeds(7, "random", 3)
    True
    """
    base_seed = _int(base_seed, "base_seed", 0)
    frames = _int(frames, "frames", 0)
    if behavior not in SEED_BEHAVIORS:
        raise ValueError(f"behavior must be one of {', '.join(map(repr, SEED_BEHAVIORS))}; got {behavior!r}")
    seeds: list[int] = []
    seed = base_seed
    for k in range(frames):
        seeds.append(seed)
        seed = next_seed(seed, behavior, k, base_seed, iter_n)
    return seeds
