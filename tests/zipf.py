"""Zipf-distributed row ids for tests: one generator, so that "a Zipf trace" means the same thing in
every test file and a fix to the sampling reaches them all."""

from __future__ import annotations

import numpy as np


def zipf_keys(n: int, n_keys: int, alpha: float, rng=0, *, shuffle: bool = False) -> np.ndarray:
    """``n`` int64 ids in ``[0, n_keys)``, the id of popularity rank ``r`` (from 1) drawn with probability
    proportional to ``r ** -alpha``.

    Truncated at ``n_keys`` by inverting the CDF, so any ``alpha > 0`` works (numpy's ``zipf`` needs
    ``alpha > 1`` and its unbounded tail, folded back with ``%``, would pile onto the hot ids). ``rng`` is
    a seed or a Generator (shared draws continue it). Rank ``r`` is id ``r - 1`` unless ``shuffle``, which
    maps ranks to ids through a random permutation so that popularity is not id order."""
    rng = np.random.default_rng(rng)
    cdf = np.cumsum(np.arange(1, n_keys + 1, dtype=np.float64) ** -alpha)
    ranks = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), n_keys - 1)
    return (rng.permutation(n_keys)[ranks] if shuffle else ranks).astype(np.int64)
