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
