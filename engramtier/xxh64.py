"""XXH64 (Yann Collet's xxHash, 64-bit variant), written from the published algorithm as numba code.

Hand-written because its callers are numba kernels: the nvme tier checksums every row it reads and
the W-TinyLFU sketch hashes every row it admits, inside compiled loops where the `xxhash` package
(a C extension called through Python) cannot be called. It lives at the top of the package because
both `tiers/` and `cache/` need it and `cache/` never imports `tiers/`.

`xxh64` hashes a uint8 array; `xxh64_u64` is the same hash of one little-endian 8-byte word, the
array path for a length of 8 unrolled, so a key hashes without building an array.
"""

import numpy as np
from numba import njit

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)


@njit(inline="always")
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(inline="always")
def _round(acc, lane):
    return _rotl(acc + lane * _P2, 31) * _P1


@njit(inline="always")
def _merge(h, v):
    return (h ^ _round(np.uint64(0), v)) * _P1 + _P4


@njit(inline="always")
def _word(h, word):
    """Fold one 8-byte word past the stripes into ``h``."""
    return _rotl(h ^ _round(np.uint64(0), word), 27) * _P1 + _P4


@njit(inline="always")
def _avalanche(h):
    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    return h


@njit(nogil=True, cache=True)
def xxh64(data, seed):
    """XXH64 of the uint8 array ``data``; 8-byte words are read unaligned (fine on x86-64 and ARMv8)."""
    n = data.size
    words = data[: n - n % 8].view(np.uint64)
    i = 0
    if n >= 32:
        v1, v2, v3, v4 = seed + _P1 + _P2, seed + _P2, seed, seed - _P1
        while i < n // 32 * 4:
            v1 = _round(v1, words[i])
            v2 = _round(v2, words[i + 1])
            v3 = _round(v3, words[i + 2])
            v4 = _round(v4, words[i + 3])
            i += 4
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(_merge(_merge(_merge(h, v1), v2), v3), v4)
    else:
        h = seed + _P5
    h += np.uint64(n)
    while i < words.size:
        h = _word(h, words[i])
        i += 1
    p = i * 8
    if p + 4 <= n:
        w = np.uint64(0)
        for b in range(4):
            w |= np.uint64(data[p + b]) << np.uint64(8 * b)
        h = _rotl(h ^ (w * _P1), 23) * _P2 + _P3
        p += 4
    while p < n:
        h = _rotl(h ^ (np.uint64(data[p]) * _P5), 11) * _P1
        p += 1
    return _avalanche(h)


@njit(inline="always")
def xxh64_u64(word, seed):
    """XXH64 of the 8 little-endian bytes of the uint64 ``word`` (`xxh64` of them, without the array)."""
    return _avalanche(_word(seed + _P5 + np.uint64(8), word))
