"""Fuzzing the files users hand us: bytes of trace files, LMDB and flat tables and TOML files flipped,
overwritten and truncated, and their values replaced with values of the wrong type or range. Every
consumer must either give exactly the unmodified file's result or refuse with an `EngramTierError`
(one line at the command line), never another exception, a crash or a wrong result.

Traces, flat tables and TOML run in-process (fast, so hypothesis can try many). LMDB tables are
memory-mapped by a C library, so damaged ones are read by a worker process, where a crash shows as a
negative exit code. A few damaged files also go through the real command line in a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import select
import struct
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engramtier.analysis.config import load_config
from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.mrc import KeyStream, lru_mrc
from engramtier.cache.simulator import simulate
from engramtier.cli import main
from engramtier.errors import EngramTierError
from engramtier.model.hashing import HashConfig, NgramHasher
from engramtier.model.rows import RowFormat
from engramtier.model.table import open_table, save_table
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.stats import trace_stats
from engramtier.trace.tracefile import TraceReader, load_trace, save_trace

ENGRAMTIER = [sys.executable, "-m", "engramtier.cli"]


def fuzz(examples: int):
    """Hypothesis settings: no deadline (first calls compile kernels), fixtures reused across examples."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def damage(draw, size: int, at: st.SearchStrategy | None = None):
    """(kind, offset, payload): flip one byte, overwrite a run of bytes, or truncate; at an offset
    drawn from ``at`` (default: anywhere)."""
    kind = draw(st.sampled_from(["flip", "overwrite", "truncate"]))
    offset = draw(at if at is not None else st.integers(0, size - 1))
    if kind == "flip":
        return kind, offset, bytes([draw(st.integers(1, 255))])
    if kind == "overwrite":
        return kind, offset, draw(st.binary(min_size=1, max_size=32))
    return kind, offset, b""


def damaged(data: bytes, how) -> bytes:
    kind, offset, payload = how
    if kind == "flip":
        return data[:offset] + bytes([data[offset] ^ payload[0]]) + data[offset + 1 :]
    if kind == "overwrite":
        return (data[:offset] + payload + data[offset + len(payload) :])[: len(data)]
    return data[:offset]


ODD_VALUES = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                       st.text(max_size=8), st.lists(st.integers(-5, 5), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.none())


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: exit code, stdout, stderr. Any exception but SystemExit escapes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_refused(code: int, err: str) -> None:
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err


def refused_or(work):
    """``work()``, or None when it is refused in one line; any other exception fails the test."""
    try:
        return work()
    except EngramTierError as err:
        assert "\n" not in str(err), err
        return None


# --- trace files -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "small.trace"
    assert main(["trace", "--synthetic-zipf", "1.0", "--vocab", "1000", "--tokens", "5000", "--table-size", "1009",
                 "--layers", "1", "--heads", "2", "--seq-len", "500", "--chunk-rows", "4096", "-o", str(path),
                 "--quiet"]) == 0
    return path


STORE = {"tier": [{"name": "dram", "capacity": 300, "policy": "lru", "model": "dram"}, {"name": "nvme", "model": "nvme"}]}


def trace_results(path: Path, folder: Path) -> tuple[dict, bytes, list, dict] | None:
    """What `stats --json` and `export` make of the trace at ``path`` through the command line, and
    the exact LRU curve and a simulation from the library; None when it is refused."""
    stats_json, exported = folder / "stats.json", folder / "export.bin"
    stats_json.unlink(missing_ok=True)
    exported.unlink(missing_ok=True)
    code, _, err = run_main(["stats", str(path), "--json", str(stats_json)])
    if code != 0:
        assert_refused(code, err)
        assert not stats_json.exists()
        return None
    code, _, err = run_main(["export", str(path), "--format", "oracle", "--stream", "lookups", "-o", str(exported)])
    if code != 0:
        assert_refused(code, err)
        assert not exported.exists()
        return None

    def library():
        with TraceReader(path) as trace:
            curve = lru_mrc(KeyStream.of_trace(trace), [1, 10, 100, 1000])
            sim = simulate(trace, Hierarchy.from_dict(STORE), compute_window_s=1e-4, progress=False)
            return curve.miss_ratios.tolist(), sim.summary()

    found = refused_or(library)
    if found is None:
        return None
    stats = json.loads(stats_json.read_text())
    stats["trace"] = None  # its path
    return stats, exported.read_bytes(), *found


@pytest.fixture(scope="module")
def trace_want(trace_file, tmp_path_factory):
    want = trace_results(trace_file, tmp_path_factory.mktemp("want"))
    assert want is not None
    return want


@fuzz(100)
@given(data=st.data())
def test_damaged_trace_is_refused_or_reads_identically(trace_file, trace_want, tmp_path, data):
    original = trace_file.read_bytes()
    bad = tmp_path / "bad.trace"
    bad.write_bytes(damaged(original, data.draw(damage(len(original)))))
    got = trace_results(bad, tmp_path)
    assert got is None or got == trace_want  # only a change that alters nothing the readers use may pass


META_KEYS = ("subtable_sizes", "layer_ids", "n_heads", "max_ngram", "rows_per_token", "fingerprint")


@fuzz(40)
@given(data=st.data())
def test_trace_meta_of_the_wrong_kind_is_refused_or_read(trace_file, tmp_path, data):
    """A trace whose meta (checksummed, so written so by some tool) holds odd values: the statistics
    and the simulator use it, and must refuse it or read the rows exactly as before."""
    trace = load_trace(trace_file)
    meta = dict(trace.meta)
    for key in data.draw(st.lists(st.sampled_from(META_KEYS), min_size=1, max_size=3, unique=True)):
        meta[key] = data.draw(ODD_VALUES)
    path = tmp_path / "meta.trace"
    save_trace(RowTrace(trace.rows, trace.step_starts, trace.n_table_rows, trace.row_bytes, meta), path)
    with TraceReader(path) as reader:
        stats = refused_or(lambda: trace_stats(reader).stats_dict())
        if stats is not None:
            assert stats["requests"] == trace.n_rows and stats["unique_rows"] == trace.n_distinct
        sim = refused_or(lambda: simulate(reader, Hierarchy.from_dict(STORE), compute_window_s=1e-4, progress=False))
        if sim is not None:
            assert sim.summary()["requests"] == simulate(trace, Hierarchy.from_dict(STORE), compute_window_s=1e-4,
                                                         progress=False).summary()["requests"]


# --- TOML files --------------------------------------------------------------------------------------

EXPERIMENT = textwrap.dedent("""\
    [trace]
    source = "zipf"
    tokens = 2000
    layers = [1, 15]
    heads = 4
    table_size = 10007
    seed = 3
    [hierarchy]
    mode = "inclusive"
    [[hierarchy.tier]]
    name = "gpu"
    capacity = "64KiB"
    policy = "s3fifo"
    params = { small_ratio = 0.1 }
    model = "hbm"
    [[hierarchy.tier]]
    name = "dram"
    capacity = 2000
    policy = "lru"
    model = { latency_s = 1e-7, bandwidth_Bps = 5e10, parallelism = 64 }
    [[hierarchy.tier]]
    name = "nvme"
    model = "nvme"
    [timing]
    compute_per_token_s = 50e-6
    window_per_token_s = 3e-6
    [sweep]
    policies = ["lru", "belady"]
    sizes = [100, "1MiB"]
    tier_sizes = { gpu = ["32KiB"], dram = [1000, 4000] }
    cxl_latencies_ns = [170, 400]
    cxl_capacity = "256KiB"
    shards_rate = 0.1
    [cost]
    stall_budget = 0.05
    usd_per_gb = { hbm = 15.0 }
    """)
STAGES = ("hit_rate", "simulate", "stall", "cxl")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz_toml") / "experiment.toml"
    path.write_text(EXPERIMENT)
    load_config(path).check_stages(STAGES, n_table_rows=161_278, row_bytes=160)  # the file is valid
    return path


def load_or_refuse(path: Path) -> None:
    """Load ``path`` and check its stages against a table; a refusal must name the file."""
    try:
        load_config(path).check_stages(STAGES, n_table_rows=161_278, row_bytes=160)
    except EngramTierError as err:
        assert "\n" not in str(err) and str(path) in str(err), err


@fuzz(150)
@given(data=st.data())
def test_damaged_toml_bytes_are_refused_or_loaded(experiment, tmp_path, data):
    original = experiment.read_bytes()
    bad = tmp_path / "bad.toml"
    bad.write_bytes(damaged(original, data.draw(damage(len(original)))))
    load_or_refuse(bad)


def _leaves(doc, prefix=()):
    """Every (path, value) leaf of a parsed TOML document, lists of tables included."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for key, value in items:
        if isinstance(value, dict) or _is_tables(value):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan" if value != value else repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)


def _dump(doc: dict) -> str:
    """A TOML text of ``doc`` (tables, arrays of tables and inline values: what experiment files hold)."""
    lines = []

    def table(header: str, body: dict):
        if header:
            lines.append(header)
        lines.extend(f"{json.dumps(k)} = {_toml(v)}" for k, v in body.items()
                     if not isinstance(v, dict) and not _is_tables(v))
        for k, v in body.items():
            name = f"{header.strip('[]')}.{json.dumps(k)}" if header else json.dumps(k)
            if isinstance(v, dict):
                table(f"[{name}]", v)
            elif _is_tables(v):
                for item in v:
                    table(f"[[{name}]]", item)

    table("", doc)
    return "\n".join(lines) + "\n"


def _is_tables(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def test_the_toml_writer_round_trips_the_experiment():
    doc = tomllib.loads(EXPERIMENT)
    assert tomllib.loads(_dump(doc)) == doc


@fuzz(200)
@given(data=st.data())
def test_toml_values_of_the_wrong_kind_are_refused_or_loaded(experiment, tmp_path, data):
    doc = tomllib.loads(experiment.read_text())
    leaves = list(_leaves(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        path, _ = data.draw(st.sampled_from(leaves))
        node = doc
        for key in path[:-1]:
            node = node[key]
        value = data.draw(ODD_VALUES)
        if value is None:  # TOML has no null: leave the key out
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    bad = tmp_path / "mutated.toml"
    bad.write_text(_dump(doc))
    load_or_refuse(bad)


# --- LMDB tables -------------------------------------------------------------------------------------

WORKER = """
import json, sys
import numpy as np
from engramtier.errors import EngramTierError
from engramtier.tiers.nvme import NvmeTier
for line in sys.stdin:
    table, out = json.loads(line)
    try:
        with NvmeTier(table) as tier:
            rows = np.empty((tier.n_table_rows, tier.row_bytes), np.uint8)
            tier.read(np.arange(tier.n_table_rows), rows)
    except EngramTierError as err:
        print(json.dumps(["refused", str(err)]), flush=True)
        continue
    np.save(out, rows)
    print(json.dumps(["read", out]), flush=True)
"""


class Reader:
    """A process reading every row of the tables it is sent; one per module, restarted after a death
    so that hypothesis can replay the example that killed it."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.proc = folder, None

    def read(self, table: Path, timeout: float = 60.0) -> tuple[str, str]:
        """("read", .npy path), ("refused", the line), or ("died", why)."""
        if self.proc is None or self.proc.poll() is not None:
            self.log = open(self.folder / "worker.log", "w+")
            self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.log, text=True)
        self.proc.stdin.write(json.dumps([str(table), str(self.folder / "got.npy")]) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.proc.kill()
            return "died", f"hung for {timeout} s"
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            return "died", f"exit {self.proc.wait()}: {self.log.read()[-2000:]}"
        return tuple(json.loads(line))

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait()


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    worker = Reader(tmp_path_factory.mktemp("reader"))
    yield worker
    worker.close()


def _build(folder: Path, *options: str) -> Path:
    assert main(["build-table", str(folder), "--random", "--rows", "2000", "--dim", "16", "--page-kib", "4",
                 *options, "--quiet"]) == 0
    return folder


@pytest.fixture(scope="module")
def lmdb_tables(tmp_path_factory, reader) -> list[tuple[Path, np.ndarray, list[int]]]:
    """A plain table and a permuted zstd one: (path, every row, offsets of its metadata in data.mdb)."""
    folder = tmp_path_factory.mktemp("fuzz_lmdb")
    profile = folder / "profile.npy"
    np.save(profile, np.random.default_rng(0).random(2000))
    tables = []
    for path in (_build(folder / "plain"), _build(folder / "permuted", "--compression", "zstd:1", "--profile",
                                                 str(profile))):
        status, out = reader.read(path)
        assert status == "read", out
        tables.append((path, np.load(out), _meta_offsets(path)))
    return tables


def _meta_offsets(path: Path) -> list[int]:
    """Where in data.mdb the table's metadata (layout, manifest, completion record, permutation) lies,
    every copy of it (LMDB keeps old ones in free pages): the bytes no page checksum covers."""
    data = (path / "data.mdb").read_bytes()
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=3)
    values = []
    with env.begin() as txn:
        names = [bytes(k) for k, _ in txn.cursor()]  # the named databases: meta, pages, layout when permuted
    for db in set(names) - {b"pages"}:
        with env.begin(db=env.open_db(db, create=False)) as txn:
            values += [bytes(v) for _, v in txn.cursor() if len(v) >= 8]
    env.close()
    return sorted({m.start() + i for v in values for m in re.finditer(re.escape(v), data) for i in range(len(v))})


@fuzz(60)
@given(data=st.data())
def test_damaged_lmdb_table_is_refused_or_reads_identically(lmdb_tables, reader, tmp_path, data):
    table, want, meta = data.draw(st.sampled_from(lmdb_tables))
    original = (table / "data.mdb").read_bytes()
    at = data.draw(st.one_of(st.integers(0, len(original) - 1), st.sampled_from(meta)))
    bad = tmp_path / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "data.mdb").write_bytes(damaged(original, data.draw(damage(len(original), st.just(at)))))
    status, out = reader.read(bad)
    assert status != "died", out
    if status == "read":
        np.testing.assert_array_equal(np.load(out), want)
    else:
        assert "\n" not in out and str(bad) in out, out


# --- flat tables -------------------------------------------------------------------------------------

FLAT_FORMAT = RowFormat("fp8_e4m3", 32)


@pytest.fixture(scope="module")
def flat_table(tmp_path_factory) -> tuple[Path, np.ndarray]:
    hasher = NgramHasher(HashConfig(vocab_size=300, pad_id=0, table_sizes=(41, 53), layer_ids=(0, 2), n_heads=2))
    rows = FLAT_FORMAT.encode(torch.randn(hasher.n_rows, 32, generator=torch.Generator().manual_seed(0)))
    path = save_table(tmp_path_factory.mktemp("flat") / "t", rows, FLAT_FORMAT, hasher)
    return path, rows.numpy()


def _flat_copy(source: Path, folder: Path, manifest: bytes | None = None, data: bytes | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_bytes(manifest if manifest is not None else (source / "manifest.json").read_bytes())
    (folder / "table.bin").write_bytes(data if data is not None else (source / "table.bin").read_bytes())
    return folder


def _opened_rows(path: Path) -> np.ndarray | None:
    table = refused_or(lambda: open_table(path, verify=True))
    return None if table is None else np.array(table.rows)


@fuzz(60)
@given(data=st.data())
def test_damaged_flat_table_is_refused_or_reads_identically(flat_table, tmp_path, data):
    source, want = flat_table
    name = data.draw(st.sampled_from(["manifest.json", "table.bin"]))
    original = (source / name).read_bytes()
    changed = damaged(original, data.draw(damage(len(original))))
    path = _flat_copy(source, tmp_path / "t", **{"manifest" if name == "manifest.json" else "data": changed})
    rows = _opened_rows(path)
    assert rows is None or np.array_equal(rows, want)


@fuzz(60)
@given(data=st.data())
def test_flat_manifest_values_of_the_wrong_kind_are_refused_or_read(flat_table, tmp_path, data):
    source, want = flat_table
    manifest = json.loads((source / "manifest.json").read_text())
    key = data.draw(st.sampled_from(sorted(manifest)))
    manifest[key] = data.draw(ODD_VALUES)
    path = _flat_copy(source, tmp_path / "t", manifest=json.dumps(manifest).encode())
    rows = _opened_rows(path)
    assert rows is None or np.array_equal(rows, want)


# --- through the command line ------------------------------------------------------------------------


@pytest.mark.slow
def test_damaged_files_through_the_command_line_exit_2_never_crash(trace_file, experiment, tmp_path):
    """A few seeded damaged files through the real CLI in a subprocess: exit 2, never a signal."""
    rng = np.random.default_rng(0)
    data = trace_file.read_bytes()
    first = 20 + struct.unpack_from("<I", data, 12)[0]  # the first chunk's frame: every command reads it
    frame = 29 + struct.unpack_from("<Q", data, first + 16)[0]
    runs = []
    for i in range(3):
        at = first + int(rng.integers(0, frame))
        bad = tmp_path / f"bad{i}.trace"
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
        runs += [["stats", str(bad)], ["export", str(bad), "--format", "csv", "-o", str(tmp_path / "e.csv")],
                 ["mrc", str(bad), "--out", str(tmp_path / f"m{i}"), "--quiet", "--seeds", "1"]]
    text = experiment.read_text()
    for i, bad_text in enumerate([text[: len(text) // 2], text.replace("heads = 4", "heads = 4.5"),
                                  text.replace("capacity = 2000", "capacity = 10000000")]):
        bad = tmp_path / f"bad{i}.toml"
        bad.write_text(bad_text)
        runs.append(["simulate", str(bad), "--out", str(tmp_path / f"s{i}"), "--quiet"])
    for argv in runs:
        done = subprocess.run([*ENGRAMTIER, *argv], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, (argv, done.returncode, done.stderr)
