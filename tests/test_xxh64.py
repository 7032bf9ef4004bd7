"""XXH64 against the reference implementation: known answers for every branch, and python-xxhash."""

import struct

import numpy as np
import pytest

from engramtier.xxh64 import xxh64, xxh64_u64

# Known answers of the reference implementation (python-xxhash 4.1.0 over libxxhash 0.8.4) for the
# prefixes of bytes(range(256)) * 4, seeds 0 and 12345: lengths that take every branch (tail bytes,
# a 4-byte word, 8-byte lanes, 32-byte stripes).
XXH64_VECTORS = {
    0: (0xEF46DB3751D8E999, 0x95584AF7701F808D), 1: (0xE934A84ADB052768, 0x18B81924B59E1047),
    3: (0xE5C7BB4533BC65DD, 0x6392480C2EB50964), 4: (0xFFCED8604453CC1E, 0x0966C765195E624B),
    7: (0x14CC643F630C72D2, 0x2DE92EF6E41F4589), 8: (0x884A173614B81B8D, 0xCD08D9905E68E73B),
    31: (0xC346D2B59B4D8EE1, 0xA0EFAFEC9DC8252A), 32: (0xCBF59C5116FF32B4, 0xB3273A2DC547055A),
    33: (0x0C535D1ACAFB8EAD, 0x95D5038D6D973455), 63: (0xE26AA9E2A95F8E4F, 0x14F7D7FDBB0CD505),
    100: (0x6AC1E58032166597, 0x028BA1AE2DE4DE27), 1000: (0x6EF436B00EBA4078, 0x3AA2257691B8B9BD),
}


def test_xxh64_matches_the_reference_implementation():
    data = np.frombuffer(bytes(range(256)) * 4, np.uint8)
    for n, (seed0, seed12345) in XXH64_VECTORS.items():
        assert int(xxh64(data[:n], np.uint64(0))) == seed0, n
        assert int(xxh64(data[:n], np.uint64(12345))) == seed12345, n
    assert int(xxh64(np.frombuffer(b"abc", np.uint8), np.uint64(0))) == 0x44BC2CF5AD770999  # xxHash's own README


def test_xxh64_matches_python_xxhash_where_installed():
    xxhash = pytest.importorskip("xxhash")
    rng = np.random.default_rng(0)
    for n in list(range(70)) + [16_384, 16_383]:
        buf = rng.integers(0, 256, n + 3, dtype=np.uint8)[3:]  # unaligned start on purpose
        assert int(xxh64(buf, np.uint64(n))) == xxhash.xxh64_intdigest(buf.tobytes(), seed=n)


def test_xxh64_u64_is_xxh64_of_the_little_endian_word():
    rng = np.random.default_rng(1)
    words = [0, 1, 0x0706050403020100, 2**64 - 1, *rng.integers(0, 2**63, 20, dtype=np.uint64).tolist()]
    for word in words:
        data = np.frombuffer(struct.pack("<Q", word), np.uint8)
        for seed in (0, 12345, 0x12345678, 2**64 - 1):
            assert int(xxh64_u64(np.uint64(word), np.uint64(seed))) == int(xxh64(data, np.uint64(seed))), (word, seed)
    seed0, seed12345 = XXH64_VECTORS[8]  # bytes 0..7
    assert int(xxh64_u64(np.uint64(0x0706050403020100), np.uint64(0))) == seed0
    assert int(xxh64_u64(np.uint64(0x0706050403020100), np.uint64(12345))) == seed12345


def test_xxh64_u64_matches_python_xxhash_where_installed():
    xxhash = pytest.importorskip("xxhash")
    rng = np.random.default_rng(2)
    for word in rng.integers(0, 2**63, 50, dtype=np.uint64).tolist() + [2**64 - 1]:
        for seed in (0, 0x12345678, 0x12344321, 2**64 - 1):  # the middle two: W-TinyLFU's sketch seeds
            want = xxhash.xxh64_intdigest(struct.pack("<Q", word), seed=seed)
            assert int(xxh64_u64(np.uint64(word), np.uint64(seed))) == want, (word, seed)
