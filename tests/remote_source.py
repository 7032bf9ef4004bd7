"""The table the remote-tier tests populate their stores from: seeded random rows, and a crash on demand."""

import numpy as np

from engramtier.tiers.lmdb_table import RandomRows

N_ROWS = 5000
ROW_BYTES = 32  # bf16[16]


class SourceRows:
    """A table with ``read(ids, out)`` from seeded random rows; ``fail_after`` batches it raises (a crash)."""

    def __init__(self, fail_after=None):
        self.rows = RandomRows(N_ROWS, "bf16", ROW_BYTES // 2, seed=5)
        self.n_table_rows, self.row_bytes = N_ROWS, self.rows.row_bytes
        self.manifest = self.rows.manifest
        self.fail_after, self.batches = fail_after, 0

    def read(self, ids, out):
        if self.fail_after is not None and self.batches == self.fail_after:
            raise RuntimeError("source crashed")
        self.batches += 1
        self.rows.rows(np.asarray(ids, np.int64), out)

    def expected(self, ids):
        out = np.empty((len(ids), self.row_bytes), np.uint8)
        self.rows.rows(np.asarray(ids, np.int64), out)
        return out
