"""Plain-Python policies that tests use as independent references (and to run the Python driver path)."""

from collections import OrderedDict


class PyLRU:
    """A plain-Python LRU with the policy interface (OrderedDict: first = least recently used)."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.rows = OrderedDict()

    def lookup(self, key, t):
        if key not in self.rows:
            return False
        self.rows.move_to_end(key)
        return True

    def admit(self, key, t):
        victim = -1
        if len(self.rows) == self.capacity:
            victim, _ = self.rows.popitem(last=False)
        self.rows[key] = None
        return victim

    def remove(self, key):
        return self.rows.pop(key, 0) is None

    def contains(self, key):
        return key in self.rows

    def occupancy(self):
        return len(self.rows)

    def hit_victim(self):
        return -1


def python_cache_hits(keys, capacity: int, recency: bool) -> int:
    """Hits of a plain demand cache over ``keys``: LRU when ``recency``, else FIFO."""
    cache: OrderedDict = OrderedDict()
    hits = 0
    for k in keys.tolist():
        if k in cache:
            hits += 1
            if recency:
                cache.move_to_end(k)
        else:
            cache[k] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits
