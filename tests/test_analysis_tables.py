"""Hit-rate curves as CSV and as a terminal table: compact sizes, the CSV written atomically and equal to
the run's records, the table within 80 columns, and `sweep` and `mrc` printing it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from configs import file_trace, gpu_over_nvme, hierarchy

from engramtier.analysis.tables import CURVE_COLUMNS, TABLE_WIDTH, curve_row, hit_rate_table, humanise, read_curves_csv, write_curves_csv
from engramtier.cli import main

ROW_BYTES = 160


@pytest.mark.parametrize("n, binary, text", [
    (0, False, "0"), (999, False, "999"), (999.6, False, "1K"), (1234, False, "1.2K"), (9960, False, "10K"),
    (20_000, False, "20K"), (35e6, False, "35M"), (768_022_850, False, "768M"), (1 << 20, True, "1Mi"),
    (256 << 20, True, "256Mi"), (1.5 * (1 << 30), True, "1.5Gi"), (320_000, True, "312Ki")])
def test_humanise(n, binary, text):
    assert humanise(n, binary) == text


def curves(policies, sizes):
    rng = np.random.default_rng(0)
    return [curve_row(p, s, ROW_BYTES, rng.random()) for p in policies for s in sizes]


def test_csv_round_trip(tmp_path):
    rows = curves(["lru", "s3fifo"], [2000, 3000, 5000])
    path = write_curves_csv(tmp_path / "c.csv", rows)
    with open(path, newline="") as f:
        assert tuple(next(csv.reader(f))) == CURVE_COLUMNS
    back = read_curves_csv(path)
    assert back == rows
    assert all(r["size_bytes"] == r["size_rows"] * ROW_BYTES and r["hit_rate"] + r["miss_ratio"] == pytest.approx(1)
               for r in back)


def test_a_failed_write_leaves_the_old_csv_whole(tmp_path):
    path = tmp_path / "c.csv"
    old = curves(["lru"], [10, 20])
    write_curves_csv(path, old)

    def broken():
        yield from curves(["lru"], [1, 2, 3])
        raise RuntimeError("cut short")

    with pytest.raises(RuntimeError):
        write_curves_csv(path, broken())
    assert read_curves_csv(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["c.csv"]


def test_the_shipped_sweep_fits_80_columns_with_every_size():
    sizes = [(1 << 20 << i) // ROW_BYTES for i in range(9)]  # experiment.toml: 1MiB .. 256MiB
    text = hit_rate_table(curves(["lru", "s3fifo", "wtinylfu", "belady", "static"], sizes))
    lines = text.splitlines()
    assert max(map(len, lines)) <= TABLE_WIDTH
    assert lines[0].split()[1:] == [humanise(s) for s in sizes]
    assert lines[1].split()[1:] == ["1Mi", "2Mi", "4Mi", "8Mi", "16Mi", "32Mi", "64Mi", "128Mi", "256Mi"]
    assert [line.split()[0] for line in lines[3:]] == ["lru", "s3fifo", "wtinylfu", "belady", "static"]


def test_too_many_sizes_show_an_even_subset_with_both_ends():
    sizes = list(np.unique(np.geomspace(1, 27_807, 48).astype(int)))
    rows = curves(["lru", "lru-shards"], sizes)
    lines = hit_rate_table(rows).splitlines()
    assert max(map(len, lines)) <= TABLE_WIDTH
    shown = lines[0].split()[1:]
    assert shown[0] == "1" and shown[-1] == humanise(sizes[-1]) and 2 < len(shown) < len(sizes)
    assert lines[-1] == f"({len(shown)} of {len(sizes)} sizes shown)"
    lru = lines[3].split()
    rate = {r["size_rows"]: r["hit_rate"] for r in rows if r["policy"] == "lru"}
    assert lru[1] == f"{rate[sizes[0]]:.3f}" and lru[-1] == f"{rate[sizes[-1]]:.3f}"


def test_a_missing_point_is_a_dash():
    rows = curves(["lru"], [10, 20]) + curves(["belady"], [10])
    assert hit_rate_table(rows).splitlines()[-1].split() == ["belady", f"{rows[-1]['hit_rate']:.3f}", "-"]


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "z.trace"
    assert main(["trace", "--synthetic-zipf", "1.0", "--vocab", "3000", "--tokens", "20000", "--table-size", "10007",
                 "--layers", "1", "--heads", "2", "--batch", "4", "--seq-len", "256", "-o", str(path), "--quiet"]) == 0
    return path


def results(run, experiment):
    return [r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines()) if r["experiment"] == experiment]


def test_mrc_writes_and_prints_its_curves(tmp_path, trace, capsys):
    run = tmp_path / "mrc"
    assert main(["mrc", str(trace), "--sizes", "100,300,1000,3000", "--seeds", "2", "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    rows = read_curves_csv(run / "mrc.csv")
    records = results(run, "mrc")
    exact = {r["size_rows"]: r["exact_miss_ratio"] for r in records}
    shards = {r["size_rows"]: np.mean(r["shards_miss_ratios"]) for r in records}
    assert [r["policy"] for r in rows] == ["lru"] * 4 + ["lru-shards"] * 4
    for r in rows:
        assert r["miss_ratio"] == pytest.approx((exact if r["policy"] == "lru" else shards)[r["size_rows"]])
    assert hit_rate_table(rows) in out
    assert f"curves {run / 'mrc.csv'}" in out


def test_sweep_writes_and_prints_its_hit_rates(tmp_path, trace, capsys):
    config = tmp_path / "x.toml"
    config.write_text(file_trace(trace) + hierarchy(gpu_over_nvme(300)) + """
[timing]
window_s = 0.001
[sweep]
policies = ["lru", "belady"]
sizes = [200, 300, 500, 800, 1200, 2000]
""")
    run = tmp_path / "sweep"
    assert main(["sweep", str(config), "--stages", "hit_rate", "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    rows = read_curves_csv(run / "hit_rate.csv")
    assert len(rows) == 12  # the trace command's default rows are 160 bytes, as ROW_BYTES
    assert rows == [curve_row(r["policy"], r["size_rows"], ROW_BYTES, r["hit_rate"]) for r in results(run, "hit_rate")]
    assert hit_rate_table(rows) in out
    assert f"curves {run / 'hit_rate.csv'}" in out
