"""A step's lookups: its unique rows in first-occurrence order, each with its last request's position.

One forward pass fetches a row once however often its tokens ask for it, so the simulator and the
libCacheSim lookup export replay this, not the raw requests; the runtime computes the same per step
through a hash map sized by the step (`engramtier.tiers.step.dedup`, tested equal), since its keys are
a table's row ids. It lives in `trace/` because both read it and `trace/` is upstream of `cache/`.
"""

from numba import njit


@njit(nogil=True, cache=True)
def unique_per_step(rows, step_starts, t0, stamp, first_index, keys_out, ts_out, starts_out):
    """Each step's unique ``rows`` in first-occurrence order into ``keys_out``, with the trace position
    (``t0`` + index) of the row's last request in the step into ``ts_out``; ``starts_out`` gets each
    step's first output index, then the total, which is returned.

    ``stamp`` (one int64 per table row, -1 at first, kept across calls) remembers the running index of
    each row's latest output; ``first_index`` is the number of rows output by earlier calls. A row was
    already seen in this step exactly when its stamp is at least the index of the step's first output,
    and then the stamp says where to record the later position: no per-step reset, nothing allocated.
    """
    n = 0
    for s in range(step_starts.size - 1):
        starts_out[s] = n
        step_first = first_index + n
        for i in range(step_starts[s], step_starts[s + 1]):
            k = rows[i]
            j = stamp[k]
            if j >= step_first:
                ts_out[j - first_index] = t0 + i
            else:
                stamp[k] = first_index + n
                keys_out[n] = k
                ts_out[n] = t0 + i
                n += 1
    starts_out[step_starts.size - 1] = n
    return n
