"""Hit counts of the online policies against libCacheSim 0.3.5 on the same traces.

Each trace is written as an oracleGeneral binary file (24-byte records ``<I Q I q``: time, id,
size = 1, position of the next request for the same id or -1) and replayed by libCacheSim's own
``process_trace``; every row has size 1, so cache sizes are rows. The counts must be identical.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cacheus_model import CacheusModel
from clockpro_model import ClockProModel
from libcachesim_io import lcs, libcachesim_hits, next_positions, seeded_hits, write_oracle_general
from zipf import zipf_keys

from engramtier.cache import admission
from engramtier.cache.engine import HITS, Engine
from engramtier.cache.policies import clockpro
from engramtier.cache.policy import PolicyContext, make_policy, replay


def make_traces() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20260107)
    first = zipf_keys(15_000, 3_000, 0.9, rng, shuffle=True)
    second = 3_000 + zipf_keys(15_000, 3_000, 1.1, rng, shuffle=True)  # a new hot set half way through
    return {
        "zipf": zipf_keys(40_000, 4_000, 1.0, rng, shuffle=True),
        "uniform": rng.integers(0, 1_500, 25_000),
        "loop": np.tile(np.arange(600), 40) % 600,
        "phase": np.concatenate([first, second]),
    }


TRACES = {name: keys.astype(np.int64) for name, keys in make_traces().items()}
N_KEYS = 6_000

# our name -> (libCacheSim class, {our param: libCacheSim param})
POLICIES = {
    "lru": (lcs.LRU, {}),
    "fifo": (lcs.FIFO, {}),
    "clock": (lcs.Clock, {"bits": "n_bit_counter"}),
    "lfu": (lcs.LFU, {}),
    "sieve": (lcs.Sieve, {}),
    "arc": (lcs.ARC, {}),
    "twoq": (lcs.TwoQ, {"in_ratio": "a_in_size_ratio", "out_ratio": "a_out_size_ratio"}),
    "s3fifo": (lcs.S3FIFO, {"small_ratio": "small_size_ratio", "ghost_ratio": "ghost_size_ratio",
                            "move_to_main": "move_to_main_threshold"}),
    "wtinylfu": (lcs.WTinyLFU, {"window_ratio": "window_size"}),
    "lecar": (lcs.LeCaR, {"update_weight": "update_weight", "lru_weight": "lru_weight"}),
    "slru": (lcs.SLRU, {}),
    "lfuda": (lcs.LFUDA, {}),
    "clock2qplus": (lcs.Clock2QPlus, {"fifo_ratio": "fifo_size_ratio", "ghost_ratio": "ghost_size_ratio",
                                      "move_to_main": "move_to_main_threshold",
                                      "corr_window_ratio": "corr_window_ratio"}),
    "lirs": (lcs.LIRS, {}),
    "lruk": (lcs.LRUK, {"k": "k"}),
    "mq": (lcs.MQ, {"n_queue": "n_queue", "lifetime": "lifetime", "qout_ratio": "qout_size_ratio"}),
}

# (capacity, params) per policy: tiny tiers, where a default sub-queue would round to zero rows the
# ratios are raised so that libCacheSim runs the same configuration; then ordinary sizes. A third entry,
# where given, replays only each trace's first that many requests (None: all of it).
SIZES = [2, 3, 5, 8, 13, 50, 128, 400, 1200]
CASES = {
    "lru": [(c, {}) for c in SIZES],
    "fifo": [(c, {}) for c in SIZES],
    "clock": [(c, {}) for c in SIZES] + [(c, {"bits": b}) for c in (3, 50, 400) for b in (2, 3)],
    "lfu": [(c, {}) for c in SIZES],
    "sieve": [(c, {}) for c in SIZES],
    "arc": [(c, {}) for c in SIZES],
    "twoq": [(2, {"in_ratio": 0.5}), (3, {"in_ratio": 0.34})] + [(c, {}) for c in SIZES[2:]]
    + [(400, {"in_ratio": 0.1, "out_ratio": 2.0})],
    "s3fifo": [(3, {"small_ratio": 0.67}), (5, {"small_ratio": 0.4}), (8, {"small_ratio": 0.25}),
               (13, {"small_ratio": 0.2})] + [(c, {}) for c in SIZES[5:]]
    + [(400, {"move_to_main": 1, "ghost_ratio": 0.5}), (400, {"move_to_main": 3, "small_ratio": 0.25})],
    "wtinylfu": [(6, {"window_ratio": 0.17}), (8, {"window_ratio": 0.25}), (13, {"window_ratio": 0.2}),
                 (50, {"window_ratio": 0.1})] + [(c, {}) for c in SIZES[6:]]
    + [(400, {"window_ratio": 0.3})],
    # fixed weights of 1 or 0: LeCaR always follows LRU or LFU, no draw decides (randomised cases below)
    "lecar": [(c, {"update_weight": False, "lru_weight": w}) for c in SIZES for w in (0.0, 1.0)],
    # libCacheSim's 4 segments: capacities a multiple of 4 or one more (see slru.py)
    "slru": [(c, {}) for c in (4, 5, 8, 13, 49, 128, 400, 1201)],
    # libCacheSim's LFUDA walks every integer up to its largest priority when its smallest bucket empties,
    # and priorities grow geometrically at small capacities (see lfuda.py): past these prefixes and sizes
    # it runs for minutes. Capacity 1 is refused.
    "lfuda": [(c, {}, 2_500) for c in (8, 13, 50, 128, 400, 1200)] + [(c, {}, None) for c in (128, 400, 1200)],
    "clock2qplus": [(3, {"fifo_ratio": 0.67}), (5, {"fifo_ratio": 0.4}), (8, {"fifo_ratio": 0.25}),
                    (13, {"fifo_ratio": 0.2})] + [(c, {}) for c in SIZES[5:]]
    + [(400, {"move_to_main": 2, "ghost_ratio": 0.5}), (400, {"corr_window_ratio": 0.0}),
       (128, {"corr_window_ratio": 1.3, "fifo_ratio": 0.3}), (50, {"ghost_ratio": 0.0})],
    # libCacheSim's HIR queue is 1% of the rows, and needs 2 (see lirs.py): 200 rows at least
    "lirs": [(c, {}) for c in (200, 201, 299, 300, 400, 1200, 3000)],
    "lruk": [(c, {}) for c in SIZES] + [(c, {"k": k}) for c in (3, 50, 400) for k in (1, 3)],
    # a short lifetime makes Adjust demote rows often
    "mq": [(c, {}) for c in SIZES] + [(c, {"lifetime": 100, "qout_ratio": 1.0}) for c in (5, 128)]
    + [(c, {"n_queue": 3, "lifetime": 500}) for c in (13, 400)],
}


def case_trace(trace: str, requests: list, trace_files: dict, folder) -> tuple[np.ndarray, object]:
    """The keys and oracleGeneral file a case replays: the whole trace, or (``requests`` = [n]) its first n."""
    keys = TRACES[trace]
    if not requests or requests[0] is None:
        return keys, trace_files[trace]
    path = folder / f"{trace}-{requests[0]}.oracleGeneral.bin"
    if not path.exists():
        write_oracle_general(path, keys[: requests[0]])
    return keys[: requests[0]], path


def libcachesim_cache(name: str, capacity: int, params: dict, **extra):
    cls, rename = POLICIES[name]
    kwargs = {rename[k]: v for k, v in params.items()}
    return cls(capacity, hashpower=max(4, math.ceil(math.log2(capacity)) + 1), **kwargs, **extra)


@pytest.fixture(scope="module")
def trace_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    paths = {}
    for name, keys in TRACES.items():
        paths[name] = root / f"{name}.oracleGeneral.bin"
        write_oracle_general(paths[name], keys)
    return paths


def test_next_positions_hand_worked():
    keys = np.array([7, 3, 7, 7, 3, 9])
    assert next_positions(keys).tolist() == [2, 4, 3, -1, -1, -1]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hit_counts_identical(name, trace_files, tmp_path):
    ctx = PolicyContext(n_keys=N_KEYS)
    mismatches = []
    for trace in TRACES:
        for capacity, params, *requests in CASES[name]:
            keys, path = case_trace(trace, requests, trace_files, tmp_path)
            ours = replay(make_policy(name, capacity, ctx, **params), keys)
            theirs = libcachesim_hits(libcachesim_cache(name, capacity, params), path)
            if ours != theirs:
                mismatches.append(f"{trace} capacity={capacity} {params}: ours {ours} libCacheSim {theirs}")
    assert not mismatches, "\n".join(mismatches)


# libCacheSim's BloomFilterAdmissioner remembers every row it was offered (a hash table); ours remembers a
# window of them in two Bloom filters. With a window far longer than a trace's distinct rows (so nothing is
# forgotten, and on these traces no false positive) the decisions, and so the hits, are the same.
WIDE_WINDOW_ROWS = 400_000
# libCacheSim asks a cache's admissioner in cache_can_insert_default, which Clock2QPlus's own can_insert
# never calls: its hits with an admissioner equal its hits without (measured), nothing to compare.
IGNORES_ADMISSIONER = {"clock2qplus"}


@pytest.mark.parametrize("name", sorted(set(CASES) - IGNORES_ADMISSIONER))
def test_hit_counts_identical_with_bloom_admission(name, trace_files, tmp_path):
    ctx = PolicyContext(n_keys=N_KEYS)
    mismatches = []
    for trace in TRACES:
        for capacity, params, *requests in CASES[name][::3]:
            keys, path = case_trace(trace, requests, trace_files, tmp_path)
            engine = Engine([make_policy(name, capacity, ctx, **params)], "inclusive", N_KEYS,
                            [admission.build(f"bloom:{WIDE_WINDOW_ROWS / capacity}", capacity)])
            engine.feed(keys, np.arange(keys.size), np.arange(keys.size + 1))  # a step per request
            ours = int(engine.counters[0, HITS])
            theirs = libcachesim_hits(libcachesim_cache(name, capacity, params,
                                                        admissioner=lcs.BloomFilterAdmissioner()), path)
            if ours != theirs:
                mismatches.append(f"{trace} capacity={capacity} {params}: ours {ours} libCacheSim {theirs}")
    assert not mismatches, "\n".join(mismatches)


def test_libcachesim_clockpro_never_evicts(trace_files):
    """Why engramtier has no CLOCK-Pro to compare: libCacheSim 0.3.5's ClockPro refuses a miss (its can_insert)
    once its cold rows reach their target, a check made before any eviction, so it never evicts and its hits
    are those of a static cache of the first ``int(init_ratio_cold * capacity)`` distinct rows. This fails
    once a libCacheSim that evicts makes a comparison possible."""
    for trace, keys in TRACES.items():
        _, first = np.unique(keys, return_index=True)
        in_order = keys[np.sort(first)]
        for capacity, ratio in ((50, 0.5), (400, 0.5), (400, 1.0)):
            kept = in_order[: int(capacity * ratio)]
            static_hits = int(np.isin(keys, kept).sum()) - kept.size
            cache = lcs.ClockPro(capacity, hashpower=10, init_ratio_cold=ratio)
            assert libcachesim_hits(cache, trace_files[trace]) == static_hits, (trace, capacity, ratio)


def test_clockpro_answers_as_its_plain_model_on_the_four_traces():
    """With no libCacheSim ClockPro to compare (above), `clockpro` follows PyClockPro's rules, which
    tests/clockpro_model.py states in plain Python (and which gave PyClockPro's own hits on these traces, checked
    once: README): the compiled policy must answer as the model, request by request, hit or miss and the row
    reported evicted. The loop through 400 rows makes hand cascades evict two rows in one admission; the
    model's deepest cascade and fullest ring must fit the policy's fixed stack and node pool."""
    ctx, doubles = PolicyContext(n_keys=N_KEYS), 0
    for trace, keys in TRACES.items():
        for capacity in (2, 13, 128, 400, 1200):
            policy, model = make_policy("clockpro", capacity, ctx), ClockProModel(capacity)
            for t, key in enumerate(keys.tolist()):
                hit = policy.lookup(key, t)
                assert (hit, policy.hit_victim() if hit else policy.admit(key, t)) == model.request(key), (
                    trace, capacity, t)
            assert model.deepest < policy.state[clockpro.STACK].size and model.most_entries <= 2 * capacity
            doubles += model.double_evictions
    assert doubles > 0


# Randomised policies: libCacheSim seeds its generator from the clock, ours draw from their `seed`, so
# hit counts agree in distribution: the mean hit ratio of SEEDS seeds of ours and of SEEDS runs of
# libCacheSim's must lie within RANDOM_TOLERANCE. name -> (libCacheSim class, parameter sets, traces)
RANDOMISED = {
    # libCacheSim's Random is not uniform where few rows hit (it draws hash buckets, so rows sharing one are
    # spared): the loop trace is measured against the uniform policy's own fixed point instead (below)
    "random": (lcs.Random, [{}], ["zipf", "uniform", "phase"]),
    "lruprob": (lcs.LRUProb, [{}, {"prob": 0.2}], list(TRACES)),
    "hyperbolic": (lcs.Hyperbolic, [{}], list(TRACES)),
    "lecar": (lcs.LeCaR, [{}, {"update_weight": False, "lru_weight": 0.8}], list(TRACES)),
    "lhd": (lcs.LHD, [{}], list(TRACES)),
    "cacheus": (lcs.Cacheus, [{}], list(TRACES)),
}
RANDOM_SIZES = [2, 13, 128, 1200]
SEEDS = 5
RANDOM_TOLERANCE = 0.01
# Cacheus's hit ratio has a long left tail in both (a run whose LRU weight falls to nothing follows CR-LFU
# alone: zipf at 13 rows, 0.24 against the usual 0.31 in one of nine libCacheSim runs), which moves a mean
# of five by more than the tolerance: its medians of nine are compared. Observed: within 0.0019, except at
# 2 rows (0.0056), where a request often returns to the row the one before evicted as a second victim,
# which ours still holds (pending, see cacheus.py) and libCacheSim has dropped.
MEDIAN_OF = {"cacheus": 9}


@pytest.mark.parametrize("name", sorted(RANDOMISED))
def test_randomised_hit_ratios_agree_over_seeds(name, trace_files):
    cls, param_sets, traces = RANDOMISED[name]
    statistic, runs = (np.median, MEDIAN_OF[name]) if name in MEDIAN_OF else (np.mean, SEEDS)
    ctx = PolicyContext(n_keys=N_KEYS)
    mismatches = []
    for trace in traces:
        keys = TRACES[trace]
        for capacity in RANDOM_SIZES:
            for params in param_sets:
                ours = statistic([replay(make_policy(name, capacity, ctx, seed=seed, **params), keys)
                                  for seed in range(runs)]) / keys.size
                hashpower = max(4, math.ceil(math.log2(capacity)) + 1)
                theirs = statistic([seeded_hits(run, trace_files[trace], cls, capacity, hashpower=hashpower, **params)
                                    for run in range(runs)]) / keys.size
                if abs(ours - theirs) > RANDOM_TOLERANCE:
                    mismatches.append(f"{trace} capacity={capacity} {params}: ours {ours:.4f} libCacheSim {theirs:.4f}")
    assert not mismatches, "\n".join(mismatches)


def test_random_on_a_loop_hits_at_the_uniform_fixed_point():
    """A loop of N rows through C < N: a row hits when it survives the evictions of the N(1 - h) misses
    since its last request, each taking it with chance 1/C, so h = (1 - 1/C) ** (N (1 - h)); the first lap
    only misses."""
    loop, capacity = 600, 128
    keys = TRACES["loop"]
    h = 0.0
    for _ in range(50):
        h = (1 - 1 / capacity) ** (loop * (1 - h))
    ours = np.mean([replay(make_policy("random", capacity, PolicyContext(n_keys=N_KEYS), seed=seed), keys)
                    for seed in range(SEEDS)]) / keys.size
    assert abs(ours - h * (1 - loop / keys.size)) < 0.002 and h > 0.005


@pytest.mark.parametrize("name", sorted(RANDOMISED))
def test_randomised_policies_repeat_for_a_seed(name):
    ctx, keys = PolicyContext(n_keys=N_KEYS), TRACES["zipf"]
    runs = {}
    for seed in (1, 1, 2):
        hits = np.empty(keys.size, np.bool_)
        replay(make_policy(name, 128, ctx, seed=seed), keys, hits)
        runs.setdefault(seed, []).append(hits)
    np.testing.assert_array_equal(runs[1][0], runs[1][1])
    assert not np.array_equal(runs[1][0], runs[2][0])


class _FirstDisagreement(CacheusModel):
    """tests/cacheus_model.py, noting the first eviction where the experts disagree (a draw decides from
    there)."""

    disagreed = False

    def _evict(self):
        by_lru, by_lfu = self.experts()
        self.disagreed |= by_lru != by_lfu
        return super()._evict()


def test_cacheus_is_libcachesim_until_its_experts_first_disagree():
    """Until a full cache's experts name different victims no draw decides, so libCacheSim's Cacheus and the
    rules ours follow (its plain model, which the policy answers as, test_policy_invariants.py) must agree
    request by request: hit or miss, and rows held (SR's growth included). Observed: 25 to 5,321 requests,
    the loop's 24,000 whole."""
    agreed, grew = 0, False
    for keys in TRACES.values():
        for capacity in (2, 3, 13, 128, 1200):
            model, cache = _FirstDisagreement(capacity, lambda n: 0), lcs.Cacheus(capacity, hashpower=12)
            for t, key in enumerate(keys.tolist()):
                hit, _ = model.request(key)
                if model.disagreed:
                    break
                assert cache.get(lcs.Request(obj_size=1, obj_id=key)) == hit, (capacity, t)
                assert cache.get_n_obj() == len(model.held()), (capacity, t)
                agreed += 1
                grew |= model.sr_size != capacity // 2
    assert grew and agreed > 100_000


def test_libcachesim_cacheus_of_one_row_caches_nothing(trace_files):
    """Why `cacheus` refuses 1 row: libCacheSim halves it into SR and R of 0 rows each, and its SR-LRU then
    admits nothing (its can_insert), so every request misses."""
    for trace in TRACES:
        assert libcachesim_hits(lcs.Cacheus(1, hashpower=4), trace_files[trace]) == 0
