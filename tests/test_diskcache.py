"""Compiled policy loops are kept on disk (`engramtier.cache.diskcache`): of two processes wanting the
engine's drivers and the replay loop at once, one compiles and the other waits and loads them, with
the same results; the key tells policies apart, and changes when the source of an operation outside
the package changes, or for the functions those loops inline (`inlined`), any source of the package.

The reuse is between processes, so those two cases run in subprocesses, with numba's cache in the
test's own folder (NUMBA_CACHE_DIR)."""

import importlib
import json
import os
import subprocess
import sys

from numba import njit, types
from numba.core.registry import cpu_target

from engramtier.cache import diskcache

RUN = """
import json, sys
import numpy as np
from engramtier.cache.engine import Engine, drivers_for
from engramtier.cache.policy import PolicyContext, _KERNELS, make_policy, replay

name = sys.argv[1]
keys = np.random.default_rng(0).zipf(1.2, 5_000) % 500
ctx = PolicyContext(n_keys=500)
hits = replay(make_policy(name, 50, ctx), keys)
policy = make_policy(name, 50, ctx)
engine = Engine([policy, make_policy("lru", 100, ctx)], "inclusive", 500)
served = engine.feed(keys, np.arange(keys.size), np.array([0, keys.size]))
policy.lookup(0, 0)
compiled = [_KERNELS[type(policy)], drivers_for(policy, 500)[1], type(policy)._lookup]
print(json.dumps({"hits": hits, "served": served[:, 0].tolist(),
                  "loaded": [sum(f.stats.cache_hits.values()) for f in compiled],
                  "compiled": [sum(f.stats.cache_misses.values()) for f in compiled]}))
"""


def _start(policy, cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    return subprocess.Popen([sys.executable, "-c", RUN, policy], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _result(process):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out)


def test_one_process_compiles_what_others_load_and_policies_keep_their_own(tmp_path):
    pair = [_result(p) for p in [_start("lru", tmp_path), _start("lru", tmp_path)]]  # at once
    # each loop compiled by one of them, the other waiting for that compile and loading it; the method's
    # operation loaded by both, as the first loop's compile saved it (`inlined`)
    assert [a + b for a, b in zip(pair[0]["compiled"], pair[1]["compiled"], strict=True)] == [1, 1, 0]
    assert [a + b for a, b in zip(pair[0]["loaded"], pair[1]["loaded"], strict=True)] == [1, 1, 2]
    assert pair[1]["hits"] == pair[0]["hits"] and pair[1]["served"] == pair[0]["served"]
    other = _result(_start("fifo", tmp_path))  # closures over FIFO's lookup: compiled anew
    assert other["compiled"] == [1, 1, 0] and other["loaded"] == [0, 0, 1] and other["hits"] != pair[0]["hits"]


def _loop_over(op):
    def loop(keys):
        n = 0
        for k in keys:
            n += op(k)
        return n
    return loop


def _key(op):
    diskcache._source_hash.cache_clear()  # as a new process would hash the source
    loop = njit(_loop_over(op))
    return diskcache.ClosureCache(loop.py_func)._index_key((types.int64[:],), cpu_target.target_context.codegen())


def test_the_key_follows_the_operations_and_the_source_of_a_users_module(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / "user_ops_for_key.py"
    source.write_text("from numba import njit\n\n@njit(inline='always')\ndef op(k):\n    return k + 1\n")
    module = importlib.import_module("user_ops_for_key")
    monkeypatch.setitem(sys.modules, "user_ops_for_key", module)  # forgotten after the test
    key = _key(module.op)
    assert _key(njit(inline="always")(module.op.py_func)) == key  # another dispatcher of the same function
    assert _key(njit(inline="always")(_twice)) != key
    source.write_text("from numba import njit\n\n@njit(inline='always')\ndef op(k):\n    return k + 2\n")
    assert _key(module.op) != key


def _twice(k):
    return 2 * k


def test_an_inlined_function_is_compiled_again_after_any_edit_of_the_package(monkeypatch):
    """LLVM copies an inlined function's callees into it, so an edit of any module it may reach (not only
    its own file, which is all numba's own cache checks) must miss its cached code."""
    op = diskcache.inlined(_twice)
    assert op.targetoptions["forceinline"] and not op.targetoptions["_nrt"]
    codegen = cpu_target.target_context.codegen()
    key = op._cache._index_key((types.int64,), codegen)
    assert diskcache.inlined(_twice)._cache._index_key((types.int64,), codegen) == key  # the same in any process
    monkeypatch.setattr(diskcache, "_source_hash", lambda path: "another edit")
    assert op._cache._index_key((types.int64,), codegen) != key
