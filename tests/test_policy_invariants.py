"""The online policies under random requests and removals, against brute-force Python models.

Every policy is checked against the set of rows it reported keeping: a request hits exactly when the
row is in the set, an admission adds the row and takes out the key it returns, `remove` succeeds
exactly for rows in the set, and after every operation `contains` agrees with the set for every key
and `occupancy` is its size (never above capacity). Ghost entries must therefore never count as
cached. The simple policies are also replayed against list models, evictions and removals included.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cacheus_model import CacheusModel
from clockpro_model import ClockProModel
from hypothesis import given, settings
from hypothesis import strategies as st
from zipf import zipf_keys

from engramtier.cache.policies import arc, cacheus, clockpro, lecar, lhd
from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.errors import EngramTierError
from engramtier.xxh64 import xxh64_u64

N_KEYS = 24

# name -> (capacities to draw from, parameters that make such small capacities valid)
CONFIGS = {
    "lru": (range(1, 9), {}),
    "fifo": (range(1, 9), {}),
    "clock": (range(1, 9), {"bits": 2}),
    "lfu": (range(1, 9), {}),
    "sieve": (range(1, 9), {}),
    "arc": (range(1, 9), {}),
    "twoq": (range(4, 10), {}),
    "s3fifo": (range(7, 13), {"small_ratio": 0.3, "ghost_ratio": 0.5}),
    "wtinylfu": (range(6, 13), {"window_ratio": 0.2}),  # 7 and 12 leave probation a row of slack
    "random": (range(1, 9), {"seed": 3}),
    "lruprob": (range(1, 9), {"prob": 0.3}),
    "hyperbolic": (range(1, 9), {"samples": 3}),
    "lecar": (range(1, 9), {}),
    "lhd": (range(1, 9), {}),
    "slru": (range(2, 10), {"n_seg": 2}),  # odd capacities: a hit promoting out of segment 0 evicts
    "lfuda": (range(2, 9), {}),
    "clock2qplus": (range(7, 13), {"fifo_ratio": 0.3, "ghost_ratio": 0.5}),
    "lruk": (range(1, 9), {"k": 2}),
    "mq": (range(1, 9), {"lifetime": 20, "qout_ratio": 1.0}),  # Qout holds ghosts, Adjust demotes often
    "cacheus": (range(2, 9), {"seed": 5}),
    "clockpro": (range(2, 9), {}),
}

REQUEST, REMOVE = 0, 1
ops = st.lists(st.tuples(st.sampled_from([REQUEST] * 4 + [REMOVE]), st.integers(0, N_KEYS - 1)), max_size=160)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=40, deadline=None)
@given(data=st.data(), sequence=ops)
def test_reported_contents_are_the_contents(name, data, sequence):
    capacities, params = CONFIGS[name]
    capacity = data.draw(st.sampled_from(capacities))
    assert_reported_contents(make_policy(name, capacity, PolicyContext(n_keys=N_KEYS), **params), capacity, sequence,
                             N_KEYS)


# LIRS needs 200 rows (a 2-row HIR queue, see lirs.py): its requests go over more keys, Zipf-skewed so that
# rows are hit, demoted, evicted (on misses and on hits) and come back as non-resident entries of the stack
LIRS_KEYS = 320


@pytest.mark.parametrize("seed", range(3))
def test_lirs_reported_contents_are_the_contents(seed):
    rng = np.random.default_rng(seed)
    keys = zipf_keys(1500, LIRS_KEYS, 0.8, rng, shuffle=True)
    ops_ = np.where(rng.random(keys.size) < 0.05, REMOVE, REQUEST)
    capacity = 200 + seed
    policy = make_policy("lirs", capacity, PolicyContext(n_keys=LIRS_KEYS))
    victims = assert_reported_contents(policy, capacity, zip(ops_.tolist(), keys.tolist(), strict=True), LIRS_KEYS)
    assert victims["miss"] > 50


def test_lirs_hit_on_a_queue_only_row_demotes_the_bottom_lir_row_and_evicts():
    """200 rows: 198 LIR, a 2-row HIR queue Q. A resident HIR row pruned from the stack S lives on in Q
    alone; a hit on it demotes S's bottom LIR row into the full Q, which evicts Q's oldest row on a hit."""
    policy = make_policy("lirs", 200, PolicyContext(n_keys=400))
    t = 0

    def request(key):
        nonlocal t
        t += 1
        return policy.lookup(key, t) or policy.admit(key, t)

    for key in range(198):
        assert request(key) == -1  # LIR has room
    assert request(300) == -1  # HIR, at the top of S and in Q
    for key in range(198):  # hitting 197, S's bottom LIR row, prunes 300 below it from S
        assert request(key) is True
    assert request(301) == -1  # Q: 301, 300
    assert policy.lookup(300, t + 1) and policy.hit_victim() == 301  # 0 demoted to Q, which evicts 301
    assert policy.contains(0) and policy.contains(300) and not policy.contains(301)
    assert policy.occupancy() == 199  # LIR is a row short until a miss fills it
    assert not policy.lookup(301, t + 2)  # non-resident in S: a miss that makes it LIR, filling LIR again
    assert policy.admit(301, t + 2) == -1 and policy.occupancy() == 200
    assert not policy.lookup(302, t + 3) and policy.admit(302, t + 3) == 300  # Q (0, 300) is full: 300 goes
    assert policy.contains(0) and policy.contains(301) and policy.contains(302) and not policy.contains(300)


def assert_reported_contents(policy, capacity, sequence, n_keys) -> dict[str, int]:
    """Run ``sequence`` of (op, key) on ``policy`` against the set of rows it reported keeping; returns how
    many rows misses and hits evicted, and how many admissions the policy declined."""
    cached: set[int] = set()
    victims = {"miss": 0, "hit": 0, "declined": 0}
    for t, (op, key) in enumerate(sequence):
        if op == REMOVE:
            assert policy.remove(key) == (key in cached)
            cached.discard(key)
        elif policy.lookup(key, t):
            assert key in cached
            victim = int(policy.hit_victim())  # W-TinyLFU's main hits and SLRU's promotions may evict; else -1
            if victim >= 0:
                assert victim in cached and victim != key
                cached.discard(victim)
                victims["hit"] += 1
        else:
            assert key not in cached
            victim = policy.admit(key, t)
            if victim == key:  # declined (Cacheus when libCacheSim's rules leave SR no room); nothing evicted
                victims["declined"] += 1
            else:
                assert victim == -1 or victim in cached
                cached.discard(victim)
                cached.add(key)
                victims["miss"] += victim >= 0
        assert policy.occupancy() == len(cached) <= capacity
        assert [policy.contains(k) for k in range(n_keys)] == [k in cached for k in range(n_keys)]
    return victims


class ListModel:
    """Rows oldest first; ``bits`` holds CLOCK's counters, SIEVE's visited marks or LFU's counts."""

    def __init__(self, kind: str, capacity: int, max_count: int = 1):
        self.kind, self.capacity, self.max_count = kind, capacity, max_count
        self.rows: list[int] = []
        self.bits: dict[int, int] = {}
        self.hand: int | None = None  # SIEVE: the row under the hand

    def request(self, key: int) -> tuple[bool, int]:
        if key in self.bits:
            if self.kind == "lru":
                self.rows.remove(key)
                self.rows.append(key)
            elif self.kind in ("clock", "lfu"):
                self.bits[key] = min(self.bits[key] + 1, self.max_count)
            elif self.kind == "sieve":
                self.bits[key] = 1
            if self.kind == "lfu":  # a use moves the row behind all rows with its new count
                self.rows.remove(key)
                self.rows.append(key)
            return True, -1
        victim = -1
        if len(self.rows) == self.capacity:
            victim = self.evict()
        self.rows.append(key)
        self.bits[key] = 1 if self.kind == "lfu" else 0
        return False, victim

    def evict(self) -> int:
        if self.kind == "clock":
            while self.bits[self.rows[0]] > 0:
                self.bits[self.rows[0]] -= 1
                self.rows.append(self.rows.pop(0))
            victim = self.rows[0]
        elif self.kind == "sieve":
            i = self.rows.index(self.hand) if self.hand is not None else 0
            while self.bits[self.rows[i]]:
                self.bits[self.rows[i]] = 0
                i = (i + 1) % len(self.rows)
            victim = self.rows[i]
            self.hand = self.rows[i + 1] if i + 1 < len(self.rows) else None
        elif self.kind == "lfu":
            victim = min(self.rows, key=lambda k: self.bits[k])  # the first, i.e. oldest, of the least used
        else:
            victim = self.rows[0]
        self.remove(victim)
        return victim

    def remove(self, key: int) -> bool:
        if key not in self.bits:
            return False
        i = self.rows.index(key)
        if self.kind == "sieve" and self.hand == key:
            self.hand = self.rows[i + 1] if i + 1 < len(self.rows) else None
        self.rows.pop(i)
        del self.bits[key]
        return True


@pytest.mark.parametrize("name,params,max_count", [
    ("lru", {}, 1), ("fifo", {}, 1), ("clock", {}, 1), ("clock", {"bits": 2}, 3), ("sieve", {}, 1), ("lfu", {}, 10**9),
])
@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 6), sequence=ops)
def test_matches_list_model(name, params, max_count, capacity, sequence):
    policy = make_policy(name, capacity, PolicyContext(n_keys=N_KEYS), **params)
    model = ListModel(name, capacity, max_count)
    for t, (op, key) in enumerate(sequence):
        if op == REMOVE:
            assert policy.remove(key) == model.remove(key)
            continue
        hit, victim = model.request(key)
        assert policy.lookup(key, t) == hit
        if not hit:
            assert policy.admit(key, t) == victim


def test_lfu_ties_go_to_the_least_recently_used():
    # a hand-worked example: 1 and 2 both reach count 2, 2 last; 3 arrives and the tie is broken
    # towards 1; then 3 (count 1) is the least used and goes first
    policy = make_policy("lfu", 2, PolicyContext(n_keys=8))
    for t, key in enumerate([1, 2]):
        assert not policy.lookup(key, t)
        policy.admit(key, t)
    assert policy.lookup(1, 2) and policy.lookup(2, 3)
    assert policy.admit(3, 4) == 1
    assert policy.admit(4, 5) == 3


def test_hyperbolic_evicts_the_fewest_requests_per_age():
    # capacity 2: 1 enters at t=0 and hits twice (freq 3, age 4 at t=4: 0.75); 2 enters at t=1 (freq 1,
    # age 3: 0.33); 3 evicts 2. Then 2 returns at t=5, and 3 (1/1) outscores 1 (3/5): 1 goes.
    # 64 samples of two slots miss one with chance 2**-64.
    policy = make_policy("hyperbolic", 2, PolicyContext(n_keys=8))
    policy.admit(1, 0)
    policy.admit(2, 1)
    assert policy.lookup(1, 2) and policy.lookup(1, 3)
    assert policy.admit(3, 4) == 2
    assert policy.admit(2, 5) == 1


def test_lecar_ghost_of_lru_lowers_lru_weight():
    # capacity 2, w_lru = 1 (LRU wins every disagreement): 1 is used twice, 2 once; 3 makes LRU pick 1
    # and LFU pick 2, so 1 goes to LRU's ghosts at t=3. 1 again at t=4 (age 1) cuts w_lru to
    # exp(-0.45 * dr) with dr = 0.005 ** (1/2), then both are normalised; then both experts pick 2.
    policy = make_policy("lecar", 2, PolicyContext(n_keys=8), lru_weight=1.0)
    policy.admit(1, 0)
    assert policy.lookup(1, 1)
    policy.admit(2, 2)
    assert policy.admit(3, 3) == 1
    assert not policy.contains(1) and not policy.remove(1)
    assert policy.admit(1, 4) == 2
    w_lru = math.exp(-0.45 * 0.005 ** 0.5) + 1e-10
    total = w_lru + 0.5 + 2e-10
    assert policy.state[lecar.WEIGHTS][lecar.W_LRU] == pytest.approx(w_lru / total, rel=1e-12)
    assert policy.state[lecar.WEIGHTS][lecar.W_LFU] == pytest.approx((0.5 + 1e-10) / total, rel=1e-12)


def seeded_draws(seed: int):
    """The draws of a policy built with ``seed`` (`engramtier.cache.policies._draws`), one by one."""
    counter = 0

    def draw(n: int) -> int:
        nonlocal counter
        counter += 1
        return int(xxh64_u64(np.uint64(counter), np.uint64(seed)) % np.uint64(n))

    return draw


@pytest.mark.parametrize("capacity", [2, 3, 4, 7, 16])
def test_cacheus_answers_as_its_plain_model(capacity):
    """Every lookup, victim, removal and the contents, against tests/cacheus_model.py given the same draws,
    over Zipf requests on few rows (so rows come back from H and ghosts) with removals."""
    n_keys = 3 * capacity + 8
    for seed in range(3):
        rng = np.random.default_rng(seed)
        keys = zipf_keys(2500, n_keys, 0.8, rng, shuffle=True).tolist()
        removals = (rng.random(len(keys)) < 0.05).tolist()
        policy = make_policy("cacheus", capacity, PolicyContext(n_keys=n_keys), seed=seed)
        model = CacheusModel(capacity, seeded_draws(seed))
        for t, (key, removal) in enumerate(zip(keys, removals, strict=True)):
            if removal:
                assert policy.remove(key) == model.remove(key), (seed, t)
                continue
            hit = policy.lookup(key, t)
            assert hit == model.lookup(key), (seed, t)
            assert (policy.hit_victim() if hit else policy.admit(key, t)) == (
                model.last_hit_victim if hit else model.admit(key)), (seed, t)
            assert policy.occupancy() == len(model.held()) <= capacity
        assert {k for k in range(n_keys) if policy.contains(k)} == model.held()
        assert policy.state[cacheus.WEIGHTS][cacheus.W_LRU] == pytest.approx(model.w_lru, rel=1e-12)


def test_cacheus_grows_sr_when_a_new_row_returns_from_history():
    # 3 rows: SR and R 1 row each. 1, 25 and 13 pass through SR (each pushing the one before to H); 25
    # returns from H into R, and having been new it grows SR to min(1 + 1, 2 cached - 1) = 1 and R to 3 - 1
    # = 2, so 22 returning later joins 25 in R instead of demoting it: 3 rows held, where the halves alone
    # would hold 2 (and 22's return sets SR to min(1 + 1, 3 - 1) = 2, R to 1). libCacheSim 0.3.5 holds
    # 1, 1, 1, 2, 2, 2, 2, 3 rows on this sequence.
    policy = make_policy("cacheus", 3, PolicyContext(n_keys=40))
    held = []
    for t, key in enumerate([1, 25, 13, 25, 10, 22, 34, 22]):
        assert not policy.lookup(key, t)
        policy.admit(key, t)
        held.append(policy.occupancy())
    assert held == [1, 1, 1, 2, 2, 2, 2, 3]
    assert policy.state[cacheus.ST][cacheus.R_SIZE] == 1 and policy.state[cacheus.ST][cacheus.SR_SIZE] == 2


def test_cacheus_reports_a_second_victim_later():
    # 4 rows, SR and R 2 each. 4, 0, 5, 2 pass through SR (4 and 0 to H); 0 returns to R (SR stays 2: at
    # most 3 cached - 1), 5 hits into R; 4 returns, demoting 0 to SR, and grows SR to 3 (R 1); 2 hits, so
    # R's 5 and 4 fall to SR: R [2], SR [0, 5, 4], all used twice. 1 finds the cache full: SR-LRU names 0,
    # CR-LFU the newest of the least used, 2, and seed 0's draw follows CR-LFU; then 1 overflows SR, which
    # drops 0 too. libCacheSim holds 3 rows; here 0 is pending, held until the next hit reports it.
    policy = make_policy("cacheus", 4, PolicyContext(n_keys=8), seed=0)
    victims = [policy.admit(key, t) for t, key in enumerate([4, 0, 5, 2, 0, 5, 4, 2]) if not policy.lookup(key, t)]
    assert victims == [-1, -1, 4, 0, -1, -1] and policy.occupancy() == 4
    assert not policy.lookup(1, 8) and policy.admit(1, 8) == 2
    assert policy.contains(0) and policy.occupancy() == 4
    assert policy.lookup(5, 9) and policy.hit_victim() == 0
    assert not policy.contains(0) and policy.occupancy() == 3


@pytest.mark.parametrize("capacity", [2, 3, 4, 7, 16])
def test_clockpro_answers_as_its_plain_model(capacity):
    """Every lookup, victim, removal and the contents, against tests/clockpro_model.py, over Zipf requests with
    removals: on twice the capacity's rows, test entries come back and expire and the cold target moves; on
    two rows more than the capacity, hand cascades evict two rows in one admission (the second pending; 2 rows
    never did)."""
    doubles = 0
    for seed, n_keys in enumerate([2 * capacity + 3, 2 * capacity + 3, capacity + 2, capacity + 2]):
        rng = np.random.default_rng(seed)
        keys = zipf_keys(2500, n_keys, 0.6, rng, shuffle=True).tolist()
        removals = (rng.random(len(keys)) < 0.03).tolist()
        policy, model = make_policy("clockpro", capacity, PolicyContext(n_keys=n_keys)), ClockProModel(capacity)
        for t, (key, removal) in enumerate(zip(keys, removals, strict=True)):
            if removal:
                assert policy.remove(key) == model.remove(key), (seed, t)
                continue
            hit = policy.lookup(key, t)
            assert (hit, policy.hit_victim() if hit else policy.admit(key, t)) == model.request(key), (seed, t)
            assert policy.occupancy() == len(model.held()) <= capacity
        assert {k for k in range(n_keys) if policy.contains(k)} == model.held()
        assert policy.state[clockpro.ST][clockpro.COLD_TARGET] == model.cold_target
        doubles += model.double_evictions
    assert doubles > 0 or capacity == 2


def test_clockpro_hands_push_one_another_and_evict_two_rows():
    """3 rows. 4, 1, 0 enter cold; 3 evicts 1 into a test entry; 1 comes back hot (evicting 0), 2 evicts 3
    (0's test entry expires: cold target 2), 0 evicts 4. Then 3's test entry comes back (cold target 3, so hot
    rows may hold 0): HAND_cold evicts 2, and HAND_hot, run for the hot row 1, stands with HAND_test and
    HAND_cold on 0, so it pushes HAND_test, which pushes HAND_cold, which evicts 0 too. 2 is reported, 0 is
    pending, held until the next admission (4 returning, which evicts nothing) reports it. Asked for first,
    0 is a hit, and comes back cold as on PyClockPro's miss (its test entry expired), evicting nothing; 4's
    return then evicts 1."""
    first = [4, 1, 0, 3, 1, 2, 0]
    for then in ([4], [0, 4]):
        policy = make_policy("clockpro", 3, PolicyContext(n_keys=8))
        victims = [policy.admit(key, t) for t, key in enumerate(first) if not policy.lookup(key, t)]
        assert victims == [-1, -1, -1, 1, 0, 3, 4]
        assert not policy.lookup(3, 7) and policy.admit(3, 7) == 2
        assert policy.contains(0) and not policy.contains(2) and policy.occupancy() == 3
        if then == [0, 4]:
            assert policy.lookup(0, 8) and policy.hit_victim() == -1 and policy.occupancy() == 3
            assert not policy.lookup(4, 9) and policy.admit(4, 9) == 1
        else:
            assert not policy.lookup(4, 8) and policy.admit(4, 8) == 0
            assert not policy.contains(0)
        assert policy.occupancy() == 3 and policy.contains(3) and policy.contains(4)


def test_clockpro_refuses_a_cascade_deeper_than_its_stack():
    """The hand stack is sized from the deepest cascades measured (clockpro.py); one deeper is refused in one
    line, not written past the array's end. 40 laps of a loop of 600 rows through 400 nest 141 hand runs (the model's
    count); given a stack of 40 steps, the policy stops there."""
    policy = make_policy("clockpro", 400, PolicyContext(n_keys=600))
    state = list(policy.state)
    state[clockpro.STACK] = np.zeros(40, np.uint8)
    with pytest.raises(EngramTierError, match="hands pushed one another deeper than its stack holds") as err:
        replay(clockpro.ClockPro(tuple(state), 600), np.tile(np.arange(600), 40))
    assert "\n" not in str(err.value)


def test_lhd_starts_from_its_gdsf_like_densities():
    # before any reconfiguration the density of class c at age a is (c + 1) / (a + 1), classes 16..31: a
    # row just admitted is in class 16 (its last-but-one hit age is MAX_AGE), one hit at age 0 in class 31.
    # Ages are accesses >> 10, so all 0 here: 1 (hit) has 32, 2 has 17, and 3 evicts 2, though LRU would
    # evict 1. A tiny cache has no explorer budget; seed 0 samples both slots among its 8 candidates.
    policy = make_policy("lhd", 2, PolicyContext(n_keys=8))
    policy.admit(1, 0)
    assert policy.lookup(1, 1)
    policy.admit(2, 2)
    assert policy.admit(3, 3) == 2
    assert policy.state[lhd.DENSITIES][15, 0] == 32 and policy.state[lhd.DENSITIES][0, 0] == 17


def test_arc_ghost_hit_is_a_miss_that_returns_to_t2():
    # capacity 2: 1 and 2 enter T1; a hit moves 1 to T2; 3 demotes 2, T1's LRU row (|T1| = 1 > p = 0),
    # to ghost list B1. 2 again is a miss (ghosts are not cached) that raises p by max(|B2|/|B1|, 1)
    # to 1 and returns 2 to T2; now |T1| = p, so REPLACE demotes T2's LRU row, 1, to B2.
    policy = make_policy("arc", 2, PolicyContext(n_keys=8))
    policy.admit(1, 0)
    policy.admit(2, 1)
    assert policy.lookup(1, 2)
    assert policy.admit(3, 3) == 2
    assert not policy.contains(2) and not policy.lookup(2, 4)
    assert policy.admit(2, 4) == 1
    assert policy.state[arc.P][0] == 1.0
    assert sorted(k for k in range(8) if policy.contains(k)) == [2, 3]


@pytest.mark.parametrize("name,capacity,params,message", [
    ("clock", 10, {"bits": 9}, "bits must be between 1 and 8"),
    ("twoq", 10, {"in_ratio": 1.0}, "in_ratio must lie in (0, 1)"),
    ("twoq", 3, {}, "use a capacity of at least 4 rows"),
    ("s3fifo", 100, {"small_ratio": 0.0}, "small_ratio must lie in (0, 1)"),
    ("s3fifo", 100, {"move_to_main": 300}, "move_to_main in 0..255"),
    ("s3fifo", 19, {}, "use at least 20 rows"),
    ("wtinylfu", 100, {"window_ratio": 1.0}, "window_ratio must lie in (0, 1)"),
    ("wtinylfu", 99, {}, "use at least 100 rows"),
    ("wtinylfu", 5, {"window_ratio": 0.2}, "a probation segment of 0; both need a row: use at least 6 rows"),
    ("random", 10, {"seed": -1}, "params.seed must be an integer in [0, "),
    ("lruprob", 10, {"seed": 1.5}, "params.seed must be an integer"),
    ("lruprob", 10, {"prob": 1.5}, "params.prob must be a finite number in (0, 1]"),
    ("lruprob", 10, {"prob": 1e-12}, "too small for libCacheSim's int threshold"),
    ("hyperbolic", 10, {"samples": 0}, "params.samples must be an integer in [1, "),
    ("lecar", 10, {"lru_weight": 1.5}, "params.lru_weight must be a finite number in [0, 1]"),
    ("lhd", 10, {"seed": "a"}, "params.seed must be a number"),
    ("slru", 3, {}, "use at least 4 rows or a smaller n_seg"),
    ("clock2qplus", 19, {}, "use at least 20 rows or a larger fifo_ratio"),
    ("clock2qplus", 100, {"fifo_ratio": 1.0}, "params.fifo_ratio must be below 1"),
    ("clock2qplus", 100, {"move_to_main": 1.5}, "params.move_to_main must be an integer in [0, "),
    ("slru", 50, {}, "e.g. 49 or 52 rows"),
    ("slru", 100, {"n_seg": 17}, "n_seg must be an integer from 1 to 16"),
    ("lirs", 199, {}, "199 rows give the HIR queue 1 row (libCacheSim's 1%)"),
    ("lirs", 50, {}, "use at least 200 rows"),
    ("lfuda", 1, {}, "use at least 2 rows"),
    ("cacheus", 1, {}, "use at least 2 rows"),
    ("clockpro", 1, {}, "use at least 2 rows"),
    ("cacheus", 10, {"seed": -1}, "params.seed must be an integer in [0, "),
    ("lruk", 10, {"k": 0}, "k must be an integer from 1 to 64"),
    ("mq", 10, {"n_queue": 0}, "n_queue must be an integer from 1 to 64"),
])
def test_refused_configurations(name, capacity, params, message):
    with pytest.raises(EngramTierError) as err:
        make_policy(name, capacity, PolicyContext(n_keys=1000), **params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_policy_parameters_are_refused_in_one_line():
    with pytest.raises(EngramTierError, match="policy 'clock': unknown parameter\\(s\\) bitz; it takes bits"):
        make_policy("clock", 4, PolicyContext(n_keys=10), bitz=2)


def test_a_built_in_refuses_a_state_of_other_arrays_and_keys_outside_its_table():
    """A built-in is its state and compiled functions of it: a state whose arrays are not the policy's
    (count, dtype or layout) would be read unchecked by them, so it is refused at construction, as is a key
    outside the table at each method."""
    policy = make_policy("arc", 8, PolicyContext(n_keys=100))
    cls = type(policy)
    state = list(policy.state)
    for bad in (state[:-1], [state[0].astype(np.int64), *state[1:]], [np.asfortranarray(np.zeros((2, 2), np.int32)), *state[1:]]):
        with pytest.raises(EngramTierError, match="policy ARC: its state must be") as err:
            cls(tuple(bad), 100)
        assert "\n" not in str(err.value)
    assert cls(tuple(state), 100).occupancy() == 0
    for call in (lambda: policy.lookup(100, 0), lambda: policy.admit(-1, 0), lambda: policy.contains(10**12)):
        with pytest.raises(EngramTierError, match=r"policy ARC: key .* lies outside its keys \[0, 100\)"):
            call()
