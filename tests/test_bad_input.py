"""Every subcommand, driven through the real command line, over a table of malformed inputs: each must
end with exit status 2 and exactly one line on stderr (no traceback, no crash), and leave no output file
behind, complete or half-written.

Each parametrized test runs its case, over inputs written once per module (`fixture_paths`), in this
process through `engramtier.cli.main` (what the console script runs, with its standard streams
captured), except those that need a limit of the process itself (``max_file_bytes``: ulimit -f), which
run in a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import subprocess
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

import pytest

from engramtier.cli import main

ENGRAMTIER = [sys.executable, "-m", "engramtier.cli"]
TIMEOUT_S = 120


class Case(NamedTuple):
    name: str
    argv: str  # formatted with the fixture paths, then split on spaces ("''" is an empty argument)
    words: tuple[str, ...] = ()  # each must appear in the error line
    stdin: bytes | None = None
    max_file_bytes: int | None = None  # ulimit -f for the command (run in a subprocess)
    outputs: tuple[str, ...] = ()  # paths that must not exist afterwards (nor their .part files)


TRACE_SHAPE = "--table-size 1009 --layers 1 --heads 2 --quiet"
ZIPF = f"--synthetic-zipf 1.0 --vocab 1000 --tokens 5000 {TRACE_SHAPE}"

CASES = [
    # trace: arguments
    Case("trace-no-output", "trace {text}", ("-o/--output", "--help")),
    Case("trace-no-input", "trace -o {out}/a.trace", ("no input",), outputs=("{out}/a.trace",)),
    Case("trace-both-inputs", f"trace {{text}} {ZIPF} -o {{out}}/a.trace", ("not both",)),
    Case("trace-heads-huge", f"trace {ZIPF} --heads 100000 -o {{out}}/a.trace", ("heads",), outputs=("{out}/a.trace",)),
    Case("trace-heads-zero", f"trace {ZIPF} --heads 0 -o {{out}}/a.trace", ("--heads",)),
    Case("trace-heads-word", f"trace {ZIPF} --heads many -o {{out}}/a.trace", ("--heads", "integer")),
    Case("trace-table-1e18", f"trace {ZIPF} --table-size 1e18 -o {{out}}/a.trace", ("--table-size",)),
    Case("trace-table-huge", f"trace {ZIPF} --table-size 1000000000000000000 -o {{out}}/a.trace", ("table size",)),
    Case("trace-table-zero", f"trace {ZIPF} --table-size 0 -o {{out}}/a.trace", ("--table-size",)),
    Case("trace-layers-empty", f"trace {ZIPF} --layers , -o {{out}}/a.trace", ("--layers",)),
    Case("trace-layers-words", f"trace {ZIPF} --layers a,b -o {{out}}/a.trace", ("--layers",)),
    Case("trace-layers-negative", f"trace {ZIPF} --layers=-1 -o {{out}}/a.trace", ("--layers",)),
    Case("trace-layers-repeated", f"trace {ZIPF} --layers 2,2 -o {{out}}/a.trace", ("layer ids",)),
    Case("trace-max-ngram-1", f"trace {ZIPF} --max-ngram 1 -o {{out}}/a.trace", ("n-gram",)),
    Case("trace-max-ngram-huge", f"trace {ZIPF} --max-ngram 100 -o {{out}}/a.trace", ("n-gram",)),
    Case("trace-batch-zero", "trace {text} --batch 0 -o {out}/a.trace", ("--batch",)),
    Case("trace-seq-len-negative", "trace {text} --seq-len=-5 -o {out}/a.trace", ("--seq-len",)),
    Case("trace-requests-zero", "trace {text} --mode decode --requests 0 -o {out}/a.trace", ("--requests",)),
    Case("trace-mode-bogus", "trace {text} --mode sideways -o {out}/a.trace", ("--mode",)),
    Case("trace-seed-negative", f"trace {ZIPF} --seed=-1 -o {{out}}/a.trace", ("--seed",)),
    Case("trace-seed-huge", f"trace {ZIPF} --seed 99999999999999999999 -o {{out}}/a.trace", ("--seed",)),
    Case("trace-zipf-zero", f"trace {ZIPF} --synthetic-zipf 0 -o {{out}}/a.trace", ("--synthetic-zipf",)),
    Case("trace-zipf-nan", f"trace {ZIPF} --synthetic-zipf nan -o {{out}}/a.trace", ("--synthetic-zipf",)),
    Case("trace-row-bytes-zero", f"trace {ZIPF} --row-bytes 0 -o {{out}}/a.trace", ("--row-bytes",)),
    Case("trace-chunk-rows-zero", f"trace {ZIPF} --chunk-rows 0 -o {{out}}/a.trace", ("--chunk-rows",)),
    Case("trace-tokenizer-unknown", "trace {text} --tokenizer nope -o {out}/a.trace", ("tokenizer",)),
    Case("trace-tokenizer-missing-file", "trace {text} --tokenizer {out}/none.json -o {out}/a.trace", ("tokenizer",)),
    Case("trace-preset-unknown", "trace {text} --preset dsv9 -o {out}/a.trace", ("dsv9",)),
    # trace: inputs
    Case("trace-missing-source", "trace {out}/missing.txt -o {out}/a.trace", ("missing.txt", "does not exist")),
    Case("trace-binary-source", "trace {binary_txt} -o {out}/a.trace", ("binary",), outputs=("{out}/a.trace",)),
    Case("trace-latin1-source", "trace {latin1_txt} -o {out}/a.trace", ("UTF-8",), outputs=("{out}/a.trace",)),
    Case("trace-broken-gzip", "trace {broken_gz} -o {out}/a.trace", ("gzip",), outputs=("{out}/a.trace",)),
    Case("trace-bad-jsonl", "trace {bad_jsonl} -o {out}/a.trace", ("line 2",), outputs=("{out}/a.trace",)),
    Case("trace-stdin-random", f"trace - {TRACE_SHAPE} -o {{out}}/s.trace", ("standard input",),
         stdin=os.urandom(4096), outputs=("{out}/s.trace",)),
    Case("trace-stdin-latin1", f"trace - {TRACE_SHAPE} -o {{out}}/s.trace", ("standard input", "UTF-8"),
         stdin="caf\u00e9 cr\u00e8me br\u00fbl\u00e9e".encode("latin-1"), outputs=("{out}/s.trace",)),
    Case("trace-stdin-empty", f"trace - {TRACE_SHAPE} -o {{out}}/s.trace", ("standard input",), stdin=b""),
    # trace: outputs
    Case("trace-output-is-dir", f"trace {ZIPF} -o {{out}}", ("is a directory",)),
    Case("trace-output-missing-dir", f"trace {ZIPF} -o {{out}}/nowhere/a.trace", ("does not exist",)),
    Case("trace-output-empty", f"trace {ZIPF} -o ''", ("empty",)),
    Case("trace-output-unwritable", f"trace {ZIPF} -o /proc/a.trace", ("/proc/a.trace",)),
    Case("trace-output-file-limit", f"trace --synthetic-zipf 1.0 --vocab 100000 --tokens 400000 {TRACE_SHAPE} "
         "-o {out}/big.trace", ("big.trace", "File too large"), max_file_bytes=64 << 10, outputs=("{out}/big.trace",)),
    # stats
    Case("stats-missing", "stats {out}/none.trace", ("does not exist",)),
    Case("stats-toml", "stats {experiment}", ("not an engramtier trace",)),
    Case("stats-binary", "stats {binary_txt}", ("not an engramtier trace",)),
    Case("stats-empty-file", "stats {empty}", ("trace",)),
    Case("stats-directory", "stats {out}", ("trace",)),
    Case("stats-truncated", "stats {truncated_trace}", ("trace",)),
    Case("stats-flipped-header", "stats {flipped_trace}", ("corrupt",)),
    Case("stats-json-is-dir", "stats {trace} --json {out}", ("--json", "is a directory")),
    Case("stats-json-missing-dir", "stats {trace} --json {out}/nowhere/s.json", ("--json", "does not exist")),
    Case("stats-json-unwritable", "stats {trace} --json /proc/s.json", ("/proc/s.json",)),
    # export
    Case("export-no-format", "export {trace} -o {out}/e.csv", ("--format",)),
    Case("export-bad-format", "export {trace} --format parquet -o {out}/e.csv", ("--format",)),
    Case("export-object-size-zero", "export {trace} --format csv --object-size 0 -o {out}/e.csv", ("--object-size",)),
    Case("export-bad-stream", "export {trace} --format csv --stream rows -o {out}/e.csv", ("--stream",)),
    Case("export-toml", "export {experiment} --format csv -o {out}/e.csv", ("not an engramtier trace",),
         outputs=("{out}/e.csv",)),
    Case("export-flipped-header", "export {flipped_trace} --format oracle -o {out}/e.bin", ("corrupt",),
         outputs=("{out}/e.bin",)),
    Case("export-output-is-dir", "export {trace} --format csv -o {out}", ("is a directory",)),
    Case("export-output-unwritable", "export {trace} --format csv -o /proc/e.csv", ("/proc/e.csv",)),
    Case("export-output-file-limit", "export {trace} --format csv -o {out}/big.csv", ("big.csv", "File too large"),
         max_file_bytes=16 << 10, outputs=("{out}/big.csv",)),
    # mrc
    Case("mrc-shards-zero", "mrc {trace} --shards 0 --out {out}/m", ("--shards",)),
    Case("mrc-shards-above-one", "mrc {trace} --shards 2 --out {out}/m", ("--shards",)),
    Case("mrc-seeds-zero", "mrc {trace} --seeds 0 --out {out}/m", ("--seeds",)),
    Case("mrc-sizes-empty", "mrc {trace} --sizes , --out {out}/m", ("--sizes",)),
    Case("mrc-sizes-bad-unit", "mrc {trace} --sizes 10XB --out {out}/m --quiet", ("10XB",)),
    Case("mrc-toml", "mrc {experiment} --out {out}/m", ("not an engramtier trace",)),
    Case("mrc-out-is-file", "mrc {trace} --out {experiment} --quiet", ("is a file",)),
    Case("mrc-policy-without-mini", "mrc {trace} --policy arc --out {out}/m", ("--policy needs --mini",)),
    Case("mrc-mini-and-shards", "mrc {trace} --mini 0.1 --shards 0.1 --out {out}/m", ("give one of them",)),
    Case("mrc-mini-zero", "mrc {trace} --mini 0 --out {out}/m", ("--mini",)),
    Case("mrc-mini-unknown-policy", "mrc {trace} --mini 0.1 --policy arcc --out {out}/m", ("--policy", "did you mean 'arc'")),
    Case("mrc-sweep-no-exact", "mrc {trace} --mini 0.1 --sweep --no-exact --out {out}/m", ("--sweep", "--no-exact")),
    # simulate
    Case("simulate-missing-toml", "simulate {out}/none.toml --out {out}/r", ("no such file",)),
    Case("simulate-trace-as-toml", "simulate {trace} --out {out}/r", ("trace",)),
    Case("simulate-binary-toml", "simulate {binary_txt} --out {out}/r", ("binary_txt",)),
    Case("simulate-latin1-toml", "simulate {latin1_toml} --out {out}/r", ("latin1.toml",)),
    Case("simulate-directory-toml", "simulate {out} --out {out}/r", ("no such file",)),
    Case("simulate-hierarchy-is-trace", "simulate --hierarchy {trace} {trace} --out {out}/r", ("trace",)),
    Case("simulate-toml-as-trace", "simulate --hierarchy {hierarchy} {experiment} --out {out}/r --quiet",
         ("not an engramtier trace",)),
    Case("simulate-window-negative", "simulate {experiment} --window-s=-1 --out {out}/r", ("--window-s",)),
    Case("simulate-window-nan", "simulate {experiment} --window-s nan --out {out}/r", ("--window-s",)),
    Case("simulate-both-windows", "simulate {experiment} --window-s 1e-3 --window-per-token-s 1e-6 --out {out}/r --quiet",
         ("not both",)),
    Case("simulate-layers-string", "simulate {toml_layers_string} --out {out}/r --quiet", ("layers",)),
    Case("simulate-seed-negative", "simulate {toml_seed_negative} --out {out}/r --quiet", ("seed",)),
    Case("simulate-table-absurd", "simulate {toml_table_absurd} --out {out}/r --quiet", ("table",)),
    Case("simulate-malformed-toml", "simulate {toml_malformed} --out {out}/r", ("malformed TOML",)),
    Case("simulate-preset-unknown", "simulate {experiment} --preset dsv9 --out {out}/r --quiet", ("dsv9",)),
    Case("simulate-out-is-file", "simulate {experiment} --out {experiment} --quiet", ("is a file",)),
    # sweep
    Case("sweep-workers-zero", "sweep {experiment} --workers 0", ("--workers",)),
    Case("sweep-stages-empty", "sweep {experiment} --stages ,", ("--stages",)),
    Case("sweep-stages-unknown", "sweep {experiment} --stages speed", ("speed",)),
    Case("sweep-empty-sweep-table", "sweep {toml_sweep_empty} --out {out}/w --quiet", ("[sweep]",)),
    Case("sweep-cost-alone", "sweep {experiment} --stages cost --out {out}/w --quiet", ("cost",)),
    Case("sweep-trace-as-toml", "sweep {trace} --out {out}/w", ("trace",)),
    # train
    Case("train-no-text", "train --steps 1", ("--text",)),
    Case("train-missing-text", "train --text {out}/none --out {out}/t", ("does not exist",)),
    Case("train-steps-zero", "train --text {text} --steps 0 --out {out}/t", ("--steps",)),
    Case("train-d-model-zero", "train --text {text} --d-model 0 --out {out}/t", ("--d-model",)),
    Case("train-d-model-heads", "train --text {text} --d-model 30 --heads 4 --out {out}/t", ("--d-model",)),
    Case("train-engram-layer-outside", "train --text {text} --layers 2 --engram-layers 5 --out {out}/t", ("--engram-layers",)),
    Case("train-hash-heads-huge", "train --text {text} --hash-heads 100000 --out {out}/t", ("heads",)),
    Case("train-max-ngram-1", "train --text {text} --max-ngram 1 --out {out}/t", ("n-gram",)),
    Case("train-lr-negative", "train --text {text} --lr=-1 --out {out}/t", ("--lr",)),
    Case("train-row-format", "train --text {text} --row-format fp4 --out {out}/t", ("--row-format",)),
    Case("train-out-is-file", "train --text {text} --out {experiment}", ("is a file",)),
    Case("train-file-limit", "train --text {text} --tokenizer bpe:300 --steps 2 --seq-len 8 --eval-tokens 64 --quiet "
         "--out {out}/tl", ("File too large",), max_file_bytes=64 << 10,
         outputs=("{out}/tl/model.safetensors", "{out}/tl/summary.json")),
    # build-table
    Case("build-no-source", "build-table {out}/b", ("--from-table", "--random")),
    Case("build-random-no-rows", "build-table {out}/b --random", ("--rows",)),
    Case("build-rows-zero", "build-table {out}/b --random --rows 0", ("--rows",)),
    Case("build-rows-negative", "build-table {out}/b --random --rows=-5", ("--rows",)),
    Case("build-dim-zero", "build-table {out}/b --random --rows 10 --dim 0", ("--dim",)),
    Case("build-page-zero", "build-table {out}/b --random --rows 10 --page-kib 0", ("--page-kib",)),
    Case("build-format-bogus", "build-table {out}/b --random --rows 10 --format fp4 --quiet", ("fp4",)),
    Case("build-compression-bogus", "build-table {out}/b --random --rows 10 --compression lz4 --quiet", ("lz4",)),
    Case("build-map-size-bogus", "build-table {out}/b --random --rows 10 --map-size 12QB --quiet", ("--map-size",)),
    Case("build-preset-unknown", "build-table {out}/b --random --preset dsv9 --quiet", ("dsv9",)),
    Case("build-table-size-alone", "build-table {out}/b --random --rows 10 --table-size 5 --quiet", ("--table-size",)),
    Case("build-from-missing", "build-table {out}/b --from-table {out}/none --quiet", ("none",)),
    Case("build-from-not-table", "build-table {out}/b --from-table {out} --quiet", ("manifest",)),
    Case("build-profile-missing", "build-table {out}/b --random --rows 10 --profile {out}/none.npy --quiet", ("none.npy",)),
    Case("build-profile-binary", "build-table {out}/b --random --rows 10 --profile {binary_txt} --quiet", ("binary_txt",)),
    Case("build-out-is-file", "build-table {experiment} --random --rows 10 --quiet", ("experiment.toml",)),
    Case("build-out-unwritable", "build-table /proc/b --random --rows 10 --quiet", ("/proc/b",)),
    # report
    Case("report-missing", "report {out}/none", ("no such run directory",)),
    Case("report-file", "report {experiment}", ("run directory",)),
    Case("report-not-a-run", "report {out}", ("not a run directory",)),
    Case("report-corrupt-config", "report {corrupt_run}", ("not valid JSON",)),
    Case("report-file-limit", "report {mrc_run}", ("report", "File too large"), max_file_bytes=2048,
         outputs=("{mrc_run}/report.html", "{mrc_run}/report.md")),
    # replay, generate, remote, quickstart
    Case("replay-batch-zero", "replay --batch 0", ("--batch",)),
    Case("replay-missing-run", "replay --run {out}/none --out {out}/rp", ("none",)),
    Case("generate-no-run", "generate --prompts {text}", ("--run",)),
    Case("generate-missing-run", "generate --run {out}/none", ("none",), stdin=b"Once upon a time\n"),
    Case("generate-prompts-dir", "generate --run {out}/none --prompts {text}", ("--prompts",)),
    Case("generate-prompts-binary", "generate --run {out}/none", ("standard input",), stdin=bytes(range(256))),
    Case("generate-top-k-negative", "generate --run {out}/none --top-k=-1", ("--top-k",)),
    Case("remote-no-action", "remote", ("ACTION",)),
    Case("remote-populate-missing-table", "remote populate --table {out}/none.lmdb --storage backend=redis "
         "url=redis://127.0.0.1:1", ("none.lmdb",)),
    Case("remote-populate-bad-batch", "remote populate --table {lmdb} --batch-rows 0 --storage backend=redis",
         ("--batch-rows",)),
    Case("quickstart-out-is-file", "quickstart --out {experiment} --tiny --quiet", ("is a file",)),
    Case("unknown-command", "frobnicate", ("frobnicate",)),
    # numbers too large for what they size (each was a traceback once), and memory a command cannot have
    Case("trace-vocab-2-63", f"trace {ZIPF} --vocab 9223372036854775808 -o {{out}}/a.trace", ("--vocab",)),
    Case("mrc-sizes-1e30", "mrc {trace} --sizes 1e30 --out {out}/m --quiet", ("--sizes", "1e30")),
    Case("build-table-map-size-1e20", "build-table {out}/t --random --rows 500 --dim 16 --map-size 1e20B --quiet",
         ("--map-size",)),
    Case("build-table-page-kib-4gib", "build-table {out}/t --random --rows 500 --dim 16 --page-kib 4194304 --quiet",
         ("--page-kib",)),
    Case("build-table-dim-1e8", "build-table {out}/t --random --rows 500 --dim 100000000 --quiet", ("--dim",)),
    Case("replay-row-dim-1e8", "replay --row-dim 100000000 --out {out}/r", ("--row-dim",)),
    Case("train-lr-1e308", "train --text {text} --lr 1e308 --steps 1 --out {out}/tr", ("--lr",)),
    Case("trace-memory", f"trace - {TRACE_SHAPE} --batch 4611686018427387904 --seq-len 1000000 -o {{out}}/s.trace",
         ("would hold about", "available", "--batch"), stdin=b"a stream whose length nobody knows", outputs=("{out}/s.trace",)),
    Case("mrc-sizes-1e30-bytes", "mrc {trace} --sizes 1000000000000000000000000000000B --out {out}/m --quiet",
         ("--sizes", "4 EiB"), outputs=("{out}/m",)),
    Case("build-table-map-size-1e8-tib", "build-table {out}/t --random --rows 500 --dim 16 --map-size 100000000TiB "
         "--quiet", ("--map-size", "4 EiB"), outputs=("{out}/t",)),
    Case("remote-url-scheme", "remote populate --table {lmdb} --hierarchy {http_hierarchy}", ("Redis url",)),
    # a policy module of the user's that cannot make a policy
    Case("policy-missing-parameter", "simulate --hierarchy {needs_arg_hierarchy} {trace} --out {out}/p --quiet",
         ("NeedsArg", "must")),
    Case("policy-builder-raises", "simulate --hierarchy {raising_builder_hierarchy} {trace} --out {out}/p --quiet",
         ("raising_builder", "builder broke")),
    Case("policy-wrong-arity", "simulate --hierarchy {wrong_arity_hierarchy} {trace} --out {out}/p --quiet",
         ("WrongArity", "lookup")),
    Case("policy-exits-on-import", "simulate --hierarchy {exits_hierarchy} {trace} --out {out}/p --quiet",
         ("exits", "sys.exit(0)")),
]

USER_POLICIES = """
class FIFO:
    def __init__(self, capacity):
        self.capacity, self.held = capacity, []
    def lookup(self, key, t):
        return key in self.held
    def admit(self, key, t):
        self.held.append(key)
        return self.held.pop(0) if len(self.held) > self.capacity else -1
    def remove(self, key):
        return False
    def contains(self, key):
        return key in self.held
    def occupancy(self):
        return len(self.held)
    def hit_victim(self):
        return -1


class NeedsArg(FIFO):
    def __init__(self, capacity, must):
        super().__init__(capacity)


def raising_builder(capacity, ctx):
    raise RuntimeError("builder broke")


class WrongArity(FIFO):
    def lookup(self, key):
        return False
"""


def _write_fixtures(root: Path) -> dict[str, str]:
    """The inputs the cases name: good ones to misuse and bad ones to refuse."""
    out = root / "out"
    out.mkdir()
    paths = {"out": out}
    text = root / "text"
    text.mkdir()
    (text / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    paths["text"] = text
    trace = root / "small.trace"
    _succeed(["trace", *ZIPF.split(), "-o", str(trace)])
    paths["trace"] = trace
    data = trace.read_bytes()
    paths["truncated_trace"] = root / "truncated.trace"
    paths["truncated_trace"].write_bytes(data[: len(data) // 2])
    at = data.index(b'"row_bytes"') + 3
    paths["flipped_trace"] = root / "flipped.trace"
    paths["flipped_trace"].write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    lmdb = root / "table.lmdb"
    _succeed(["build-table", str(lmdb), "--random", "--rows", "500", "--dim", "16", "--quiet"])
    paths["lmdb"] = lmdb
    hierarchy = ('[hierarchy]\nmode = "inclusive"\n[[hierarchy.tier]]\nname = "dram"\ncapacity = 200\n'
                 'policy = "lru"\nmodel = "dram"\n[[hierarchy.tier]]\nname = "nvme"\nmodel = "nvme"\n'
                 '[timing]\nwindow_s = 1e-3\ncompute_s = 2e-3\n')
    experiment = f'[trace]\nsource = "file"\nfile = "{trace}"\n' + hierarchy + '[sweep]\nsizes = [100, 400]\n'
    tomls = {
        "hierarchy": hierarchy,
        "experiment": experiment,
        "toml_layers_string": '[trace]\nsource = "zipf"\ntokens = 2000\nlayers = "1,15"\n' + hierarchy,
        "toml_seed_negative": '[trace]\nsource = "zipf"\ntokens = 2000\nseed = -3\n' + hierarchy,
        "toml_table_absurd": '[trace]\nsource = "zipf"\ntokens = 2000\ntable_size = 1000000000000000000\n' + hierarchy,
        "toml_malformed": '[trace\nsource = "zipf"\n',
        "toml_sweep_empty": experiment.replace("sizes = [100, 400]\n", ""),
    }
    (root / "user_policies.py").write_text(USER_POLICIES)
    (root / "exits.py").write_text("import sys\n\nsys.exit(0)\n")
    one_tier = ('mode = "inclusive"\n[[tier]]\nname = "dram"\ncapacity = 50\npolicy = "{policy}"\nmodel = "dram"\n'
                '[[tier]]\nname = "nvme"\nmodel = "nvme"\n[timing]\nwindow_s = 1e-3\n')
    for name, policy in (("needs_arg", "user_policies:NeedsArg"), ("raising_builder", "user_policies:raising_builder"),
                         ("wrong_arity", "user_policies:WrongArity"), ("exits", "exits:FIFO")):
        tomls[f"{name}_hierarchy"] = one_tier.format(policy=policy)
    tomls["http_hierarchy"] = ('mode = "inclusive"\n[[tier]]\nname = "dram"\ncapacity = 50\npolicy = "lru"\n'
                               'model = "dram"\n[[tier]]\nname = "remote"\nmodel = "remote"\n[tier.storage]\n'
                               'backend = "redis"\nurl = "http://127.0.0.1:1"\n')
    for name, body in tomls.items():
        paths[name] = root / f"{name.removeprefix('toml_')}.toml"
        paths[name].write_text(body)
    paths["experiment"] = root / "experiment.toml"
    paths["experiment"].write_text(experiment)
    paths["latin1_toml"] = root / "latin1.toml"
    paths["latin1_toml"].write_bytes('[trace]\nsource = "zipf"\n# caf\u00e9\n'.encode("latin-1"))
    paths["binary_txt"] = root / "binary_txt.txt"
    paths["binary_txt"].write_bytes(bytes(range(256)) * 8)
    paths["latin1_txt"] = root / "latin1.txt"
    paths["latin1_txt"].write_bytes("na\u00efve caf\u00e9 text".encode("latin-1"))
    paths["broken_gz"] = root / "broken.txt.gz"
    paths["broken_gz"].write_bytes(b"not gzip at all")
    paths["bad_jsonl"] = root / "bad.jsonl"
    paths["bad_jsonl"].write_text('{"text": "fine"}\n{oops}\n')
    paths["empty"] = root / "empty.trace"
    paths["empty"].write_bytes(b"")
    mrc_run = root / "mrc_run"
    _succeed(["mrc", str(trace), "--out", str(mrc_run), "--seeds", "1", "--quiet"])
    for report in ("report.html", "report.md"):
        (mrc_run / report).unlink()
    paths["mrc_run"] = mrc_run
    corrupt_run = root / "corrupt_run"
    corrupt_run.mkdir()
    (corrupt_run / "config.json").write_text('{"command": "simulate", ')
    paths["corrupt_run"] = corrupt_run
    return {k: str(v) for k, v in paths.items()}


def _argv(case: Case, paths: dict[str, str]) -> list[str]:
    return ["" if a == "''" else a for a in case.argv.format(**paths).split()]


def _succeed(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(argv) == 0, err.getvalue()


def _run(case: Case, paths: dict[str, str]) -> subprocess.CompletedProcess:
    """The case's exit status and captured streams (bytes), in this process unless it needs a file limit."""
    argv = _argv(case, paths)
    if case.max_file_bytes:
        return _run_limited(argv, case.max_file_bytes, paths["out"])
    out, err = io.StringIO(), io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO(case.stdin or b""), encoding="utf-8")
    here = os.getcwd()
    os.chdir(paths["out"])
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                _replaced(sys, "stdin", stdin):
            try:
                code = main(argv)
            except SystemExit as done:  # e.g. a policy module that exits on import
                code = done.code
            except Exception:  # what the console script would die of: this case fails, the others still run
                code = 1
                traceback.print_exc()
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(argv, code, out.getvalue().encode(), err.getvalue().encode())


@contextlib.contextmanager
def _replaced(owner, name: str, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _run_limited(argv: list[str], limit: int, cwd: str) -> subprocess.CompletedProcess:
    def file_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    try:
        return subprocess.run([*ENGRAMTIER, *argv], capture_output=True, timeout=TIMEOUT_S, preexec_fn=file_limit,
                              cwd=cwd)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -999, b"", f"hung past {TIMEOUT_S} s".encode())


@pytest.fixture(scope="module")
def fixture_paths(tmp_path_factory) -> dict[str, str]:
    return _write_fixtures(tmp_path_factory.mktemp("bad_input"))


def test_case_names_are_unique():
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_in_one_line(case: Case, fixture_paths):
    result = _run(case, fixture_paths)  # each case where its test runs: the workers share the cases out
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, f"exit {result.returncode} (negative: killed by a signal)\n{err}"
    assert "Traceback" not in err, err
    # what a terminal shows: a progress bar cleared with "\r" before the error line leaves no line
    lines = [shown for line in err.split("\n") if (shown := line.rsplit("\r", 1)[-1]).strip()]
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("engramtier"), err
    for word in case.words:
        assert word.format(**fixture_paths) in lines[0], lines[0]
    for output in case.outputs:
        path = Path(output.format(**fixture_paths))
        assert not path.exists(), f"{path} left behind"
        assert not list(path.parent.glob(path.name + ".part*")), f"a partial {path.name} left behind"
