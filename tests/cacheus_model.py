"""Cacheus as libCacheSim 0.3.5 runs it (cache/eviction/Cacheus.c, SR_LRU.c, CR_LFU.c, rows of size 1), in
plain Python lists and dicts, statement by statement, with the pending rows of
`engramtier.cache.policies.cacheus` on top (the rows a request evicted beyond the one it can report). The
compiled policy must give the same answers, operation by operation, given the same draws.

``draw(n)`` stands for libCacheSim's ``next_rand() % n``. SR-LRU's marks travel as libCacheSim 0.3.5's do:
a row's new mark goes with it from H back to R (which grows SR); every other move makes a fresh, unmarked
copy, so a demoted row's mark never reaches R. Its hit counts agree with libCacheSim's in distribution
(the tests), which the source before that fix (marks never carried) does not.
"""

from __future__ import annotations

import math


class CacheusModel:
    def __init__(self, capacity: int, draw):
        self.capacity, self.draw = capacity, draw
        self.r_size = self.sr_size = capacity // 2
        self.ghost_max = capacity // 2
        self.r: list[int] = []  # oldest first
        self.sr: list[int] = []
        self.h: list[int] = []
        self.new: set[int] = set()  # rows in SR or H marked new
        self.demoted: set[int] = set()  # rows in SR marked demoted
        self.c_demoted = self.c_new = 0
        self.count: dict[int, int] = {}  # CR-LFU's count of a cached row, and the count H keeps
        self.by_use: list[int] = []  # cached rows by their last move into their count's bucket, oldest first
        self.ghosts: dict[int, list[int]] = {1: [], 2: []}  # 1: SR-LRU's victims, 2: CR-LFU's; oldest first
        self.pending: list[int] = []  # evicted, not reported yet; oldest first
        self.w_lru = self.w_lfu = 0.5
        self.lr = 0.001 + draw(1000) / 1000
        self.lr_previous = self.hit_rate_previous = 0.0
        self.unlearn = self.num_hit = self.n_req = 0
        self.lr_due = False
        self.last_hit_victim = -1

    def held(self) -> set[int]:
        return set(self.r) | set(self.sr) | set(self.pending)

    def request(self, key: int) -> tuple[bool, int]:
        """lookup, then admit on a miss: (hit, the row reported evicted or -1)."""
        if self.lookup(key):
            return True, self.last_hit_victim
        return False, self.admit(key)

    def lookup(self, key: int) -> bool:
        self._learning_rate_due()
        self.last_hit_victim = -1
        self.n_req += 1
        if key not in self.held():
            self._history_check(key)
            self.lr_due = self.n_req % self.capacity == 0
            return False
        self.num_hit += 1
        if key not in self.pending:
            if key in self.r:
                self.r.remove(key)
            else:
                self.sr.remove(key)
                self.new.discard(key)
                self.demoted.discard(key)  # libCacheSim's C_demoted is not decremented
                while len(self.r) + 1 > self.r_size:
                    self._demote_r_oldest()
            self.r.append(key)
            self.count[key] += 1
            self.by_use.remove(key)
            self.by_use.append(key)
            self.last_hit_victim = self.pending.pop(0) if self.pending else -1
        if self.n_req % self.capacity == 0:
            self._update_learning_rate()
        return True

    def admit(self, key: int) -> int:
        first = -1
        if len(self.r) + len(self.sr) + 1 > self.capacity:
            first = self._evict()
        in_history = key in self.h
        if (self.r_size if in_history else self.sr_size) < 1:
            if first >= 0:
                self.pending.append(first)
            self._learning_rate_due()
            return key
        for ghosts in self.ghosts.values():
            if key in ghosts:
                ghosts.remove(key)
        self.by_use.append(key)
        if in_history:
            self.count[key] += 1
            self.h.remove(key)
            while len(self.r) + 1 > self.r_size:
                self._demote_r_oldest()
            self.r.append(key)
            if key in self.new:
                self.new.discard(key)
                quotient = self.c_demoted // self.c_new
                delta = 1.0 if 1.0 > quotient + 0.5 else quotient + 0.5
                cached = len(self.r) + len(self.sr)
                self.sr_size = cached - 1 if self.sr_size + delta > cached - 1 else int(self.sr_size + delta)
                self.r_size = self.capacity - self.sr_size
        else:
            self.count[key] = 1
            self.sr.append(key)
            self.new.add(key)
        while len(self.sr) > self.sr_size:
            victim = self.sr[0]
            self._to_history(victim)
            if first < 0:
                first = victim
            else:
                self.pending.append(victim)
        self._trim_history()
        self._learning_rate_due()
        if first < 0 and self.pending:
            first = self.pending.pop(0)
        return first

    def remove(self, key: int) -> bool:
        if key in self.pending:
            self.pending.remove(key)
            return True
        if key not in self.r and key not in self.sr:
            return False
        self._to_history(key)
        self._trim_history()
        return True

    def _demote_r_oldest(self):
        row = self.r.pop(0)
        self.sr.append(row)
        self.demoted.add(row)
        self.c_demoted += 1

    def _to_history(self, row):
        (self.r if row in self.r else self.sr).remove(row)
        self.by_use.remove(row)
        if row in self.new:
            self.c_new += 1
        if row in self.demoted:
            self.c_demoted -= 1
            self.demoted.discard(row)
        self.h.append(row)

    def _trim_history(self):
        while len(self.h) >= self.capacity:
            row = self.h.pop(0)
            self.new.discard(row)

    def experts(self) -> tuple[int, int]:
        """The victims SR-LRU and CR-LFU name: SR's oldest row (R's when SR is empty), and the newest of the
        least used."""
        least = min(self.count[row] for row in self.by_use)
        return self.sr[0] if self.sr else self.r[0], [row for row in self.by_use if self.count[row] == least][-1]

    def _evict(self) -> int:
        by_lru, by_lfu = self.experts()
        expert = 1 if self.draw(100) / 100 < self.w_lru else 2
        victim = by_lru if expert == 1 else by_lfu
        self._to_history(victim)
        self._trim_history()
        if by_lru != by_lfu and self.ghost_max > 0:
            ghosts = self.ghosts[expert]
            ghosts.append(victim)
            if len(ghosts) > self.ghost_max:
                ghosts.pop(0)
        return victim

    def _history_check(self, key):
        if key in self.ghosts[1]:
            self.w_lru *= math.exp(-self.lr)
        elif key in self.ghosts[2]:
            self.w_lfu *= math.exp(-self.lr)
        self.w_lru = self.w_lru / (self.w_lru + self.w_lfu)
        self.w_lfu = 1 - self.w_lru
        for ghosts in self.ghosts.values():
            if key in ghosts:
                ghosts.remove(key)

    def _learning_rate_due(self):
        if self.lr_due:
            self.lr_due = False
            self._update_learning_rate()

    def _update_learning_rate(self):
        current = float(self.num_hit // self.capacity)  # libCacheSim divides integers
        delta_hit_rate = current - self.hit_rate_previous
        delta_lr = self.lr - self.lr_previous
        self.lr_previous, self.hit_rate_previous = self.lr, current
        if delta_lr != 0:
            sign = 1 if delta_hit_rate / delta_lr > 0 else -1
            step = self.lr + sign * abs(self.lr * delta_lr)
            self.lr = step if step > 0.001 else 0.0001
            self.unlearn = 0
        elif current == 0 or delta_hit_rate <= 0:
            self.unlearn += 1
        elif self.unlearn >= 10:
            self.unlearn = 0
            self.lr = 0.001 + self.draw(1000) / 1000
        self.num_hit = 0
