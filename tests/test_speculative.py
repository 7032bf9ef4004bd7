"""Decode-time speculative prefetch: candidate rows, coverage, extra rows and the simulated stall; the
verify steps of speculative decoding: real draft slots only, prompt-lookup drafts."""

from itertools import pairwise

import numpy as np
import pytest
import torch

from engramtier.analysis.drafts import draft_decoding_study, prompt_lookup
from engramtier.analysis.speculative import speculative_prefetch_study
from engramtier.cache.hierarchy import Hierarchy
from engramtier.errors import EngramTierError
from engramtier.model.backbone import EngramLM, ModelConfig
from engramtier.model.hashing import HashConfig
from engramtier.model.speculation import candidate_rows, verify_rows
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
    got = candidate_rows(hasher, torch.from_numpy(context), torch.from_numpy(candidates)).numpy()
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
    assert all(a <= b for a, b in pairwise(coverage))
    extra = [r["extra_rows_per_step"] for r in results]
    assert all(a <= b for a, b in pairwise(extra)) and extra[-1] > 0


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


def test_verify_rows_hash_real_slots_through_the_drafts_and_skip_the_pads():
    hasher = _model().hasher
    pad = hasher.config.pad_id
    context = torch.tensor([[7, 8], [pad, pad], [3, 4]])
    slots = torch.tensor([[9, 10, 11], [5, pad, pad], [6, 12, pad]])
    n_real = torch.tensor([3, 1, 0])  # the last sequence has finished: nothing of it is read
    got = verify_rows(hasher, context, slots, n_real)
    full = np.array([7, 8, 9, 10, 11])
    expected = np.concatenate([hasher.hash(full)[2:], hasher.hash(np.array([5]))])  # a fresh sequence: start pads
    np.testing.assert_array_equal(got.numpy(), expected)
    everything = verify_rows(hasher, context, slots, torch.tensor([3, 3, 3]))
    assert everything.shape[0] == 9 and got.shape[0] == 4
    with pytest.raises(EngramTierError, match="n_real must lie in 0..3"):
        verify_rows(hasher, context, slots, torch.tensor([4, 0, 0]))


def test_prompt_lookup_drafts_what_followed_the_latest_earlier_match():
    history = np.array([1, 2, 3, 4, 9, 1, 2, 5, 6, 7, 1, 2])
    np.testing.assert_array_equal(prompt_lookup(history, 3, 2), [5, 6, 7])  # latest earlier [1, 2] is at 5
    np.testing.assert_array_equal(prompt_lookup(history, 1, 2), [5])
    assert prompt_lookup(np.array([1, 2, 3]), 4, 2).size == 0  # [2, 3] never occurred before
    np.testing.assert_array_equal(prompt_lookup(np.array([4, 4, 4]), 4, 1), [4])  # the match may run into the end


def test_draft_study_accepts_repeated_text_and_padding_costs_rows():
    model = _model()
    windows = torch.tensor([[1, 2, 3, 4] * 6, list(range(5, 29))])  # one repeats itself, one never does
    h = _hierarchy(capacity=50)
    alone = draft_decoding_study(model, windows[:1], [1, 4], h, window_s=20e-6, lead_s=1e-3)
    # the repeating sequence accepts every draft after its first period: fewer verify steps than tokens
    assert alone[1]["verify_steps"] < alone[0]["verify_steps"] < windows.shape[1]
    assert alone[1]["real_slots_per_step"] + alone[1]["pad_slots_per_step"] == 5  # the verify is 1 + gamma wide
    one, four = draft_decoding_study(model, windows, [1, 4], h, window_s=20e-6, lead_s=1e-3)
    assert one["verify_steps"] == four["verify_steps"] == windows.shape[1]  # lockstep: the batch waits for the other
    assert four["tokens_per_sequence_step"] > one["tokens_per_sequence_step"] > 1
    for r in (one, four):
        s = r["schedules"]
        assert r["pad_slots_per_step"] > 0 and r["padded_rows_per_step"] > r["real_rows_per_step"]
        assert s["padded_at_verify"]["store_bytes_per_step"] > s["at_verify"]["store_bytes_per_step"]
        assert s["drafts_ahead"]["verify_stall_s_per_step"] <= s["at_verify"]["verify_stall_s_per_step"]
        assert s["drafts_ahead"]["resident_fraction"] == 1.0  # capacity 50 holds any one step's rows
    with pytest.raises(EngramTierError, match="draft widths must be whole numbers >= 1"):
        draft_decoding_study(model, windows, [0], h, window_s=0.0, lead_s=0.0)
