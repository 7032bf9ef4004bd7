"""The N-gram hasher against docs/design.md's addressing: formulas, primes, and three implementations."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engramtier.errors import EngramTierError
from engramtier.model.hashing import (
    _FAST_MOD_MIN_PRIME,
    HashConfig,
    NgramHasher,
    _mod_fast,
    hash_reference_numpy,
    head_primes,
)


def test_multipliers_follow_the_seeded_formula():
    cfg = HashConfig(vocab_size=1000, pad_id=0, layer_ids=(1, 15), seed=7)
    hasher = NgramHasher(cfg)
    for li, layer in enumerate(cfg.layer_ids):
        rng = np.random.default_rng(7 + 10007 * layer)
        half = (np.iinfo(np.int64).max // 1000) // 2
        expected = rng.integers(0, half, size=3, dtype=np.int64) * 2 + 1
        np.testing.assert_array_equal(hasher.multipliers[li], expected)
        assert np.all(hasher.multipliers[li] % 2 == 1)


def test_primes_are_unique_and_ascend_per_order_across_layers():
    # Worked by hand: order 2 starts above 9, order 3 above 11, skipping primes taken earlier.
    cfg = HashConfig(vocab_size=50, pad_id=0, table_sizes=(10, 12), layer_ids=(0, 3), n_heads=2)
    primes = head_primes(cfg)
    assert primes.tolist() == [[[11, 13], [17, 19]], [[23, 29], [31, 37]]]


def test_global_row_ids_address_consecutive_subtables():
    cfg = HashConfig(vocab_size=50, pad_id=0, table_sizes=(10, 12), layer_ids=(0, 3), n_heads=2)
    hasher = NgramHasher(cfg)
    sizes = hasher.subtable_sizes
    assert hasher.n_rows == sizes.sum()
    rows = hasher.hash(np.arange(50)[None, :])
    flat = rows.reshape(-1, sizes.size)
    lo = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    assert np.all(flat >= lo) and np.all(flat < lo + sizes)


def _config(draw_vocab, sizes, layers, heads, seed):
    return HashConfig(vocab_size=draw_vocab, pad_id=draw_vocab - 1, table_sizes=sizes, layer_ids=layers,
                      n_heads=heads, seed=seed)


@settings(max_examples=40, deadline=None)
@given(
    vocab=st.integers(2, 200_000),
    n_orders=st.integers(1, 3),
    big=st.booleans(),
    n_layers=st.integers(1, 3),
    heads=st.integers(1, 4),
    batch=st.integers(1, 3),
    seq_len=st.integers(0, 12),
    seed=st.integers(0, 2**31),
)
def test_numba_torch_and_reference_agree(vocab, n_orders, big, n_layers, heads, batch, seq_len, seed):
    rng = np.random.default_rng(seed)
    base = 50_000 if big else 5
    sizes = tuple(int(s) for s in rng.integers(base, base * 3, size=n_orders))
    cfg = _config(vocab, sizes, tuple(range(0, 4 * n_layers, 4)), heads, seed % 1000)
    hasher = NgramHasher(cfg)
    tokens = rng.integers(0, vocab, size=(batch, seq_len))
    tokens[:, :1] = vocab - 1  # ids at the vocabulary's edges
    if seq_len > 2:
        tokens[:, 2] = 0
    expected = hash_reference_numpy(hasher, tokens)
    np.testing.assert_array_equal(hasher.hash(tokens), expected)
    np.testing.assert_array_equal(hasher.hash_torch(torch.from_numpy(tokens)).numpy(), expected)


def test_ragged_sequences_hash_as_if_alone():
    cfg = HashConfig(vocab_size=1000, pad_id=3, table_sizes=(20_011, 30_011), n_heads=4)
    hasher = NgramHasher(cfg)
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 1000, size=n) for n in (1, 2, 7, 0, 5)]
    starts = np.concatenate([[0], np.cumsum([s.size for s in seqs])])
    ragged = hasher.hash_ragged(np.concatenate(seqs), starts)
    for s, lo, hi in zip(seqs, starts[:-1], starts[1:], strict=True):
        if s.size:
            np.testing.assert_array_equal(ragged[lo:hi], hasher.hash(s))


def test_right_padding_leaves_valid_positions_unchanged():
    cfg = HashConfig(vocab_size=1000, pad_id=0, table_sizes=(20_011, 30_011), n_heads=4)
    hasher = NgramHasher(cfg)
    seq = np.array([5, 9, 2, 7])
    padded = np.array([[5, 9, 2, 7, 0, 0], [1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(hasher.hash(padded)[0, :4], hasher.hash(seq))
    np.testing.assert_array_equal(hasher.hash_torch(torch.from_numpy(padded))[0, :4].numpy(), hasher.hash(seq))


def test_many_chunks_and_threads_give_the_same_ids():
    cfg = HashConfig(vocab_size=99_538, pad_id=1, table_sizes=(100_003, 100_003), layer_ids=(1,), n_heads=8)
    hasher = NgramHasher(cfg)
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, size=20_000)
    starts = np.array([0, 3, 1024, 1025, 5000, 20_000])
    buffer = np.empty((30_000, 1, 16), dtype=np.int64)
    one = hasher.hash_ragged(tokens, starts, threads=1).copy()
    two = hasher.hash_ragged(tokens, starts, threads=2, out=buffer)
    np.testing.assert_array_equal(one, two)
    for lo, hi in zip(starts[:-1], starts[1:], strict=True):
        np.testing.assert_array_equal(one[lo:hi], hash_reference_numpy(hasher, tokens[None, lo:hi])[0])


@settings(max_examples=300, deadline=None)
@given(x=st.integers(-(2**63), 2**63 - 1), p=st.integers(_FAST_MOD_MIN_PRIME, 2**40))
def test_fast_mod_equals_python_mod(x, p):
    with np.errstate(over="ignore"):  # int64 products wrap by design, as in the compiled kernel
        assert _mod_fast.py_func(np.int64(x), np.int64(p), 1.0 / p) == x % p


def test_fingerprint_changes_with_every_addressing_field():
    base = HashConfig(vocab_size=1000, pad_id=0)
    variants = [
        HashConfig(vocab_size=1001, pad_id=0), HashConfig(vocab_size=1000, pad_id=1),
        HashConfig(vocab_size=1000, pad_id=0, table_sizes=(1_000_003, 1_000_033)),
        HashConfig(vocab_size=1000, pad_id=0, layer_ids=(1, 14)), HashConfig(vocab_size=1000, pad_id=0, n_heads=4),
        HashConfig(vocab_size=1000, pad_id=0, seed=1), HashConfig(vocab_size=1000, pad_id=0, tokenizer_digest="x"),
    ]
    prints = {base.fingerprint} | {v.fingerprint for v in variants}
    assert len(prints) == 1 + len(variants)
    assert HashConfig.from_dict(base.to_dict()).fingerprint == base.fingerprint


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=0, pad_id=0), "vocab_size"),
    (dict(vocab_size=10, pad_id=10), "pad_id"),
    (dict(vocab_size=10, pad_id=0, table_sizes=()), "max n-gram must be >= 2"),
    (dict(vocab_size=10, pad_id=0, table_sizes=(1,)), "table sizes need one size >= 2"),
    (dict(vocab_size=10, pad_id=0, table_sizes=(2**41,)), "exceeds"),
    (dict(vocab_size=10, pad_id=0, layer_ids=(1, 1)), "layer ids must be distinct"),
    (dict(vocab_size=10, pad_id=0, n_heads=0), "hash heads must be in 1..64"),
    (dict(vocab_size=10, pad_id=0, n_heads=65), "hash heads must be in 1..64"),
])
def test_bad_configs_are_refused_in_one_line(kwargs, message):
    with pytest.raises(EngramTierError, match=message) as err:
        HashConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_ids_outside_the_vocabulary_are_refused():
    hasher = NgramHasher(HashConfig(vocab_size=10, pad_id=0, table_sizes=(11,)))
    for bad in ([[1, 10]], [[-1, 2]]):
        with pytest.raises(EngramTierError, match="outside the compressed vocabulary"):
            hasher.hash(np.array(bad))
        with pytest.raises(EngramTierError, match="outside the compressed vocabulary"):
            hasher.hash_torch(torch.tensor(bad))
    with pytest.raises(EngramTierError, match="shaped"):
        hasher.hash(np.zeros((1, 2, 3), dtype=np.int64))


# ------------------------------------------------------------------------------------- image positions

IMAGE = 7


def _image_config(**kw):
    return HashConfig(vocab_size=1000, pad_id=3, table_sizes=(20_011, 30_011, 40_009), layer_ids=(1, 14), n_heads=2,
                      image_id=IMAGE, **kw)


def _rule_rows(hasher, sequence):
    """docs/design.md's image rule written out per position in plain Python integers: walking back from t,
    the first shift that is the image token or lies before the start blocks itself and every older one,
    which then hold the pad; the rest is the ordinary XOR-multiply-mod addressing."""
    cfg = hasher.config
    rows = []
    for t in range(len(sequence)):
        context, blocked = [], False
        for k in range(cfg.max_ngram_size):
            blocked = blocked or t - k < 0 or int(sequence[t - k]) == cfg.image_id
            context.append(cfg.pad_id if blocked else int(sequence[t - k]))
        per_layer = []
        for li in range(len(cfg.layer_ids)):
            m = [int(v) for v in hasher.multipliers[li]]
            ids = []
            for oi in range(cfg.max_ngram_size - 1):
                mix = 0
                for k in range(oi + 2):
                    mix ^= context[k] * m[k]
                ids += [mix % int(p) + int(o) for p, o in zip(hasher.primes[li, oi], hasher.offsets[li, oi], strict=True)]
            per_layer.append(ids)
        rows.append(per_layer)
    return np.array(rows, dtype=np.int64).reshape(len(sequence), len(cfg.layer_ids), -1)


SEQUENCES = {
    "start": [IMAGE, 11, 12, 13, 14, 15],
    "middle": [11, 12, 13, IMAGE, 14, 15, 16, 17],
    "end": [11, 12, 13, 14, IMAGE],
    "consecutive": [11, IMAGE, IMAGE, 12, 13, IMAGE, 14],
    "only": [IMAGE],
}


@pytest.mark.parametrize("where", SEQUENCES)
def test_image_positions_hash_by_the_rule_in_every_implementation(where):
    hasher = NgramHasher(_image_config())
    seq = np.array(SEQUENCES[where])
    expected = _rule_rows(hasher, seq)
    np.testing.assert_array_equal(hasher.hash(seq), expected)
    np.testing.assert_array_equal(hasher.hash_torch(torch.from_numpy(seq)).numpy(), expected)
    np.testing.assert_array_equal(hash_reference_numpy(hasher, seq[None])[0], expected)
    # no n-gram reaches across an image: a position after it reads what it reads in a sequence starting there
    after = np.flatnonzero(seq == IMAGE)[-1] + 1
    if after < seq.size:
        np.testing.assert_array_equal(hasher.hash(seq)[after:], hasher.hash(seq[after:]))


def test_ragged_sequences_with_images_hash_as_if_alone():
    hasher = NgramHasher(_image_config())
    seqs = [np.array(s) for s in SEQUENCES.values()]
    starts = np.concatenate([[0], np.cumsum([s.size for s in seqs])])
    ragged = hasher.hash_ragged(np.concatenate(seqs), starts)
    for s, lo, hi in zip(seqs, starts[:-1], starts[1:], strict=True):
        np.testing.assert_array_equal(ragged[lo:hi], _rule_rows(hasher, s))


def test_without_an_image_id_the_image_token_is_an_ordinary_token():
    plain = NgramHasher(HashConfig(**{**_image_config().to_dict(), "image_id": None}))
    seq = np.array(SEQUENCES["middle"])
    rows = plain.hash(seq)
    np.testing.assert_array_equal(rows, hash_reference_numpy(plain, seq[None])[0])
    assert not np.array_equal(rows, NgramHasher(_image_config()).hash(seq))


def test_the_image_id_enters_the_fingerprint_only_when_set():
    import hashlib
    import json

    with_image = _image_config()
    without = HashConfig(**{**with_image.to_dict(), "image_id": None})
    assert "image_id" not in without.to_dict()  # so tables and traces written before it keep their fingerprint
    blob = json.dumps(without.to_dict(), sort_keys=True).encode()
    assert without.fingerprint == hashlib.sha256(blob).hexdigest()[:16]
    assert with_image.fingerprint != without.fingerprint
    assert HashConfig.from_dict(with_image.to_dict()) == with_image
    with pytest.raises(EngramTierError, match="image_id 1000 lies outside"):
        HashConfig(vocab_size=1000, pad_id=0, image_id=1000)
