"""Fuzzing the files users hand us: bytes of trace files, LMDB tables and TOML files flipped, overwritten
and truncated. Every consumer must either give exactly the unmodified file's result or refuse with an
`EngramTierError` (one line at the command line), never another exception, a crash or a wrong result.

Traces and TOML run in-process (fast, so hypothesis can try many); LMDB tables are memory-mapped by a
C library, so each damaged table is read in a subprocess, where a crash shows as a negative exit code.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engramtier.analysis.config import load_config
from engramtier.cli import main
from engramtier.errors import EngramTierError

ENGRAMTIER = [sys.executable, "-m", "engramtier.cli"]


def fuzz(examples: int):
    """Hypothesis settings: no deadline (first calls compile kernels), fixtures reused across examples."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def damage(draw, size: int):
    """(kind, offset, payload): flip one byte, overwrite a run of bytes, or truncate."""
    kind = draw(st.sampled_from(["flip", "overwrite", "truncate"]))
    offset = draw(st.integers(0, size - 1))
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


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: exit code, stdout, stderr. Any exception but SystemExit escapes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_refused(code: int, err: str) -> None:
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "small.trace"
    assert main(["trace", "--synthetic-zipf", "1.0", "--vocab", "1000", "--tokens", "5000", "--table-size", "1009",
                 "--layers", "1", "--heads", "2", "--seq-len", "500", "--chunk-rows", "4096", "-o", str(path),
                 "--quiet"]) == 0
    return path


def trace_results(path: Path, folder: Path) -> tuple[int, str, dict | None, bytes | None]:
    """What `stats --json` and `export --format oracle` make of the trace at ``path``."""
    stats_json, exported = folder / "stats.json", folder / "export.bin"
    stats_json.unlink(missing_ok=True)
    exported.unlink(missing_ok=True)
    code, _, err = run_main(["stats", str(path), "--json", str(stats_json)])
    if code != 0:
        assert_refused(code, err)
        assert not stats_json.exists()
        return code, err, None, None
    code, _, err = run_main(["export", str(path), "--format", "oracle", "--stream", "lookups", "-o", str(exported)])
    if code != 0:
        assert_refused(code, err)
        assert not exported.exists()
        return code, err, None, None
    return 0, "", json.loads(stats_json.read_text()), exported.read_bytes()


@fuzz(150)
@given(data=st.data())
def test_damaged_trace_is_refused_or_reads_identically(trace_file, tmp_path, data):
    original = trace_file.read_bytes()
    _, _, want_stats, want_export = trace_results(trace_file, tmp_path)
    bad = tmp_path / "bad.trace"
    bad.write_bytes(damaged(original, data.draw(damage(len(original)))))
    code, _, stats, exported = trace_results(bad, tmp_path)
    if code == 0:  # only a change that alters nothing the readers use may pass
        assert {**stats, "trace": None} == {**want_stats, "trace": None} and exported == want_export


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz_toml")
    path = folder / "experiment.toml"
    path.write_text(textwrap.dedent("""\
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
        model = "hbm"
        [[hierarchy.tier]]
        name = "dram"
        capacity = 2000
        policy = "lru"
        model = "dram"
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
        [cost]
        stall_budget = 0.05
        """))
    return path


def load_or_refuse(path: Path) -> None:
    try:
        load_config(path)
    except EngramTierError as err:
        assert "\n" not in str(err) and str(path) in str(err), err


@fuzz(150)
@given(data=st.data())
def test_damaged_toml_bytes_are_refused_or_loaded(experiment, tmp_path, data):
    original = experiment.read_bytes()
    bad = tmp_path / "bad.toml"
    bad.write_bytes(damaged(original, data.draw(damage(len(original)))))
    load_or_refuse(bad)


ODD_VALUES = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                       st.text(max_size=8), st.lists(st.integers(-5, 5), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _paths(doc, prefix=()):
    """Every (path, value) leaf of a parsed TOML document, lists of tables included."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for key, value in items:
        if isinstance(value, (dict, list)) and value and all(isinstance(v, dict) for v in
                                                             (value.values() if isinstance(value, dict) else value)):
            yield from _paths(value, (*prefix, key))
        elif isinstance(value, dict):
            yield from _paths(value, (*prefix, key))
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
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict) and not _is_tables(v)}
        if header:
            lines.append(header)
        lines.extend(f"{json.dumps(k)} = {_toml(v)}" for k, v in scalars.items())
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


@fuzz(200)
@given(data=st.data())
def test_toml_values_of_the_wrong_kind_are_refused_or_loaded(experiment, tmp_path, data):
    doc = tomllib.loads(experiment.read_text())
    leaves = list(_paths(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        path, _ = data.draw(st.sampled_from(leaves))
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = data.draw(ODD_VALUES)
    bad = tmp_path / "mutated.toml"
    bad.write_text(_dump(doc))
    load_or_refuse(bad)


@pytest.fixture(scope="module")
def lmdb_table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz_lmdb") / "table"
    assert main(["build-table", str(path), "--random", "--rows", "3000", "--dim", "16", "--page-kib", "4",
                 "--compression", "zstd:1", "--quiet"]) == 0
    return path


READ_ALL = """
import sys
import numpy as np
from engramtier.errors import EngramTierError
from engramtier.tiers.nvme import NvmeTier
try:
    with NvmeTier(sys.argv[1]) as tier:
        out = np.empty((tier.n_table_rows, tier.row_bytes), np.uint8)
        tier.read(np.arange(tier.n_table_rows), out)
except EngramTierError as err:
    print("refused:", err)
    sys.exit(2)
np.save(sys.argv[2], out)
"""


@fuzz(25)
@given(data=st.data())
def test_damaged_lmdb_table_is_refused_or_reads_identically(lmdb_table, tmp_path, data):
    want = tmp_path / "want.npy"
    assert subprocess.run([sys.executable, "-c", READ_ALL, str(lmdb_table), str(want)]).returncode == 0
    bad = tmp_path / "bad"
    bad.mkdir(exist_ok=True)
    original = (lmdb_table / "data.mdb").read_bytes()
    (bad / "data.mdb").write_bytes(damaged(original, data.draw(damage(len(original)))))
    (bad / "lock.mdb").unlink(missing_ok=True)
    got = tmp_path / "got.npy"
    got.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", READ_ALL, str(bad), str(got)], capture_output=True, text=True)
    assert done.returncode in (0, 2), f"exit {done.returncode}: {done.stderr[-2000:]}"
    if done.returncode == 2:
        assert done.stdout.startswith("refused:") and len(done.stdout.splitlines()) == 1, done.stdout
    else:
        np.testing.assert_array_equal(np.load(got), np.load(want))


def test_damaged_files_through_the_command_line_exit_2_never_crash(trace_file, lmdb_table, tmp_path):
    """A few seeded damaged files through the real CLI in a subprocess: exit 2, never a signal."""
    rng = np.random.default_rng(0)
    data = trace_file.read_bytes()
    for i in range(4):
        at = int(rng.integers(0, len(data)))
        bad = tmp_path / f"bad{i}.trace"
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
        for argv in (["stats", str(bad)], ["export", str(bad), "--format", "csv", "-o", str(tmp_path / "e.csv")],
                     ["mrc", str(bad), "--out", str(tmp_path / "m"), "--quiet", "--seeds", "1"]):
            done = subprocess.run([*ENGRAMTIER, *argv], capture_output=True, text=True)
            assert done.returncode in (0, 2) and "Traceback" not in done.stderr, done.stderr
