"""End-to-end tokens/s of an Engram model, its table flat on the compute device vs served from tiers.

One random-initialised Engram model (random weights compute exactly what trained ones of the same shape
compute, so speed and bytes are real) runs one workload through several row sources in the same run:

    flat       the table as one tensor on the compute device (`FlatRowSource`): on a GPU, all in HBM
    tiered     a `TieredTable` for each --hierarchies name and each --dram-gather mode ("copy": a CPU
               gather into pinned staging, then one copy; "uva": the GPU gathers from the pinned slab):
                 gpu-dram-nvme  gpu (LRU, --gpu-fraction; emulated in host memory on a CPU) -> dram
                                (S3-FIFO, --dram-fraction) -> nvme, inclusive, from a cold start
                 dram           dram (LRU) holding every row -> nvme, timed after one untimed pass, so
                                every row the workload reads is in pinned DRAM (the paper's offload)
                 dram-nvme      dram (S3-FIFO, --dram-fraction) -> nvme, from a cold start

The workload is the shipped sample text (prefill: --batch windows of --seq-len tokens per step; decode:
--requests sequences, one token per step after a --prompt-len prompt), or with --sequences N, N
sequences with lengths Uniform(--min-len, --max-len) (the shape of nano-vLLM's benchmark, which the
Engram paper's offload experiment runs), batched in length order as a length-bucketing scheduler
would, so that little of each batch is padding. Their tokens (--token-source) are consecutive windows
of the sample text, read again from its start when it runs out (real n-gram statistics, which is what
a dram cache over nvme lives on), or uniform random ids (nano-vLLM's; almost every row is then read
once, the worst case for any cache).

Per mode and tiered configuration, one checking replay (`engramtier.serve.replay.replay`, on the first
--check-batches batches) proves the outputs bitwise equal to the flat table's and the simulator's hit
counts equal to the runtime's; then --repeats timed passes alternate flat and every tiered
configuration (a fresh table each time; --cold-nvme drops the LMDB file from the page cache first, so
nvme reads come from the disk) and the best of each is reported: tokens/s, tiered/flat, and the stall
(time the compute waited for rows) as a fraction of the timed pass. Timed passes compute no digests;
they synchronise the device once, at their end.

The table's rows are drawn N(0, 0.02) on the compute device in seeded blocks (`SeededRows`), so a table
of tens of GB is made in seconds and streamed into LMDB without a host copy. --build-only builds the
LMDB table and exits (benchmarks/gpu_check.sh builds it while the GPU tests run). Tables are built into
--dir once and reused. Prints one JSON object.

``--backbone 1b`` (d_model 2048, 20 blocks) is meant for a GPU, for the stall target (<= 1% with the
prefetch hidden behind the blocks before the first Engram layer).

``--parts`` picks what runs: ``e2e`` (the above, the default), and the runtime at DeepSeek-V4.1-Flash's
scale without a model (`runtime_scale.py`): ``state`` (memory and time to open vs table rows, 1M..768M),
``steps`` (a step of cached rows vs a flat gather, 16..65,536 rows) and ``store`` (LMDB reads, warm
and cold, vs a plain sorted read loop).

    python benchmarks/bench_runtime.py --parts state,steps,store

    python benchmarks/bench_runtime.py [--quick] [--device cuda] [--backbone 1b]
    # the paper's offload experiment at a 20 GB table (gpu_check.sh adds --check-batches 4 --repeats 1):
    python benchmarks/bench_runtime.py --device cuda --backbone 1b --engram-layers 2 --hash-heads 8 \\
        --row-dim 80 --table-size 7900001 --sequences 512 --min-len 100 --max-len 1024 --batch 16 \\
        --modes prefill --hierarchies dram,dram-nvme --dram-gather copy,uva --readers 4 --matmul-precision high
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import runtime_scale
import torch

from engramtier.cache.hierarchy import Hierarchy
from engramtier.model.backbone import EngramLM
from engramtier.model.hashing import NgramHasher
from engramtier.model.rowsource import FlatRowSource
from engramtier.model.train import TrainConfig, build_model_config, tokenize_corpus
from engramtier.provenance import machine_info
from engramtier.serve.replay import forward_inputs, replay, text_batches
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.nvme import drop_page_cache
from engramtier.tiers.open import open_table
from engramtier.tiers.tiered import TieredTable
from engramtier.trace.build import StepPlan
from engramtier.trace.sources import sample_text_dir

BACKBONES = {
    "small": dict(d_model=128, n_layers=4, n_heads=4, engram_layers=(1, 3)),
    "1b": dict(d_model=2048, n_layers=20, n_heads=16, engram_layers=(2, 12)),
}
HIERARCHIES = ("gpu-dram-nvme", "dram", "dram-nvme")
PARTS = ("e2e", "state", "steps", "store")
WARMED = ("dram",)  # timed after one untimed pass through the same table
GATHERS = ("copy", "uva")
MODES = ("prefill", "decode")


class SeededRows:
    """A table's rows, N(0, 0.02) like an untrained table's, drawn on ``device`` in blocks of
    ``BLOCK_ROWS`` rows, each block from its own seeded generator: any block can be drawn again alone,
    so the LMDB build streams the table without a host copy of it and the flat table holds the same
    bytes. The identity names the device and torch version, whose generators decide the bytes."""

    BLOCK_ROWS = 1 << 18
    STD = 0.02

    def __init__(self, hasher: NgramHasher, row_format, device: torch.device, seed: int = 0) -> None:
        described = RandomRows.for_hasher(hasher, row_format.kind, row_format.dim, seed)  # manifest only, no rows
        self.format, self.device, self.seed = row_format, device, seed
        self.n_rows, self.row_bytes = described.n_rows, described.row_bytes
        self.manifest = {**described.manifest, "source": f"seeded N(0, {self.STD}) blocks on {device.type}, seed {seed}"}
        self.identity = {"seeded_blocks": {
            "n_rows": self.n_rows, "format": row_format.kind, "dim": row_format.dim, "seed": seed,
            "block_rows": self.BLOCK_ROWS, "std": self.STD, "fingerprint": hasher.config.fingerprint,
            "torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        }}
        self._host_block = (-1, None)

    def block(self, b: int) -> torch.Tensor:
        """Rows of block ``b`` (uint8 [rows, row_bytes]) on the device."""
        lo, hi = b * self.BLOCK_ROWS, min((b + 1) * self.BLOCK_ROWS, self.n_rows)
        generator = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + b)
        values = torch.randn((hi - lo, self.format.dim), generator=generator, device=self.device) * self.STD
        return self.format.encode(values)

    def rows(self, ids: np.ndarray, out: np.ndarray) -> None:
        """Rows ``ids`` into host ``out``; the build asks for runs of consecutive ids, so a block is drawn once."""
        blocks = ids // self.BLOCK_ROWS
        for b in np.unique(blocks).tolist():
            if self._host_block[0] != b:
                self._host_block = (b, self.block(b).cpu().numpy())
            pick = blocks == b
            out[pick] = self._host_block[1][ids[pick] - b * self.BLOCK_ROWS]

    def tensor(self) -> torch.Tensor:
        """Every row, uint8 [n_rows, row_bytes] on the device."""
        out = torch.empty((self.n_rows, self.row_bytes), dtype=torch.uint8, device=self.device)
        for b in range(-(-self.n_rows // self.BLOCK_ROWS)):
            out[b * self.BLOCK_ROWS : (b + 1) * self.BLOCK_ROWS] = self.block(b)
        return out


def model_config(args, out: Path):
    """The model's config, tokenizer and the sample text's token stream: the backbone's shape with the
    table shape of the arguments."""
    shape = {**BACKBONES[args.backbone], **({"engram_layers": tuple(args.engram_layers)} if args.engram_layers else {})}
    cfg = TrainConfig(text=str(sample_text_dir()), out=str(out), tokenizer=args.tokenizer,
                      seq_len=max(args.seq_len, args.max_len), table_size=args.table_size, hash_heads=args.hash_heads,
                      row_dim=args.row_dim, **shape)
    tokenizer, name, data = tokenize_corpus(cfg.text, cfg.tokenizer, out, cfg.val_fraction, cfg.seq_len)
    return build_model_config(cfg, tokenizer, name), tokenizer, data.train


def lmdb_table(rows: SeededRows, out: Path) -> Path:
    """The LMDB copy of ``rows`` under ``out``, built on first use (resumable)."""
    path = out / f"table-{rows.identity['seeded_blocks']['fingerprint'][:16]}-{rows.format.kind}{rows.format.dim}.lmdb"
    build_lmdb_table(rows, path, progress=False)
    return path


def sequence_batches(stream: np.ndarray | None, vocab_size: int, pad: int, plan: StepPlan, n: int, min_len: int,
                     max_len: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` sequences with lengths Uniform(min_len, max_len), in length order, ``plan.batch`` (prefill) or
    ``plan.requests`` (decode) per batch, right-padded with ``pad``: consecutive windows of the token
    ``stream`` (wrapping around at its end), or uniform random ids below ``vocab_size`` when it is None."""
    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(min_len, max_len + 1, n))
    starts = np.cumsum(lengths) - lengths
    per_batch = plan.batch if plan.mode == "prefill" else plan.requests
    batches = []
    for lo in range(0, n, per_batch):
        group = lengths[lo : lo + per_batch]
        batch = np.full((group.size, int(group.max())), pad, np.int64)
        for i, (start, length) in enumerate(zip(starts[lo : lo + per_batch].tolist(), group.tolist(), strict=True)):
            batch[i, :length] = rng.integers(0, vocab_size, length) if stream is None \
                else stream[np.arange(start, start + length) % stream.size]
        batches.append(torch.from_numpy(batch))
    return batches


def hierarchy(name: str, n_rows: int, args) -> Hierarchy:
    dram = {"name": "dram", "capacity": max(20, int(n_rows * args.dram_fraction)), "policy": "s3fifo", "model": "dram"}
    tiers = {
        "gpu-dram-nvme": [{"name": "gpu", "capacity": max(1, int(n_rows * args.gpu_fraction)), "policy": "lru",
                           "model": "hbm"}, dram],
        "dram": [{"name": "dram", "capacity": n_rows, "policy": "lru", "model": "dram"}],
        "dram-nvme": [dram],
    }[name]
    return Hierarchy.from_dict({"mode": "inclusive", "tier": [*tiers, {"name": "nvme", "model": "nvme"}]})


def open_tiered(model, lmdb_dir: Path, args, name: str, gather: str, record_trace: bool = False) -> TieredTable:
    return open_table(hierarchy(name, model.hasher.n_rows, args), lmdb_dir,
                            expect_fingerprint=model.config.engram.fingerprint, readers=args.readers,
                            device=args.device, layers_per_step=len(model.config.engram.layer_ids),
                            record_trace=record_trace, dram_gather=gather)


@torch.no_grad()
def timed_pass(model, rows, batches: list[torch.Tensor], plan: StepPlan, device: torch.device) -> float:
    """Seconds to run every step of ``batches`` reading ``rows``, one device synchronisation at the end."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    for batch in batches:
        batch = batch.to(device)
        cache = None
        for ids, fresh in forward_inputs(batch, plan):
            if fresh:
                cache = model.new_cache(batch.shape[0], batch.shape[1])
            model(ids, rows=rows, kv_cache=cache)
    sync()
    return time.perf_counter() - start


def tiered_pass(model, lmdb_dir: Path, args, name: str, gather: str, batches, plan) -> dict:
    """One timed pass through a fresh table (after an untimed one for the `WARMED` hierarchies): its
    seconds, stall, fetch time and each tier's share of the rows served, for the timed steps only."""
    if args.cold_nvme:
        drop_page_cache(lmdb_dir)
    device = torch.device(args.device)
    with open_tiered(model, lmdb_dir, args, name, gather) as table:
        if name in WARMED:
            timed_pass(model, table, batches, plan, device)
            table.finish()
        first = len(table.step_records())
        seconds = timed_pass(model, table, batches, plan, device)
        table.finish()
        steps = table.step_records()[first:]
    unique = max(1, sum(s["unique"] for s in steps))
    return {"seconds": seconds, "stall_seconds": sum(s["stall_s"] for s in steps),
            "fetch_seconds": sum(s["fetch_s"] for s in steps),
            "served_share": {tier: round(sum(s["served"][tier] for s in steps) / unique, 4) for tier in steps[0]["served"]}}


def comma_list(choices):
    def parse(text: str) -> list[str]:
        names = [t for t in text.split(",") if t]
        bad = [t for t in names if t not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: give a comma list of {', '.join(choices)}")
        return names
    return parse


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer tokens (about a minute on 2 CPU cores)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="small", choices=sorted(BACKBONES))
    parser.add_argument("--engram-layers", type=lambda t: [int(x) for x in t.split(",")], default=None,
                        help="blocks holding an Engram layer, e.g. 2 (default: the backbone's)")
    parser.add_argument("--dir", default="/tmp/engramtier-bench-runtime", help="where model files and tables go")
    parser.add_argument("--tokenizer", default="bpe:2048")
    parser.add_argument("--table-size", type=int, default=50021, help="rows per sub-table")
    parser.add_argument("--hash-heads", type=int, default=4, help="hash heads per n-gram order")
    parser.add_argument("--row-dim", type=int, default=32, help="bf16 values per row")
    parser.add_argument("--seq-len", type=int, default=128, help="text windows' length")
    parser.add_argument("--sequences", type=int, default=0, help="sequences of Uniform(--min-len, --max-len) tokens "
                        "instead of the sample text's windows")
    parser.add_argument("--token-source", default="text", choices=["text", "random"], help="the --sequences' tokens")
    parser.add_argument("--min-len", type=int, default=100, help="shortest random sequence")
    parser.add_argument("--max-len", type=int, default=1024, help="longest random sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per prefill step")
    parser.add_argument("--requests", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=None, help="text tokens per mode (default 16384, quick 4096)")
    parser.add_argument("--modes", type=comma_list(MODES), default=list(MODES))
    parser.add_argument("--hierarchies", type=comma_list(HIERARCHIES), default=["gpu-dram-nvme"])
    parser.add_argument("--dram-gather", type=comma_list(GATHERS), default=["copy"], help="uva needs --device cuda")
    parser.add_argument("--gpu-fraction", type=float, default=1 / 64)
    parser.add_argument("--dram-fraction", type=float, default=1 / 8)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--cold-nvme", action="store_true", help="drop the LMDB table from the page cache before each timed pass")
    parser.add_argument("--check-batches", type=int, default=None, help="batches the checking replay runs (default all)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes of each (default 3, quick 2)")
    parser.add_argument("--matmul-precision", default="highest", choices=["highest", "high", "medium"],
                        help="float32 matmuls: high allows TF32 on a GPU")
    parser.add_argument("--build-only", action="store_true", help="build the LMDB table into --dir and exit")
    parser.add_argument("--parts", type=comma_list(PARTS), default=["e2e"], help="what to run (see above)")
    ints = lambda text: [int(float(x)) for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--state-rows", type=ints, default=[1_000_000, 100_000_000, runtime_scale.V41_ROWS],
                        help="table rows to open (state)")
    parser.add_argument("--step-sizes", type=ints, default=[16, 64, 256, 1024, 4096, 16384, 65536],
                        help="rows per step (steps)")
    parser.add_argument("--step-rounds", type=int, default=5, help="alternating rounds per step size (steps)")
    parser.add_argument("--store-rows", type=int, default=2_000_000, help="rows of the LMDB table (store)")
    parser.add_argument("--store-sizes", type=ints, default=[256, 4096, 65536], help="rows per read (store)")
    parser.add_argument("--store-readers", type=ints, default=[1, 4], help="reader threads to compare (store)")
    args = parser.parse_args()
    if "uva" in args.dram_gather and args.device != "cuda":
        parser.error("--dram-gather uva has the GPU read pinned host memory; it needs --device cuda")
    if not 1 <= args.min_len <= args.max_len:
        parser.error(f"--min-len {args.min_len} and --max-len {args.max_len} must satisfy 1 <= min <= max")
    return args


def scale_parts(args) -> dict:
    """The parts that need no model (`runtime_scale`)."""
    out = {}
    if "state" in args.parts:
        out["fresh_memory"] = runtime_scale.fresh_memory()
        out["state"] = runtime_scale.state(args.state_rows, [("256MiB", "2GiB"), ("32MiB", "128MiB")])
    if "steps" in args.parts:
        out["steps"] = runtime_scale.steps(args.step_sizes, runtime_scale.V41_ROWS, args.step_rounds)
    if "store" in args.parts:
        folder = Path(args.dir)
        folder.mkdir(parents=True, exist_ok=True)
        out["store"] = runtime_scale.store(args.store_sizes, args.store_rows, args.store_readers, folder)
    return out


def main() -> None:
    args = parse_args()
    if "e2e" not in args.parts:
        print(json.dumps({"benchmark": "runtime-scale", "machine": machine_info(), **scale_parts(args)}, indent=2))
        return
    torch.manual_seed(0)
    torch.set_float32_matmul_precision(args.matmul_precision)
    device = torch.device(args.device)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config, tokenizer, stream = model_config(args, out)
    hasher = NgramHasher(config.engram)
    rows = SeededRows(hasher, config.format, device)
    lmdb_dir = lmdb_table(rows, out)
    table_info = {"rows": rows.n_rows, "row_bytes": rows.row_bytes, "bytes": rows.n_rows * rows.row_bytes,
                  "path": str(lmdb_dir)}
    if args.build_only:
        print(json.dumps({"benchmark": "runtime-table", "table": table_info,
                          "seconds": time.perf_counter() - started}, indent=2))
        return
    flat = FlatRowSource(rows.tensor(), device)
    model = EngramLM(config, tokenizer.lookup, trainable_table=False, seed=0).to(device).eval()
    setup_s = time.perf_counter() - started
    max_tokens = args.max_tokens or (4096 if args.quick else 16384)
    repeats = args.repeats or (2 if args.quick else 3)
    seq_len = args.max_len if args.sequences else args.seq_len
    plans = {
        "prefill": StepPlan(mode="prefill", batch=args.batch, seq_len=seq_len),
        "decode": StepPlan(mode="decode", requests=args.requests, seq_len=seq_len, prompt_len=args.prompt_len),
    }
    configs = [(name, gather) for name in args.hierarchies for gather in args.dram_gather]
    results = {}
    for mode in args.modes:
        plan = plans[mode]
        if args.sequences:
            batches = sequence_batches(stream if args.token_source == "text" else None, config.vocab_size,
                                       tokenizer.base.end_token_id, plan, args.sequences, args.min_len, args.max_len)
        else:
            batches = text_batches(tokenizer, sample_text_dir(), plan, max_tokens if mode == "prefill" else max_tokens // 4)
        checks = {}
        for name, gather in configs:
            with open_tiered(model, lmdb_dir, args, name, gather, record_trace=True) as table:
                checks[name, gather], _ = replay(model, flat, table, batches[: args.check_batches], plan)
        flat_s, tiered = [], {c: [] for c in configs}
        for _ in range(repeats):
            flat_s.append(timed_pass(model, flat, batches, plan, device))
            for name, gather in configs:
                tiered[name, gather].append(tiered_pass(model, lmdb_dir, args, name, gather, batches, plan))
        tokens = sum(b.numel() for b in batches)
        entries = {}
        for (name, gather), passes in tiered.items():
            best, check = min(passes, key=lambda p: p["seconds"]), checks[name, gather]
            entries[f"{name}/{gather}"] = {
                "hierarchy": name, "dram_gather": gather, "warmed": name in WARMED,
                "bitwise_equal": check["bitwise_equal"], "simulator_hits_equal": check["simulated"]["hits_equal"],
                "checked_steps": check["steps"],
                "tokens_per_s": tokens / best["seconds"], "vs_flat": min(flat_s) / best["seconds"],
                "seconds_all": [p["seconds"] for p in passes],
                "stall_fraction": best["stall_seconds"] / best["seconds"], **best,
                "check_tiers": {t["name"]: {"hit_rate": round(t["hit_rate"], 4), "bytes_read": t["bytes_read"],
                                            "emulated": t["emulated"]} for t in check["tiers"]},
            }
        results[mode] = {"batches": len(batches), "tokens": tokens, "flat_tokens_per_s": tokens / min(flat_s),
                         "flat_seconds_all": flat_s, "tiered": entries}
    print(json.dumps({
        "benchmark": "runtime",
        "machine": machine_info(),
        "device": args.device,
        "matmul_precision": args.matmul_precision,
        "backbone": {"name": args.backbone, **BACKBONES[args.backbone], "engram_layers": list(config.engram.layer_ids),
                     "dense_params": sum(p.numel() for p in model.parameters())},
        "workload": ({"sequences": args.sequences, "lengths": f"Uniform({args.min_len}, {args.max_len})",
                      "token_source": args.token_source, "text_tokens": int(stream.size), "batched": "in length order"}
                     if args.sequences else {"text": "shipped sample", "max_tokens": max_tokens}),
        "table": table_info,
        "hierarchies": {name: hierarchy(name, rows.n_rows, args).to_dict() for name in args.hierarchies},
        "readers": args.readers,
        "cold_nvme": args.cold_nvme,
        "repeats": repeats,
        "setup_seconds": setup_s,
        "results": results,
        **scale_parts(args),
    }, indent=2))


if __name__ == "__main__":
    main()
