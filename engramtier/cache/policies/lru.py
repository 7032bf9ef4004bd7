"""LRU: evict the row whose last use is oldest.

Rows live in ``capacity`` slots linked into a circular doubly linked list whose head is the most
recently used slot, so ``prev(head)`` is the LRU victim. Slot arrays are capacity-sized and stay in
the CPU cache; only ``slot_of`` (one int32 per table row) is touched at random.
"""

import numpy as np
from numba import int32, int64
from numba.experimental import jitclass

from engramtier.cache.policy import PolicyContext, register


@jitclass([
    ("capacity", int64),
    ("size", int64),
    ("head", int64),
    ("slot_of", int32[:]),
    ("key_of", int64[:]),
    ("prev", int32[:]),
    ("next", int32[:]),
])
class LRU:
    def __init__(self, capacity, n_keys):
        self.capacity = capacity
        self.size = 0
        self.head = -1
        self.slot_of = np.full(n_keys, -1, np.int32)
        self.key_of = np.full(capacity, -1, np.int64)
        self.prev = np.zeros(capacity, np.int32)
        self.next = np.zeros(capacity, np.int32)

    def _unlink(self, s):
        p = self.prev[s]
        n = self.next[s]
        self.next[p] = n
        self.prev[n] = p
        if self.head == s:
            self.head = n if n != s else -1

    def _push_head(self, s):
        h = self.head
        if h < 0:
            self.prev[s] = s
            self.next[s] = s
        else:
            p = self.prev[h]
            self.prev[s] = p
            self.next[s] = h
            self.next[p] = s
            self.prev[h] = s
        self.head = s

    def lookup(self, key, t):
        s = self.slot_of[key]
        if s < 0:
            return False
        if s != self.head:
            self._unlink(s)
            self._push_head(s)
        return True

    def admit(self, key, t):
        victim = -1
        if self.size < self.capacity:
            s = self.size
            self.size += 1
            self._push_head(s)
        else:
            s = self.prev[self.head]
            victim = self.key_of[s]
            self.slot_of[victim] = -1
            self.head = s  # in a circular list the LRU slot becomes the head by moving the head
        self.key_of[s] = key
        self.slot_of[key] = s
        return victim

    def remove(self, key):
        s = self.slot_of[key]
        if s < 0:
            return False
        self._unlink(s)
        self.slot_of[key] = -1
        # keep slots dense: move the last slot into the hole
        last = self.size - 1
        if s != last:
            moved = self.key_of[last]
            self.key_of[s] = moved
            self.slot_of[moved] = s
            p = self.prev[last]
            n = self.next[last]
            if p == last:  # `last` was alone in the list
                self.prev[s] = s
                self.next[s] = s
            else:
                self.prev[s] = p
                self.next[s] = n
                self.next[p] = s
                self.prev[n] = s
            if self.head == last:
                self.head = s
        self.key_of[last] = -1
        self.size -= 1
        return True

    def contains(self, key):
        return self.slot_of[key] >= 0

    def occupancy(self):
        return self.size


@register("lru")
def build(capacity: int, ctx: PolicyContext) -> LRU:
    return LRU(capacity, ctx.n_keys)
