"""Decode-time speculative prefetch: candidate rows, coverage, extra rows and the simulated stall."""

import numpy as np
import pytest
import torch

from engramtier.analysis.speculative import candidate_rows, speculative_prefetch_study
from engramtier.cache.hierarchy import Hierarchy
from engramtier.errors import EngramTierError
from engramtier.model.backbone import EngramLM, ModelConfig
from engramtier.model.hashing import HashConfig
from engramtier.model.tokenizer import lookup_digest

BASE_VOCAB, CANONICAL_VOCAB = 60, 40
LOOKUP = np.arange(BASE_VOCAB) % CANONICAL_VOCAB


def _model():
    hash_config = HashConfig(vocab_size=CANONICAL_VOCAB, pad_id=0, table_sizes=(61, 67), layer_ids=(0, 2),
                             n_heads=2, tokenizer_digest=lookup_digest(LOOKUP))
    config = ModelConfig(vocab_size=BASE_VOCAB, d_model=32, n_layers=3, n_heads=2, max_seq_len=64, hc_mult=2,
                         engram=hash_config, row_dim=32, row_format="bf16")
    return EngramLM(config, LOOKUP, seed=0).eval()


def _hierarchy(capacity=200):
    return Hierarchy.from_dict({"tier": [{"name": "dram", "capacity": capacity, "policy": "lru", "model": "dram"},
                                         {"name": "nvme", "model": "nvme"}]})


def _windows():
    return torch.randint(0, BASE_VOCAB, (4, 24), generator=torch.Generator().manual_seed(1))


def _study(ks, capacity=200):
    return speculative_prefetch_study(_model(), _windows(), ks, _hierarchy(capacity), window_s=20e-6, lead_s=1e-3)


def test_candidate_rows_equal_the_hashers_rows_of_each_candidate_sequence():
    hasher = _model().hasher
    rng = np.random.default_rng(0)
    context = rng.integers(0, CANONICAL_VOCAB, (5, 2))
    context[0, 0] = hasher.config.pad_id  # a sequence one token long: the pad stands before it
    candidates = rng.integers(0, CANONICAL_VOCAB, (5, 3))
    got = candidate_rows(hasher, context, candidates)
    for p in range(5):
        for j in range(3):
            tokens = np.append(context[p], candidates[p, j])
            if p == 0:
                tokens = tokens[1:]  # hashed as a sequence of its own, the start pads it
            np.testing.assert_array_equal(got[p, j], hasher.hash(tokens)[-1])


def test_coverage_is_full_with_the_whole_vocabulary_and_monotone_in_k():
    results = _study([0, 1, 2, 4, 8, BASE_VOCAB])
    coverage = [r["coverage"] for r in results]
    assert coverage[0] == 0.0 and coverage[-1] == 1.0
    assert all(a <= b for a, b in zip(coverage, coverage[1:]))
    extra = [r["extra_rows_per_step"] for r in results]
    assert all(a <= b for a, b in zip(extra, extra[1:])) and extra[-1] > 0


def test_no_speculation_moves_nothing_extra_and_full_speculation_removes_the_demand_stall():
    none, full = _study([0, BASE_VOCAB], capacity=620)  # the whole table: room for every candidate's rows
    assert none["extra_rows_per_step"] == 0 and none["extra_bytes_per_step"] == 0
    assert none["demand_stall_s_per_step"] > 0  # 20 µs cannot hide an nvme read
    assert full["resident_fraction"] == 1.0 and full["demand_stall_s_per_step"] == 0.0
    assert full["store_bytes_per_step"] > none["store_bytes_per_step"]


@pytest.mark.parametrize("ks", [[-1], [BASE_VOCAB + 1], [1.5], []])
def test_bad_k_is_refused_in_one_line(ks):
    with pytest.raises(EngramTierError, match="k values must be whole numbers") as info:
        _study(ks)
    assert "\n" not in str(info.value)
