"""Speculative prefetch in the runtime: the model names its top-k candidates' rows during a step, the
TieredTable fetches them into its caches as a step nobody waits for, and the next step finds them."""

import json
import shutil

import numpy as np
import pytest
import torch

from engramtier.analysis.speculative import measured_speculation
from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.simulator import simulate
from engramtier.cli import main
from engramtier.errors import EngramTierError
from engramtier.model.rowsource import FlatRowSource
from engramtier.model.run import load_model
from engramtier.model.speculation import Speculation
from engramtier.serve.generate import decode_teacher_forced, generate
from engramtier.serve.replay import random_run
from engramtier.tiers.lmdb_table import FlatTableRows, RandomRows, build_lmdb_table
from engramtier.tiers.open import open_for_model, open_table
from engramtier.trace.sources import sample_text_dir

N_ROWS = 300
HIERARCHY = {"tier": [{"name": "dram", "capacity": 200, "policy": "lru", "model": "dram"}, {"name": "nvme", "model": "nvme"}]}


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("speculate") / "table"
    build_lmdb_table(RandomRows(N_ROWS, "bf16", 8, seed=2), path, progress=False)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    text = tmp_path_factory.mktemp("text")
    for name in ("tutorial-appetite.rst.txt", "tutorial-interpreter.rst.txt"):
        shutil.copy(sample_text_dir() / name, text / name)
    return random_run(tmp_path_factory.mktemp("run") / "model", text, tokenizer="bpe:300", seq_len=32, d_model=32,
                      n_layers=3, n_heads=2, engram_layers=(0, 2), table_size=101, hash_heads=2, row_dim=16)


def _lmdb(run_dir, tmp_path):
    path = tmp_path / "t.lmdb"
    build_lmdb_table(FlatTableRows(run_dir / "table"), path, progress=False)
    return path


def test_speculated_rows_serve_the_next_step_from_the_cache_and_simulate_alike(table_path):
    first, guess = np.arange(0, 40), np.arange(100, 160)
    demand = np.array([100, 101, 150, 159, 100])
    served = {}
    for speculate in (False, True):
        with open_table(HIERARCHY, table_path, device="cpu", record_trace=True) as table:
            table.prefetch(torch.from_numpy(first)).wait()
            if speculate:
                table.speculate(torch.from_numpy(guess).reshape(6, 10))
            got = table.prefetch(torch.from_numpy(demand)).wait()
            table.finish()
            records, stats, trace = table.step_records(), table.stats(), table.recorded_trace()
            expected = np.empty((demand.size, table.row_bytes), np.uint8)
            table.store.read(demand, expected)
            np.testing.assert_array_equal(got.numpy(), expected)  # the demand step's bytes, speculation or not
        served[speculate] = records[-1]["served"]
        assert stats["steps"] == 2 and stats["speculative_steps"] == int(speculate)
        assert [r["speculative"] for r in records] == [False, *([True] * speculate), False]
        assert all(r["step_s"] is not None for r in records if not r["speculative"])
        sim = simulate(trace, table.hierarchy, compute_window_s=0.0, progress=False)  # the speculative step is a step of the trace
        assert [(t["lookups"], t["hits"], t["evicted"]) for t in stats["tiers"]] == \
            [(t["lookups"], t["hits"], t["evicted"]) for t in sim.summary()["tiers"]]
    assert served[False] == {"dram": 0, "nvme": 4}
    assert served[True] == {"dram": 4, "nvme": 0}
    spec = records[1]
    assert spec["requests"] == guess.size and spec["unique"] == guess.size and spec["stall_s"] == 0 and spec["step_s"] is None


def test_speculate_between_the_layers_of_a_step_is_refused(table_path):
    with open_table(HIERARCHY, table_path, device="cpu", layers_per_step=2) as table:
        table.prefetch(torch.arange(4))
        with pytest.raises(EngramTierError, match="speculate was called after 1 of a step's 2 layers"):
            table.speculate(torch.arange(8))
        second = table.prefetch(torch.arange(4, 8))  # the refusal left the pending step as it was
        with pytest.raises(EngramTierError, match=f"row id {N_ROWS} lies outside the table"):
            table.speculate(torch.tensor([N_ROWS]))
        assert second.wait().shape == (4, table.row_bytes)
        table.finish()
        assert table.stats()["steps"] == 1 and table.stats()["speculative_steps"] == 0


class RecordingRows(FlatRowSource):
    """A flat source that remembers every step's requested ids and every speculation."""

    def __init__(self, rows):
        super().__init__(rows)
        self.requested, self.speculated = [], []

    def prefetch(self, row_ids):
        self.requested.append(row_ids.clone())
        return super().prefetch(row_ids)

    def speculate(self, row_ids):
        self.speculated.append(row_ids.clone())


def _loaded(run_dir):
    """The run's model, and a recording source over its own table."""
    loaded = load_model(run_dir)
    return loaded.model, RecordingRows(loaded.rows.rows)


def test_final_block_top1_names_exactly_the_greedy_next_steps_rows(run_dir):
    model, source = _loaded(run_dir)
    last = model.config.n_layers - 1
    prompt = torch.randint(0, model.config.vocab_size, (3, 5), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(3, 16)
    logits = model(prompt, rows=source, kv_cache=cache, speculate=Speculation(1, last))
    plain = model(prompt, rows=source, kv_cache=model.new_cache(3, 16))
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)  # speculating changes nothing the model computes
    greedy = logits[:, -1].argmax(-1, keepdim=True)
    model(greedy, rows=source, kv_cache=cache)
    guessed = source.speculated[0]  # [B, k=1, layers, heads]
    assert guessed.shape == (3, 1, model.hasher.n_layers, model.config.engram.heads_per_layer)
    torch.testing.assert_close(torch.stack(source.requested[-2:], dim=-2)[:, 0], guessed[:, 0], rtol=0, atol=0)


def test_the_whole_vocabulary_from_the_first_block_covers_any_next_token(run_dir):
    model, source = _loaded(run_dir)
    vocab = model.config.vocab_size
    cache = model.new_cache(2, 16)
    model(torch.tensor([[5, 9, 11], [3, 3, 4]]), rows=source, kv_cache=cache, speculate=Speculation(vocab, 0))
    union = [set(source.speculated[0][b].reshape(-1).tolist()) for b in range(2)]
    model(torch.tensor([[17], [250]]), rows=source, kv_cache=cache)
    nxt = torch.stack(source.requested[-2:], dim=-2)[:, 0]
    assert all(set(nxt[b].reshape(-1).tolist()) <= union[b] for b in range(2))


def test_speculation_refusals(run_dir):
    model, source = _loaded(run_dir)
    ids = torch.tensor([[1, 2]])
    with pytest.raises(EngramTierError, match="cannot speculate"):
        model(ids, rows=FlatRowSource(source.rows), kv_cache=model.new_cache(1, 8), speculate=Speculation(2, 0))
    with pytest.raises(EngramTierError, match="needs Engram layers and a KV cache"):
        model(ids, rows=source, speculate=Speculation(2, 0))
    with pytest.raises(EngramTierError, match="after_block must name one of the model's blocks 0..2"):
        model(ids, rows=source, kv_cache=model.new_cache(1, 8), speculate=Speculation(2, 3))
    with pytest.raises(EngramTierError, match="k must lie in 1.."):
        model(ids, rows=source, kv_cache=model.new_cache(1, 8), speculate=Speculation(0, 1))


def test_generation_with_speculation_is_unchanged_and_finds_its_rows_cached(run_dir, tmp_path):
    loaded = load_model(run_dir)
    model, last = loaded.model, loaded.model.config.n_layers - 1
    hierarchy = Hierarchy.from_dict({"tier": [
        {"name": "dram", "capacity": model.hasher.n_rows, "policy": "lru", "model": "dram"}, {"name": "nvme", "model": "nvme"}]})
    outputs, records = {}, {}
    for k in (0, 1):
        with open_for_model(model, _lmdb(run_dir, tmp_path / str(k)), hierarchy, device="cpu") as table:
            texts, totals = generate(model, loaded.tokenizer, table, ["The interpreter reads"], max_new_tokens=8,
                                     batch_size=1, speculate=Speculation(1, last) if k else None)
            table.finish()
            outputs[k], records[k], stats = texts, table.step_records(), table.stats()
        assert totals["speculation"] == (None if k == 0 else {"k": 1, "after_block": last})
        assert stats["speculative_steps"] == (stats["steps"] if k else 0)
    assert outputs[1] == outputs[0]
    demand = [r for r in records[1] if not r["speculative"]]
    # greedy decoding feeds the top-1 token: after the prompt, every step's rows were speculated the step before
    assert all(r["served"]["nvme"] == 0 for r in demand[1:]) and len(demand) > 2
    assert sum(r["served"]["nvme"] for r in records[0][1:]) > 0  # without it, decode steps read new rows from the store


def test_generate_command_speculates_and_refuses_a_missing_block(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Python is\nThe interpreter\n")
    argv = ["generate", "--run", str(run_dir), "--prompts", str(prompts), "--max-new-tokens", "4", "--device", "cpu",
            "--table", str(_lmdb(run_dir, tmp_path)), "--speculate", "2"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["speculation"] == {"k": 2, "after_block": 1}  # default: the second-to-last of 3 blocks
    assert result["table"]["speculative_steps"] == result["table"]["steps"] == result["steps"]
    assert main([*argv, "--speculate-after", "2"]) == 0
    assert "speculation: top 2 after block 2" in capsys.readouterr().out
    assert main([*argv, "--speculate-after", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "after_block must name one of the model's blocks 0..2" in err
    assert main([*argv[:-2], "--speculate-after", "1"]) == 2
    assert "give --speculate K too" in capsys.readouterr().err


def test_measured_speculation_counts_coverage_off_the_tables_own_steps(table_path):
    with open_table(HIERARCHY, table_path, device="cpu", record_trace=True) as table:
        table.prefetch(torch.arange(10)).wait()  # the first position: no step before it, not a decode step
        table.speculate(torch.arange(20, 30))
        table.prefetch(torch.tensor([20, 21, 40, 41])).wait()  # half of it was speculated
        table.prefetch(torch.tensor([50, 20])).wait()  # no speculation before it; 20 is cached from before
        table.finish()
        m = measured_speculation(table.step_records(), table.recorded_trace())
    assert m["decode_steps"] == 2 and m["coverage"] == 2 / 6 and m["extra_rows_per_step"] == 8 / 2
    assert m["resident_fraction"] == 3 / 6 and m["steps_all_resident"] == 0.0
    assert m["stall_s_p50"] <= m["stall_s_p99"] and m["speculative_fetch_s_per_step"] > 0


def test_teacher_forced_decode_speculates_every_step(run_dir, tmp_path):
    loaded = load_model(run_dir)
    windows = torch.randint(0, loaded.model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    with open_for_model(loaded.model, _lmdb(run_dir, tmp_path), device="cpu", record_trace=True) as table:
        seconds = decode_teacher_forced(loaded.model, table, windows, speculate=Speculation(2, 1))
        table.finish()
        records = table.step_records()
    assert len(seconds) == 6 and [r["speculative"] for r in records] == [False, True] * 6
    assert all(r["requests"] == 2 * 2 * loaded.model.hasher.rows_per_token for r in records if r["speculative"])
