"""Every class of bad experiment or hierarchy TOML is refused with one line naming the file and the key:
files that are no TOML, values of the wrong type or out of range, sweeps with nothing to sweep, and
sizes larger than the table (known only once the trace is)."""

from __future__ import annotations

import textwrap

import pytest

from engramtier.analysis.config import load_config
from engramtier.cache.hierarchy import Hierarchy, load_hierarchy
from engramtier.cli import main
from engramtier.errors import MAX_INT, EngramTierError, check_number, refuse_unknown
from engramtier.trace.tracefile import TraceReader

GOOD = textwrap.dedent("""\
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
    cxl_capacity = "256KiB"
    [cost]
    stall_budget = 0.05
    """)


def refusal(path, **kwargs) -> str:
    """The one line `load_config` refuses ``path`` with; it names the file."""
    with pytest.raises(EngramTierError) as err:
        load_config(path, **kwargs)
    line = str(err.value)
    assert "\n" not in line and str(path) in line, line
    return line


def write(tmp_path, text: str, name: str = "exp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_base_file_loads(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.trace.table_size == 10007 and [t.name for t in cfg.hierarchy.tiers] == ["gpu", "dram", "nvme"]


# --- files that are not TOML ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "small.trace"
    assert main(["trace", "--synthetic-zipf", "1.0", "--vocab", "300", "--tokens", "800", "--table-size", "1009",
                 "--layers", "1", "--heads", "2", "-o", str(path), "--quiet"]) == 0
    return path


def test_binary_latin1_directory_and_huge_files_are_named_as_such(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert "is a binary file" in refusal(binary)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[trace]\nsource = "zipf"\n# caf\u00e9\n'.encode("latin-1"))
    assert "is not UTF-8 text (bad byte at offset 29)" in refusal(latin1)
    assert "no such file (it is a directory)" in refusal(tmp_path)
    assert "no such file" in refusal(tmp_path / "missing.toml")
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"# x\n" * (5 << 20))
    assert "larger than 16 MiB" in refusal(huge)


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("engramtier.cache.tomlfile.open", denied, raising=False)
    assert "cannot read it (Permission denied)" in refusal(path)


def test_a_trace_given_as_toml_says_where_a_trace_goes(trace_file):
    line = refusal(trace_file)
    assert "is a trace file" in line and f"engramtier simulate --hierarchy H.toml {trace_file}" in line
    with pytest.raises(EngramTierError, match="is a trace file"):
        load_hierarchy(trace_file)


def test_a_toml_or_directory_given_as_trace_is_refused(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(EngramTierError, match=f"{path} is not an engramtier trace file"):
        TraceReader(path)
    with pytest.raises(EngramTierError, match="is a directory, not a trace file"):
        TraceReader(tmp_path)


def test_through_the_command_line_exit_2_one_line(tmp_path, trace_file, capsys):
    hierarchy = write(tmp_path, GOOD, "h.toml")
    assert main(["simulate", "--hierarchy", str(trace_file), str(trace_file), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "is a trace file" in err
    assert main(["simulate", "--hierarchy", str(hierarchy), str(hierarchy), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "not an engramtier trace file" in err


# --- wrong types and values ---------------------------------------------------------------------------


@pytest.mark.parametrize("old, new, words", [
    ("layers = [1, 15]", 'layers = "1,15"', ("[trace]", "'layers' must be a list", "'1,15'")),
    ("layers = [1, 15]", "layers = [1.5]", ("'layers' must be a list of layer numbers",)),
    ("heads = 4", "heads = 4.0", ("'heads' must be an integer in [1, 64], got 4.0",)),
    ("heads = 4", "heads = true", ("'heads' must be an integer", "got True")),
    ("heads = 4", "heads = { n = 4 }", ("'heads' must be an integer",)),
    ("heads = 4", "heads = 0", ("'heads' must be an integer in [1, 64], got 0",)),
    ("heads = 4", "heads = 100000", ("'heads'", "got 100000")),
    ("seed = 3", "seed = -3", ("'seed' must be an integer in [0, 9,223,372,036,854,775,807]",)),
    ("seed = 3", "seed = 18446744073709551616", ("'seed'",)),
    ("table_size = 10007", "table_size = 0", ("'table_size' must be an integer in [2,",)),
    ("table_size = 10007", "table_size = 1", ("'table_size'",)),
    ("table_size = 10007", "table_size = 1e18", ("'table_size' must be an integer", "1e+18")),
    ("table_size = 10007", "table_size = 1000000000000000000", ("'table_size'", "1,099,511,627,776")),
    ("heads = 4", "heads = 4\nmax_ngram = 1", ("'max_ngram' must be an integer in [2, 8], got 1",)),
    ("heads = 4", "heads = 4\nmax_ngram = 10000000000", ("'max_ngram'",)),
    ("heads = 4", "heads = 4\nbatch = 0", ("'batch' must be an integer >= 1, got 0",)),
    ("heads = 4", "heads = 4\nseq_len = -5", ("'seq_len' must be an integer >= 1",)),
    ("heads = 4", "heads = 4\nrequests = 0", ("'requests'",)),
    ("heads = 4", "heads = 4\nrow_bytes = 0", ("'row_bytes'",)),
    ("heads = 4", "heads = 4\nvocab = 100000000000000", ("'vocab' must be an integer in [1, 67,108,864]",)),
    ("heads = 4", "heads = 4\nzipf_alpha = nan", ("'zipf_alpha' must be a finite number > 0, got nan",)),
    ("heads = 4", "heads = 4\nzipf_alpha = inf", ("'zipf_alpha'",)),
    ("heads = 4", "heads = 4\nmode = \"sideways\"", ("[trace]", "unknown mode 'sideways'")),
    ('source = "zipf"', 'source = ["zipf"]', ("'source' must be a string, got ['zipf']",)),
    ('source = "zipf"', 'source = "text"\npaths = [1]', ("'paths' must be a list of path strings",)),
    ('source = "zipf"', 'source = "file"\nfile = ["a"]', ("'file' must be a path string, got ['a']",)),
    ("window_per_token_s = 3e-6", "window_per_token_s = -3e-6", ("[timing]", "'window_per_token_s' (seconds)")),
    ("window_per_token_s = 3e-6", "window_per_token_s = inf", ("'window_per_token_s'", "got inf")),
    ("compute_per_token_s = 50e-6", "compute_per_token_s = nan", ("'compute_per_token_s'", "got nan")),
    ('mode = "inclusive"', "mode = 5", ("[hierarchy]", "unknown mode 5")),
    ("capacity = 2000", "capacity = 0", ("[hierarchy]", "tier 'dram'", "capacity must be positive")),
    ("capacity = 2000", "capacity = -5", ("tier 'dram'", "capacity must be positive")),
    ("capacity = 2000", "capacity = 2000.5", ("tier 'dram'", "capacity must be rows")),
    ("capacity = 2000", "capacity = [2000]", ("tier 'dram'", "capacity must be rows")),
    ("capacity = 2000", 'capacity = "2XB"', ("tier 'dram' capacity", "'2XB' does not parse")),
    ('policy = "lru"', 'policy = "lruu"', ("[hierarchy]", "tier 'dram'", "did you mean 'lru'")),
    ('policy = "s3fifo"', 'policy = "s3fifo"\nparams = { small_ratio = "x" }',
     ("tier 'gpu'", "params.small_ratio must be a number, got 'x'")),
    ('policy = "s3fifo"', 'policy = "s3fifo"\nparams = { small_ratio = [1] }',
     ("tier 'gpu'", "params.small_ratio must be a number, true/false, a name or a table of numbers")),
    ('model = "hbm"', 'model = { latency_s = 1e-6 }', ("tier[0].model", "needs latency_s and bandwidth_Bps")),
    ('model = "hbm"', 'model = { name = 5, latency_s = 1e-6, bandwidth_Bps = 1e9 }', ("tier[0].model",)),
    ('model = "hbm"', 'model = { latency_s = nan, bandwidth_Bps = 1e9 }', ("tier[0].model", "latency_s")),
    ('name = "gpu"', 'name = "dram"', ("[hierarchy]", "two tiers are named 'dram'")),
    ("sizes = [100, \"1MiB\"]", "sizes = [-100]", ("[sweep] sizes[0]", "holds no row")),
    ("sizes = [100, \"1MiB\"]", "sizes = [1.5]", ("[sweep] sizes[0]", "a size is rows")),
    ('policies = ["lru", "belady"]', "policies = []", ("[sweep]", "'policies', but it is empty")),
    ('policies = ["lru", "belady"]', 'policies = ["lru"]\nshards_rate = 0', ("'shards_rate'", "(0, 1], got 0")),
    ('policies = ["lru", "belady"]', 'policies = ["lru"]\nshards_rate = 2', ("'shards_rate'",)),
    ('policies = ["lru", "belady"]', 'policies = ["lru"]\nshards_rate = nan', ("'shards_rate'",)),
    ('policies = ["lru", "belady"]', 'policies = ["lru"]\nshards_seeds = 0', ("'shards_seeds'",)),
    ("cxl_latencies_ns = [170, 400]", "cxl_latencies_ns = [nan]", ("[sweep] cxl_latencies_ns[0]", "got nan")),
    ("cxl_latencies_ns = [170, 400]", "cxl_latencies_ns = [inf]", ("cxl_latencies_ns[0]",)),
    ('cxl_capacity = "256KiB"', "cxl_capacity = 0", ("[sweep] cxl_capacity",)),
    ("stall_budget = 0.05", "stall_budget = nan", ("[cost]", "'stall_budget'", "got nan")),
    ("stall_budget = 0.05", "stall_budget = 0.05\nusd_per_gb = { hbm = inf }", ("[cost]", "usd_per_gb.hbm", "inf")),
    ("stall_budget = 0.05", "stall_budget = 0.05\nusd_per_gb = { hbm = -1 }", ("usd_per_gb.hbm",)),
    ("compute_per_token_s = 50e-6\nwindow_per_token_s = 3e-6", "compute_s = 1e-3\nwindow_s = 2e-3",
     ("[timing]", "window_s 0.002 exceeds compute_s 0.001", "give window_s <= compute_s")),
])
def test_wrong_types_and_values_name_file_and_key(tmp_path, old, new, words):
    assert GOOD.count(old) == 1
    line = refusal(write(tmp_path, GOOD.replace(old, new)))
    for word in words:
        assert word in line, line


def test_an_option_overriding_a_section_that_is_no_table(tmp_path):
    path = write(tmp_path, GOOD.replace("[timing]\n", "timing = 5\n[xtiming]\n"))
    assert "unknown key 'xtiming'" in refusal(path, overrides={"timing": {"window_s": 1e-3}})
    path = write(tmp_path, "hierarchy = 5\ntiming = 3\n")
    assert "'hierarchy' must be a table" in refusal(path, need_trace=False, overrides={"timing": {"window_s": 1e-3}})


def test_a_hierarchy_file_for_the_runtime_names_the_file(tmp_path):
    path = write(tmp_path, '[[tier]]\nname = "a"\ncapacity = 10\npolicy = "lru"\nmodel = "dram"\n'
                           '[[tier]]\nname = "a"\nmodel = "nvme"\n', "h.toml")
    with pytest.raises(EngramTierError, match=f"^{path}: two tiers are named 'a'"):
        load_hierarchy(path)


# --- sweeps with nothing to sweep, sizes larger than the table --------------------------------------


def test_a_stage_with_nothing_to_sweep_is_refused_before_any_trace(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace('tier_sizes = { gpu = ["32KiB"], dram = [1000, 4000] }\n', "")))
    cfg.check_stages(["hit_rate", "cxl"])
    with pytest.raises(EngramTierError, match=r"exp.toml: \[sweep\] tier_sizes is empty, so stage stall"):
        cfg.check_stages(["hit_rate", "stall"])
    empty = load_config(write(tmp_path, GOOD.split("[sweep]")[0] + "[sweep]\n"))
    for stage, key in (("hit_rate", "sizes"), ("cxl", "cxl_latencies_ns")):
        with pytest.raises(EngramTierError, match=rf"\[sweep\] {key} is empty, so stage {stage}"):
            empty.check_stages([stage])


@pytest.mark.parametrize("old, new, where", [
    ('sizes = [100, "1MiB"]', 'sizes = [100, 200000]', "[sweep] sizes[1]: size 200000 is 200,000 rows"),
    ('sizes = [100, "1MiB"]', 'sizes = [100, "1TiB"]', "[sweep] sizes[1]: size '1TiB'"),
    ("dram = [1000, 4000]", "dram = [1000, 400000]", "[sweep] tier_sizes.dram[1]"),
    ('cxl_capacity = "256KiB"', 'cxl_capacity = "1GiB"', "[sweep] cxl_capacity"),
    ("capacity = 2000", "capacity = 200000", "[hierarchy]: tier 'dram': capacity 200000 (200000 rows) exceeds"),
])
def test_sizes_larger_than_the_table_name_file_and_key(tmp_path, old, new, where):
    cfg = load_config(write(tmp_path, GOOD.replace(old, new)))
    cfg.check_stages(["hit_rate", "stall", "cxl"])  # nothing against the table yet
    with pytest.raises(EngramTierError) as err:
        cfg.check_stages(["hit_rate", "simulate", "stall", "cxl"], n_table_rows=100_000, row_bytes=160)
    line = str(err.value)
    assert line.startswith(f"{cfg.path}: ") and where in line and "\n" not in line, line


def test_sweep_sizes_and_windows_that_do_not_fit_are_refused_through_the_command_line(tmp_path, capsys):
    """[sweep] sizes larger than the table are refused for every policy (lru's one-pass curve too), once
    the trace says how large the table is; a per-token window longer than the step's compute too."""
    config = write(tmp_path, GOOD.replace('sizes = [100, "1MiB"]', "sizes = [100, 200000]")
                   .replace('policies = ["lru", "belady"]', 'policies = ["lru"]'))
    assert main(["sweep", str(config), "--stages", "hit_rate", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "[sweep] sizes[1]: size 200000 is 200,000 rows, more than the table's" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    slow = write(tmp_path, GOOD.replace("compute_per_token_s = 50e-6", "compute_per_token_s = 1e-6"), "slow.toml")
    assert main(["simulate", str(slow), "--out", str(tmp_path / "sim"), "--quiet"]) == 2
    assert "compute window" in capsys.readouterr().err and not (tmp_path / "sim").exists()


def test_a_size_equal_to_the_table_is_fine(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace('sizes = [100, "1MiB"]', "sizes = [100, 5000]")))
    cfg.check_stages(["hit_rate", "simulate", "stall", "cxl"], n_table_rows=5000, row_bytes=160)


def test_a_hierarchy_built_in_code_names_no_file():
    h = Hierarchy.from_dict({"tier": [{"name": "d", "capacity": 50, "policy": "lru", "model": "dram"},
                                      {"name": "s", "model": "nvme"}]})
    with pytest.raises(EngramTierError, match="^tier 'd': capacity 50 \\(50 rows\\) exceeds the table's 10 rows"):
        h.capacities(10, 160)


# --- the shared bounds check -------------------------------------------------------------------------


@pytest.mark.parametrize("value, bounds, message", [
    (True, {}, "x must be a finite number, got True"),
    (float("nan"), {}, "x must be a finite number, got nan"),
    (float("-inf"), {"low": 0}, "x must be a finite number >= 0, got -inf"),
    (4.0, {"integer": True}, "x must be an integer, got 4.0"),
    (2**64, {"integer": True, "low": 0, "high": 2**63 - 1}, "x must be an integer in [0, 9,223,372,036,854,775,807]"),
    (0, {"low": 0, "high": 1, "low_open": True}, "x must be a finite number in (0, 1], got 0"),
    ("1", {"low": 1}, "x must be a finite number >= 1, got '1'"),
    (2**4000, {"high": 1.0}, "x must be a finite number <= 1, got 1"),
])
def test_check_number_refuses(value, bounds, message):
    with pytest.raises(EngramTierError) as err:
        check_number(value, "x", **bounds)
    assert str(err.value).startswith(message) and "\n" not in str(err.value) and len(str(err.value)) < 120


def test_check_number_passes_values_in_range():
    assert check_number(1, "x", low=0, high=1, low_open=True) == 1
    assert check_number(0.5, "x", low=0, high=1) == 0.5
    assert check_number(MAX_INT, "x", integer=True, low=0) == MAX_INT


def test_an_integer_without_a_bound_stays_within_int64_sums():
    """TOML integers are unbounded in Python; one past `MAX_INT` would overflow numpy's int64 a few sums later."""
    with pytest.raises(EngramTierError, match=r"x must be an integer in \[0, 4,611,686,018,427,387,904\], got 1180591620717411303424"):
        check_number(2**70, "x", integer=True, low=0)


def test_an_unknown_name_with_a_newline_is_refused_in_one_line():
    with pytest.raises(EngramTierError) as err:
        refuse_unknown(["zi\npf"], ("sample", "zipf"), "x.toml: [trace]", "source")
    assert "\n" not in str(err.value) and "unknown source 'zi\\npf'" in str(err.value)
    with pytest.raises(EngramTierError, match="unknown source 'zipff': did you mean 'zipf'"):
        refuse_unknown(["zipff"], ("sample", "zipf"), "x.toml: [trace]", "source")


@pytest.mark.parametrize("tier", [{"name": "dr\nam", "model": "dram"}, {"name": "dram", "model": ""},
                                  {"name": "dram", "model": {"name": "x\ty", "latency_s": 1e-7, "bandwidth_Bps": 1e10}}])
def test_a_tier_or_model_name_that_would_break_the_error_line_is_refused(tier):
    with pytest.raises(EngramTierError, match="must be a non-empty name of printable characters") as err:
        Hierarchy.from_dict({"tier": [{**tier, "capacity": 10, "policy": "lru"}, {"name": "nvme", "model": "nvme"}]})
    assert "\n" not in str(err.value)
