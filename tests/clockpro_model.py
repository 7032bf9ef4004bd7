"""CLOCK-Pro as PyClockPro runs it (the rules `engramtier.cache.policies.clockpro` states), in plain
Python: one ring of entries (resident hot, resident cold and non-resident test rows) linked by two dicts,
three hands that are entries of it, and recursion where one hand pushes another. The compiled policy,
which unrolls that recursion into an explicit stack, must give the same answers, operation by operation.
"""

from __future__ import annotations

HOT, COLD, TEST = "hot", "cold", "test"


class ClockProModel:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.cold_target = capacity  # rows the cold entries may hold; hot ones get the rest
        self.kind: dict[int, str] = {}
        self.counts = {HOT: 0, COLD: 0, TEST: 0}
        self.referenced: set[int] = set()
        self.nxt: dict[int, int] = {}  # the ring, in the direction the hands move
        self.prv: dict[int, int] = {}
        self.hand_hot = self.hand_cold = self.hand_test = None
        self.evicted: list[int] = []  # rows made test entries during the current admission
        self.pending: list[int] = []  # evicted beyond the one an admission reports, still held; oldest first
        self.last_hit_victim = -1
        # what the compiled policy's fixed arrays must hold: the most hand runs nested in one another, the
        # most entries in the ring; and how many admissions evicted more than one row
        self.deepest = self.most_entries = self.double_evictions = 0
        self._depth = 0

    def resident(self, key: int) -> bool:
        return self.kind.get(key, TEST) != TEST

    def held(self) -> set[int]:
        return {key for key in self.kind if self.resident(key)} | set(self.pending)

    def request(self, key: int) -> tuple[bool, int]:
        """lookup, then admit on a miss: (hit, the row reported evicted or -1)."""
        return (True, self.last_hit_victim) if self.lookup(key) else (False, self.admit(key))

    def lookup(self, key: int) -> bool:
        self.last_hit_victim = -1
        if key in self.pending:  # still held, so a hit; the row comes back as on PyClockPro's miss
            self.pending.remove(key)
            self.last_hit_victim = self.admit(key)
            return True
        if not self.resident(key):
            return False
        self.referenced.add(key)
        if self.pending:
            self.last_hit_victim = self.pending.pop(0)
        return True

    def admit(self, key: int) -> int:
        self.evicted = []
        if key in self.kind:  # a test entry: its row came back within its test period
            self.cold_target = min(self.cold_target + 1, self.capacity)
            self._unlink(key)
            kind = HOT
        else:
            kind = COLD
        while self.counts[HOT] + self.counts[COLD] >= self.capacity:
            self._run(self._cold_step)
        self._link(key, kind)
        self.most_entries = max(self.most_entries, len(self.kind))
        self.double_evictions += len(self.evicted) > 1
        self.pending += self.evicted[1:]
        if self.evicted:
            return self.evicted[0]
        return self.pending.pop(0) if self.pending else -1

    def remove(self, key: int) -> bool:
        if key in self.pending:
            self.pending.remove(key)
            return True
        if not self.resident(key):
            return False
        self.referenced.discard(key)
        self._unlink(key)
        return True

    # the ring: a new entry goes just behind HAND_hot (the last entry every hand reaches); HAND_cold, if
    # it stood on HAND_hot's entry, takes the new one. A hand on an entry that leaves steps back to the one
    # before it, so that its next step reaches the entry after.

    def _mark(self, key: int, kind: str | None):
        """Make ``key``'s entry ``kind`` (None: no entry), keeping the counts."""
        if key in self.kind:
            self.counts[self.kind.pop(key)] -= 1
        if kind is not None:
            self.kind[key] = kind
            self.counts[kind] += 1

    def _link(self, key: int, kind: str):
        self._mark(key, kind)
        if self.hand_hot is None:
            self.nxt[key] = self.prv[key] = key
            self.hand_hot = self.hand_cold = self.hand_test = key
            return
        after, before = self.hand_hot, self.prv[self.hand_hot]
        self.nxt[before], self.prv[key], self.nxt[key], self.prv[after] = key, before, after, key
        if self.hand_cold == self.hand_hot:
            self.hand_cold = key

    def _unlink(self, key: int):
        before, after = self.prv.pop(key), self.nxt.pop(key)
        self._mark(key, None)
        if before == key:
            self.hand_hot = self.hand_cold = self.hand_test = None
            return
        self.nxt[before], self.prv[after] = after, before
        self.hand_hot, self.hand_cold, self.hand_test = (
            before if hand == key else hand for hand in (self.hand_hot, self.hand_cold, self.hand_test))

    # the hands

    def _run(self, step):
        self._depth += 1
        self.deepest = max(self.deepest, self._depth)
        step()
        self._depth -= 1

    def _cold_step(self):
        """A referenced cold row turns hot; an unreferenced one is evicted into a test entry, and then
        HAND_test runs while test entries outnumber the capacity. The hand moves one entry; then HAND_hot
        runs while hot rows exceed their share."""
        key = self.hand_cold
        if self.kind[key] == COLD:
            if key in self.referenced:
                self.referenced.discard(key)
                self._mark(key, HOT)
            else:
                self._mark(key, TEST)
                self.evicted.append(key)
                while self.counts[TEST] > self.capacity:
                    self._run(self._test_step)
        self.hand_cold = self.nxt[self.hand_cold]
        while self.counts[HOT] > self.capacity - self.cold_target:
            self._run(self._hot_step)

    def _test_step(self):
        """HAND_cold moves first if it stands here. A test entry here expires, and the cold rows' share
        shrinks by one (to 1 at least). The hand moves one entry."""
        if self.hand_test == self.hand_cold:
            self._run(self._cold_step)
        key = self.hand_test
        if self.kind[key] == TEST:
            self._unlink(key)
            self.cold_target = max(self.cold_target - 1, 1)
        self.hand_test = self.nxt[self.hand_test]

    def _hot_step(self):
        """HAND_test moves first if it stands here. A referenced hot row loses its reference; an
        unreferenced one turns cold. The hand moves one entry."""
        if self.hand_hot == self.hand_test:
            self._run(self._test_step)
        key = self.hand_hot
        if self.kind[key] == HOT:
            if key in self.referenced:
                self.referenced.discard(key)
            else:
                self._mark(key, COLD)
        self.hand_hot = self.nxt[self.hand_hot]
