"""A plain-Python LRU whose first build anywhere kills its own process: a worker lost mid-sweep."""

import os

from reference_policies import PyLRU

MARKER = "ENGRAMTIER_TEST_DIE_ONCE"  # names the file whose absence means "not died yet"


class LRUThatDiesOnce(PyLRU):
    """`PyLRU`, except that the first build in a process whose environment names a marker file that does
    not exist yet creates the file and ends the process at once (as a lost node would)."""

    def __init__(self, capacity):
        marker = os.environ.get(MARKER)
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        super().__init__(capacity)
