"""A TieredTable whose backing store is a real redis-server, killed mid-run: each `on_failure` rule
(error, retry across a restart, fallback to the local LMDB table) does what it says, and no row served
is ever other than the table's."""

import json
import re
import shutil
import threading
import time
import tomllib

import numpy as np
import pytest
import redis
from redis_servers import free_port
from zipf import zipf_keys

from engramtier.cache.hierarchy import Hierarchy
from engramtier.cli import main
from engramtier.errors import EngramTierError
from engramtier.serve.replay import random_run
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.open import lmdb_table_for, open_table
from engramtier.tiers.remote import RemoteDamaged, RemoteUnavailable, populate_remote
from engramtier.tiers.remote.redis import RedisTier
from engramtier.trace.sources import sample_text_dir

N_ROWS, BLOCK_ROWS, STEPS, KILL_AT = 3000, 256, 8, 3


@pytest.fixture(scope="module")
def lmdb_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("remote-runtime") / "table.lmdb"
    build_lmdb_table(RandomRows(N_ROWS, "bf16", 16, seed=3), path, progress=False)
    return path


@pytest.fixture(scope="module")
def table_rows(lmdb_table):
    """Every row of the LMDB table, read once (an LMDB file opens once per process: the fallback holds it)."""
    with NvmeTier(lmdb_table) as truth:
        rows = np.empty((N_ROWS, truth.row_bytes), np.uint8)
        truth.read(np.arange(N_ROWS), rows)
    return rows


def populate(url, table_path, prefix="rt"):
    with NvmeTier(table_path) as source, RedisTier(url, n_table_rows=N_ROWS, row_bytes=source.row_bytes,
                                                  fingerprint=source.manifest["fingerprint"], key_prefix=prefix,
                                                  block_rows=BLOCK_ROWS) as tier:
        populate_remote(source, tier, progress=False)


def hierarchy(url, **rule):
    storage = {"backend": "redis", "url": url, "key_prefix": "rt", "block_rows": BLOCK_ROWS, "timeout_s": 1, **rule}
    return {"mode": "inclusive", "tier": [
        {"name": "dram", "capacity": 300, "policy": "lru", "model": "dram"},
        {"name": "remote", "model": "remote", "storage": storage},
    ]}


def steps():
    rng = np.random.default_rng(11)
    return [zipf_keys(600, N_ROWS, 1.2, rng) for _ in range(STEPS)]


def run(table, table_rows, on_step=lambda step: None):
    """Feed every step, checking each one's rows against the table's; returns the store's statistics."""
    for step, ids in enumerate(steps()):
        on_step(step)
        np.testing.assert_array_equal(table.prefetch(ids).wait().numpy(), table_rows[ids])
    table.finish()
    return table.stats()["tiers"][-1]


def test_error_rule_stops_with_one_line_and_the_store_is_intact(persistent_server, lmdb_table, table_rows):
    populate(persistent_server.url, lmdb_table)
    table = open_table(hierarchy(persistent_server.url), lmdb_table, device="cpu")
    with table, pytest.raises(RemoteUnavailable, match=rf"remote tier {persistent_server.url} unreachable: .*start the "
                                                       "server") as err:
        run(table, table_rows, on_step=lambda step: step == KILL_AT and persistent_server.kill())
    assert "\n" not in str(err.value)
    with pytest.raises(EngramTierError, match="closed"):
        table.prefetch(steps()[0])
    persistent_server.restart()  # every row is still there, byte for byte
    with NvmeTier(lmdb_table) as truth, RedisTier(persistent_server.url, n_table_rows=N_ROWS, row_bytes=truth.row_bytes,
                                                  fingerprint=None, key_prefix="rt", block_rows=BLOCK_ROWS) as tier:
        rows = np.empty_like(table_rows)
        tier.read(np.arange(N_ROWS), rows)
        np.testing.assert_array_equal(rows, table_rows)
        assert populate_remote(truth, tier, progress=False) == 0


def test_retry_rule_rides_out_a_restart(persistent_server, lmdb_table, table_rows):
    populate(persistent_server.url, lmdb_table)

    def kill_and_restart(step):
        if step == KILL_AT:
            persistent_server.kill()
            threading.Timer(0.5, persistent_server.restart).start()

    with open_table(hierarchy(persistent_server.url, on_failure="retry", retry_s=20), lmdb_table,
                          device="cpu") as table:
        store = run(table, table_rows, on_step=kill_and_restart)
    facts = store["remote"]
    assert facts["failures"] >= 1 and facts["retries"] >= 1 and facts["waited_s"] >= 0.3
    assert facts["fallback_rows"] == 0 and store["rows_read"] > 0


def test_retry_rule_gives_up_after_retry_s(server, lmdb_table, table_rows):
    populate(server.url, lmdb_table)
    with open_table(hierarchy(server.url, on_failure="retry", retry_s=0.3), lmdb_table, device="cpu") as table:
        start = time.monotonic()
        with pytest.raises(RemoteUnavailable, match=r"still unreachable after retrying for 0.3 s"):
            run(table, table_rows, on_step=lambda step: step == KILL_AT and server.kill())
        assert time.monotonic() - start < 10


def test_fallback_rule_serves_the_local_table_then_returns_to_the_store(persistent_server, lmdb_table, table_rows):
    populate(persistent_server.url, lmdb_table)

    def outage(step):
        if step == KILL_AT:
            persistent_server.kill()
        if step == KILL_AT + 2:
            persistent_server.restart()
            time.sleep(0.3)  # past retry_s: the next read tries the store again

    with open_table(hierarchy(persistent_server.url, on_failure="fallback", retry_s=0.2), lmdb_table,
                          device="cpu") as table:
        store = run(table, table_rows, on_step=outage)
        remote_rows = table.store.primary.rows_read
    facts = store["remote"]
    assert facts["failures"] >= 1 and facts["fallback_rows"] > 0
    assert remote_rows + facts["fallback_rows"] == store["rows_read"]
    assert table.store.primary.reads > KILL_AT  # back on the store after the restart


def test_fallback_rule_opens_on_the_local_table_when_nothing_listens(lmdb_table, table_rows):
    dead = f"redis://127.0.0.1:{free_port()}"
    with open_table(hierarchy(dead, on_failure="fallback", retry_s=0.05), lmdb_table, device="cpu") as table:
        store = run(table, table_rows, on_step=lambda step: time.sleep(0.06))  # each step tries the store again
    facts = store["remote"]
    assert facts["on_failure"] == "fallback" and facts["backend"] == "redis"
    assert facts["where"] == "tier 'remote' storage"  # never reached: named by the hierarchy
    assert facts["failures"] > STEPS // 2 and facts["fallback_rows"] == store["rows_read"] > 0
    assert table.store.primary is None


def test_fallback_rule_down_at_open_returns_to_the_store(persistent_server, lmdb_table, table_rows):
    populate(persistent_server.url, lmdb_table)
    persistent_server.kill()  # nothing listens on its port when the table opens

    def back_up(step):
        if step == KILL_AT:
            persistent_server.restart()
            time.sleep(0.3)  # past retry_s: the next read tries the store again

    with open_table(hierarchy(persistent_server.url, on_failure="fallback", retry_s=0.2), lmdb_table,
                    device="cpu") as table:
        store = run(table, table_rows, on_step=back_up)
        remote_rows = table.store.primary.rows_read
    facts = store["remote"]
    assert facts["failures"] >= 1 and facts["fallback_rows"] > 0 and remote_rows > 0
    assert remote_rows + facts["fallback_rows"] == store["rows_read"]
    assert facts["where"] == persistent_server.url


def test_error_and_retry_rules_down_at_open(persistent_server, lmdb_table, table_rows):
    populate(persistent_server.url, lmdb_table)
    persistent_server.kill()
    with pytest.raises(RemoteUnavailable, match=rf"remote tier {persistent_server.url} unreachable: .*start the "
                                               "server") as err:
        open_table(hierarchy(persistent_server.url), lmdb_table, device="cpu")
    assert "\n" not in str(err.value)
    start = time.monotonic()
    with pytest.raises(RemoteUnavailable, match=r"still unreachable after retrying for 0.3 s"):
        open_table(hierarchy(persistent_server.url, on_failure="retry", retry_s=0.3), lmdb_table, device="cpu")
    assert 0.3 <= time.monotonic() - start < 10
    threading.Timer(0.5, persistent_server.restart).start()
    with open_table(hierarchy(persistent_server.url, on_failure="retry", retry_s=20), lmdb_table,
                    device="cpu") as table:
        store = run(table, table_rows)
    facts = store["remote"]
    assert facts["failures"] == 1 and facts["retries"] >= 1 and facts["waited_s"] >= 0.3
    assert facts["fallback_rows"] == 0 and store["rows_read"] > 0


def damage_every_row(url, prefix):
    """Overwrite the first 8 bytes of every row stored under ``prefix`` (not its done marks or manifest)."""
    client = redis.Redis.from_url(url)
    keys = [key for key in client.scan_iter(match=f"{{{prefix}:*", count=1000) if not key.endswith(b":done")]
    assert keys
    for key in keys:
        client.setrange(key, 0, b"\xa5" * 8)
    client.close()


def test_damaged_rows_are_refused_or_read_from_the_local_table(server, lmdb_table, table_rows):
    populate(server.url, lmdb_table)
    damage_every_row(server.url, "rt")
    with open_table(hierarchy(server.url), lmdb_table, device="cpu") as table:
        with pytest.raises(RemoteDamaged, match=r"rows read fail their checksum \(first: row \d+, block \d+ of prefix "
                                                r"'rt'\): the store's copy is damaged; delete") as err:
            run(table, table_rows)
    assert "\n" not in str(err.value)
    with open_table(hierarchy(server.url, on_failure="fallback"), lmdb_table, device="cpu") as table:
        store = run(table, table_rows)  # every row served is the table's
    facts = store["remote"]
    assert facts["damaged_reads"] > 0 and facts["fallback_rows"] == store["rows_read"] > 0
    assert facts["failures"] == 0  # the store answered: damage is not an outage


def test_a_store_of_the_previous_format_is_refused(server, lmdb_table):
    populate(server.url, lmdb_table)
    client = redis.Redis.from_url(server.url)
    manifest = json.loads(client.get("{rt}:manifest"))
    client.set("{rt}:manifest", json.dumps({**manifest, "format": "engramtier-remote-table/2"}))
    with pytest.raises(EngramTierError, match=r"holds a table of format engramtier-remote-table/2, whose rows carry no "
                                              r"checksums .* run `engramtier remote populate` again") as err:
        populate(server.url, lmdb_table)
    assert "\n" not in str(err.value)


def test_fallback_must_be_the_table_the_store_was_populated_from(server, lmdb_table, tmp_path):
    populate(server.url, lmdb_table)
    other = tmp_path / "other.lmdb"
    build_lmdb_table(RandomRows(N_ROWS, "bf16", 16, seed=4), other, progress=False)
    with pytest.raises(EngramTierError, match="not the table the store was populated from") as err:
        open_table(hierarchy(server.url, on_failure="fallback"), other, device="cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(EngramTierError, match=r"on_failure must be one of error, retry, fallback, got 'ignore'"):
        open_table(hierarchy(server.url, on_failure="ignore"), lmdb_table, device="cpu")
    with pytest.raises(EngramTierError, match=r"retry_s must be a number of seconds >= 0, got -1"):
        open_table(hierarchy(server.url, on_failure="retry", retry_s=-1), lmdb_table, device="cpu")


def test_remote_commands_populate_resume_calibrate_and_plan(server, lmdb_table, tmp_path, capsys):
    argv = ["--table", str(lmdb_table), "--storage", "backend=redis", f"url={server.url}", "key_prefix=cli",
            "block_rows=256"]
    assert main(["remote", "populate", *argv, "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["written_rows"] == first["populated_rows"] == N_ROWS and first["backend"] == "redis"
    assert main(["remote", "populate", *argv, "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["written_rows"] == 0  # resumed: nothing left to write
    assert main(["remote", "calibrate", *argv, "--sizes", "1", "256", "2048", "--repeats", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = tomllib.loads(result["toml"])["model"]
    assert model["latency_s"] > 0 and model["bandwidth_Bps"] > 0 and model == {
        k: float("inf") if v is None else v for k, v in result["model"].items() if k != "name"}
    spec = Hierarchy.from_dict({"tier": [{"name": "remote", "model": model}]}).store  # pastes into a hierarchy
    assert spec.model.fetch_seconds(4096, 32) > spec.model.fetch_seconds(1, 32)

    # the simulator plans with it: a hierarchy with a remote tail, its [tier.model] the calibration's
    trace_path, h_path, out = tmp_path / "z.trace", tmp_path / "plan.toml", tmp_path / "plan"
    assert main(["trace", "--synthetic-zipf", "1.0", "--vocab", "500", "--tokens", "2000", "--seq-len", "100",
                 "--layers", "1", "--heads", "2", "--max-ngram", "2", "--table-size", "1009", "-o", str(trace_path),
                 "--quiet"]) == 0
    h_path.write_text(PLAN.format(url=server.url, model=result["toml"]))
    assert main(["simulate", "--hierarchy", str(h_path), str(trace_path), "--window-s", "1e-4", "--out", str(out),
                 "--quiet"]) == 0
    planned = json.loads((out / "config.json").read_text())["config"]["hierarchy"]["tier"][-1]
    assert planned["model"]["latency_s"] == model["latency_s"] and planned["storage"]["backend"] == "redis"


@pytest.mark.parametrize("storage, match", [
    (["backend=redis", "urll=redis://127.0.0.1:1"], r"--storage: unknown storage option 'urll': did you mean 'url'"),
    (["backend=redis", "url=redis://127.0.0.1:{dead}", "timeout_s=1"], r"unreachable: .*start the server"),
    (["backend", "url=x"], r"--storage: 'backend' is not KEY=VALUE"),
    (["backend=redis", "url=http://127.0.0.1:1"], r"'http://127.0.0.1:1' is not a Redis url .*write redis://HOST:PORT"),
])
def test_remote_command_refusals_are_one_line(lmdb_table, storage, match, capsys):
    storage = [s.format(dead=free_port()) for s in storage]
    assert main(["remote", "populate", "--table", str(lmdb_table), "--storage", *storage, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and err.count("\n") == 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random-weight run and its text: (run dir, text dir)."""
    tmp = tmp_path_factory.mktemp("replay")
    text = tmp / "text"
    text.mkdir()
    shutil.copy(sample_text_dir() / "tutorial-appetite.rst.txt", text)
    run_dir = random_run(tmp / "model", text, tokenizer="bpe:300", seq_len=32, d_model=32, n_layers=2,
                         n_heads=2, engram_layers=(0, 1), table_size=101, hash_heads=2, row_dim=16)
    return run_dir, text


def replay(run_dir, text, hierarchy_toml, out):
    assert main(["replay", "--run", str(run_dir), "--text", str(text), "--hierarchy", str(hierarchy_toml),
                 "--max-tokens", "300", "--batch", "2", "--seq-len", "24", "--device", "cpu", "--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())


def test_replay_serves_a_trained_table_from_redis_bitwise_equal(server, trained, tmp_path, capsys):
    run_dir, text = trained
    hierarchy_toml = tmp_path / "remote.toml"
    hierarchy_toml.write_text(REMOTE_HIERARCHY.format(url=server.url, rule="retry"))
    table = lmdb_table_for(run_dir)
    assert main(["remote", "populate", "--table", table, "--hierarchy", str(hierarchy_toml), "--quiet"]) == 0
    summary = replay(run_dir, text, hierarchy_toml, tmp_path / "replay")
    dram, remote = summary["tiers"]
    assert summary["bitwise_equal"] and summary["simulated"]["hits_equal"]
    assert remote["storage"] == "remote" and remote["remote"]["backend"] == "redis" and remote["rows_read"] > 0
    assert "remote" in capsys.readouterr().out


def test_replay_and_generate_refuse_a_damaged_store_or_read_the_local_table(server, trained, tmp_path, capsys):
    run_dir, text = trained
    hierarchy_toml = tmp_path / "remote.toml"
    hierarchy_toml.write_text(REMOTE_HIERARCHY.format(url=server.url, rule="error"))
    assert main(["remote", "populate", "--table", lmdb_table_for(run_dir), "--hierarchy", str(hierarchy_toml),
                 "--quiet"]) == 0
    damage_every_row(server.url, "replay")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Python is\n")
    for argv in (["replay", "--run", str(run_dir), "--text", str(text), "--max-tokens", "300", "--out",
                  str(tmp_path / "refused")],
                 ["generate", "--run", str(run_dir), "--prompts", str(prompts), "--max-new-tokens", "4"]):
        capsys.readouterr()
        assert main([*argv, "--hierarchy", str(hierarchy_toml), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "fail their checksum" in err and "prefix 'replay'" in err, err
    hierarchy_toml.write_text(REMOTE_HIERARCHY.format(url=server.url, rule="fallback"))
    summary = replay(run_dir, text, hierarchy_toml, tmp_path / "fallback")
    remote = summary["tiers"][-1]["remote"]
    assert summary["bitwise_equal"] and remote["damaged_reads"] > 0 and remote["fallback_rows"] > 0


def test_replay_with_the_store_down_from_the_start_falls_back(trained, tmp_path):
    run_dir, text = trained
    hierarchy_toml = tmp_path / "remote.toml"
    hierarchy_toml.write_text(REMOTE_HIERARCHY.format(url=f"redis://127.0.0.1:{free_port()}", rule="fallback"))
    summary = replay(run_dir, text, hierarchy_toml, tmp_path / "replay")
    remote = summary["tiers"][-1]
    assert summary["bitwise_equal"]
    assert remote["remote"]["failures"] >= 1 and remote["remote"]["fallback_rows"] == remote["rows_read"] > 0


REMOTE_HIERARCHY = """
[[tier]]
name = "dram"
capacity = 60
policy = "lru"
model = "dram"
[[tier]]
name = "remote"
model = "remote"
[tier.storage]
backend = "redis"
url = "{url}"
key_prefix = "replay"
on_failure = "{rule}"
"""

PLAN = """
[[hierarchy.tier]]
name = "dram"
capacity = 200
policy = "s3fifo"
model = "dram"
[[hierarchy.tier]]
name = "remote"
{model}
storage = {{ backend = "redis", url = "{url}" }}
[timing]
compute_per_token_s = 1e-5
"""
