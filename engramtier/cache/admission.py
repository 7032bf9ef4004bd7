"""Admission filters: whether a cache tier keeps a row it missed, decided in front of any policy.

More than half the distinct rows of a text's trace are read once, and a small GPU tier that admits
every miss spends its room on them. A tier's ``admission`` (TOML ``admission = "..."``) puts a filter
between the engine and the tier's policy: the engine asks it before `admit`, and a row it refuses is
declined exactly as a policy declines one (``admit`` returning the key, `engramtier.cache.engine`): in
an inclusive hierarchy the row is served from below and not kept, in an exclusive one it goes down to
the next tier as a demotion. A declined row never reaches the policy. Filters:

``bloom`` or ``bloom:W``
    Second hit (libCacheSim's ``BloomFilterAdmissioner``): a row is admitted only when it was offered
    before, so a row read once never enters. libCacheSim remembers every row ever offered in a hash
    table; here the memory is two Bloom filters (generations) of ``W * capacity / 2`` rows each
    (``W`` defaults to `BLOOM_WINDOW`), 1% false positives at full load (`BLOOM_BITS_PER_ROW` bits a row
    rounded up to a power of two, `BLOOM_HASHES` probes). A row new to both is added to the current one;
    when it holds its share, the older one is cleared and becomes current. So a row's second offer
    admits it if fewer than ``W/2 * capacity`` to ``W * capacity`` other rows were offered in between
    (the filter's window), and state stays bounded by the tier's capacity, never the table's rows. A row
    found in either generation is admitted and (re)added to the current one. With a window longer than
    the trace's distinct rows and no false positive, the decisions are libCacheSim's exactly.
``prob:P`` or ``prob:P:SEED``
    Admit with probability ``P`` in (0, 1] (libCacheSim's ``ProbAdmissioner``), drawing from a counter
    hashed with XXH64 under ``SEED`` (default 0): reproducible, where libCacheSim draws from one generator per process.
``tinylfu``
    TinyLFU's frequency filter (Einziger, Friedman & Manes, 2017) in front of any policy: a count-min
    sketch as Caffeine sizes it (16 counters per row of capacity, rounded up to a power of two; 4
    probes; counters saturate at 15, Caffeine's 4 bits) counts every lookup that reaches the tier, and
    halves every counter after ``10 * capacity`` of them (Caffeine's sample size). TinyLFU admits a
    candidate whose count exceeds that of the victim the policy is about to evict; the policy interface
    does not reveal that victim before `admit`, so the bar is the victim of the tier's latest eviction,
    re-estimated at every decision (its count decays with the sketch's aging, so no bar lasts). That
    victim itself comes back admitted (TinyLFU would still hold it), as does any row while the tier has
    room (its last admission evicted nothing, or a row was just removed from it). libCacheSim has no
    such admissioner.

Filters hash a row by its global row id (``PolicyContext.row_ids`` behind a trace's dense keys, the
key itself in the runtime), so the simulator and the runtime decide the same; they see the events of
the engine's order, so a seeded ``prob`` draws the same sequence in both. In an exclusive hierarchy a
tier below the first is offered rows by demotion: its filter judges those. A warm start
(`engramtier.cache.warm`) bypasses the filter: a profile already chose those rows.

The filter's state is one tuple type for every kind (`STATE`; kind `NONE` for a tier without one), so each
policy's drivers are compiled once, with the filter's operations inlined (`engramtier.cache.diskcache.inlined`)
and a branch on its kind.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types

from engramtier.cache.diskcache import inlined
from engramtier.errors import EngramTierError, check_number
from engramtier.xxh64 import xxh64_u64

KINDS = ("bloom", "prob", "tinylfu")
NONE, BLOOM, PROB, TINYLFU = range(4)
FORMS = "'bloom', 'bloom:W' (window, x capacity), 'prob:P', 'prob:P:SEED' or 'tinylfu'"

# the state tuple: int64 scalars, the Bloom filters' words, the sketch's counters, each dense key's row id
ST, BITS, SKETCH, ROW_IDS = range(4)
STATE = types.Tuple((types.int64[::1], types.uint64[::1], types.uint8[::1], types.int64[::1]))
KIND = 0  # st[KIND]; then each kind's scalars:
GEN_ROWS, IN_CURRENT, CURRENT, BITS_LOG2 = range(1, 5)  # bloom
THRESHOLD, SEED, DRAWS = range(1, 4)  # prob
SKETCH_LOG2, AGING_PERIOD, SINCE_AGING, BAR = range(1, 5)  # tinylfu

BLOOM_WINDOW = 8.0  # rows remembered (up to), in multiples of the tier's capacity
BLOOM_BITS_PER_ROW = -math.log(0.01) / math.log(2) ** 2  # 1% false positives
BLOOM_HASHES = round(math.log(2) * BLOOM_BITS_PER_ROW)
PROB_BITS = 53  # a draw is a 53-bit integer, admitted below P * 2**53
SKETCH_PER_ROW, SKETCH_HASHES, SKETCH_MAX, SAMPLE_PER_ROW = 16, 4, 15, 10

SEED0, SEED1 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)
MAX_LOG2 = 36  # a Bloom generation of at most 2**36 bits (8 GiB)


def parse(text: str, where: str = "admission") -> tuple[str, tuple]:
    """(kind, arguments) of an admission string, or one line saying what is wrong with it."""
    if not isinstance(text, str):
        raise EngramTierError(f"{where} must be a string, {FORMS}; got {text!r}")
    name, *args = text.strip().split(":")
    if name not in KINDS:
        close = [k for k in KINDS if k[:2] == name[:2]]
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise EngramTierError(f"{where}: unknown admission {text!r}: {hint}write {FORMS}")
    limit = {"bloom": 1, "prob": 2, "tinylfu": 0}[name]
    if len(args) > limit or (name == "prob" and not args):
        raise EngramTierError(f"{where}: admission {text!r} does not parse; write {FORMS}")
    try:
        values = tuple(int(a) if i == 1 else float(a) for i, a in enumerate(args))  # prob's seed is an integer
    except ValueError:
        raise EngramTierError(f"{where}: admission {text!r}: {':'.join(args)} must be numbers ({FORMS})") from None
    if name == "bloom" and values:
        check_number(values[0], f"{where}: the window of admission {text!r}", low=0, low_open=True)
    if name == "prob":
        check_number(values[0], f"{where}: the probability of admission {text!r}", low=0, high=1, low_open=True)
        if len(values) > 1:
            check_number(values[1], f"{where}: the seed of admission {text!r}", integer=True, low=0, high=2**63 - 1)
    return name, values


def _empty_state(kind: int, scalars: list[int], bits: int = 0, counters: int = 0,
                 row_ids: np.ndarray | None = None) -> tuple:
    return (np.array([kind, *scalars], np.int64), np.zeros(bits, np.uint64), np.zeros(counters, np.uint8),
            np.empty(0, np.int64) if row_ids is None else np.ascontiguousarray(row_ids, np.int64))


def build(text: str | None, capacity: int, row_ids: np.ndarray | None = None) -> tuple:
    """The state of the filter ``text`` for a tier of ``capacity`` rows (None: no filter). ``row_ids``:
    each dense key's global row id (None when keys are row ids), so rows hash as themselves."""
    if text is None:
        return _empty_state(NONE, [])
    kind, args = parse(text)
    if kind == "prob":
        threshold = min(round(args[0] * 2**PROB_BITS), 2**PROB_BITS)
        return _empty_state(PROB, [threshold, args[1] if len(args) > 1 else 0, 0])
    if kind == "bloom":
        window = args[0] if args else BLOOM_WINDOW
        gen_rows = max(1, math.ceil(window * capacity / 2))
        log2 = max(6, math.ceil(math.log2(BLOOM_BITS_PER_ROW * gen_rows)))
        if log2 > MAX_LOG2:
            raise EngramTierError(f"admission {text!r}: a window of {window:g} x {capacity} rows needs Bloom filters of "
                                  f"2 x 2**{log2} bits; use a shorter window")
        return _empty_state(BLOOM, [gen_rows, 0, 0, log2], bits=2 << (log2 - 6), row_ids=row_ids)
    log2 = int(SKETCH_PER_ROW * capacity - 1).bit_length()
    return _empty_state(TINYLFU, [log2, SAMPLE_PER_ROW * capacity, 0, -1], counters=1 << log2, row_ids=row_ids)


@inlined
def _hashes(adm, key):
    """The two 64-bit hashes (h, g; g odd) of ``key``'s row: probe ``i`` of a table of ``2**log2``
    entries is the top ``log2`` bits of ``h + i * g`` (double hashing)."""
    row_ids = adm[ROW_IDS]
    row = np.uint64(row_ids[key] if row_ids.size else key)
    return xxh64_u64(row, SEED0), xxh64_u64(row, SEED1) | np.uint64(1)


@inlined
def _probe(h, g, i, log2):
    return np.int64((h + np.uint64(i) * g) >> np.uint64(64 - log2))


@inlined
def _bloom_has(words, base, h, g, log2):
    """Whether every probe bit of the row hashed (h, g) is set in the generation starting at word ``base``."""
    for i in range(BLOOM_HASHES):
        bit = _probe(h, g, i, log2)
        if words[base + (bit >> 6)] & (np.uint64(1) << np.uint64(bit & 63)) == 0:
            return False
    return True


@inlined
def _bloom_add(words, base, h, g, log2):
    """Set the row's probe bits in the generation starting at word ``base``; True if all were set already."""
    present = True
    for i in range(BLOOM_HASHES):
        bit = _probe(h, g, i, log2)
        w, mask = base + (bit >> 6), np.uint64(1) << np.uint64(bit & 63)
        if words[w] & mask == 0:
            present = False
            words[w] |= mask
    return present


@inlined
def _bloom_admits(adm, key):
    st, words = adm[ST], adm[BITS]
    h, g = _hashes(adm, key)
    log2 = st[BITS_LOG2]
    half = words.size // 2
    current = st[CURRENT] * half
    seen = _bloom_has(words, current, h, g, log2) or _bloom_has(words, half - current, h, g, log2)
    if _bloom_add(words, current, h, g, log2):
        return seen  # in the current generation already: nothing was added
    st[IN_CURRENT] += 1
    if st[IN_CURRENT] >= st[GEN_ROWS]:  # the current generation is full: forget the older one
        older = half - current
        for w in range(older, older + half):
            words[w] = np.uint64(0)
        st[CURRENT] = 1 - st[CURRENT]
        st[IN_CURRENT] = 0
    return seen


@inlined
def _estimate(adm, h, g):
    """The sketch's count of the row hashed (h, g): its least counter."""
    st, sketch = adm[ST], adm[SKETCH]
    least = SKETCH_MAX
    for i in range(SKETCH_HASHES):
        least = min(least, np.int64(sketch[_probe(h, g, i, st[SKETCH_LOG2])]))
    return least


@inlined
def observe(adm, key):
    """A lookup of ``key`` reached the tier (hit or miss): ``tinylfu`` counts it."""
    st = adm[ST]
    if st[KIND] != TINYLFU:
        return
    sketch = adm[SKETCH]
    h, g = _hashes(adm, key)
    for i in range(SKETCH_HASHES):
        c = _probe(h, g, i, st[SKETCH_LOG2])
        if sketch[c] < SKETCH_MAX:
            sketch[c] += np.uint8(1)
    st[SINCE_AGING] += 1
    if st[SINCE_AGING] >= st[AGING_PERIOD]:
        st[SINCE_AGING] = 0
        for c in range(sketch.size):
            sketch[c] >>= np.uint8(1)


@inlined
def admits(adm, key):
    """Whether the tier may admit ``key``, offered after a miss (or a demotion); False: declined."""
    st = adm[ST]
    kind = st[KIND]
    if kind == NONE:
        return True
    if kind == BLOOM:
        return _bloom_admits(adm, key)
    if kind == PROB:
        st[DRAWS] += 1
        draw = xxh64_u64(np.uint64(st[DRAWS]), np.uint64(st[SEED])) >> np.uint64(64 - PROB_BITS)
        return np.int64(draw) < st[THRESHOLD]
    if st[BAR] < 0 or st[BAR] == key:  # room, or the row just evicted: the TinyLFU victim would still be cached
        return True
    h, g = _hashes(adm, key)
    bar_h, bar_g = _hashes(adm, st[BAR])
    return _estimate(adm, h, g) > _estimate(adm, bar_h, bar_g)


@inlined
def note_victim(adm, key):
    """The tier evicted ``key`` (-1: its latest admission evicted nothing, or a row left it, so it has
    room): ``tinylfu`` judges the next candidate against it."""
    st = adm[ST]
    if st[KIND] == TINYLFU:
        st[BAR] = key


OPS = (observe, admits, note_victim)
