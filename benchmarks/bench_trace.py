"""Trace building, text -> row trace file: tokens/s split into read+tokenize, hash, schedule and
write, for prefill and decode steps; and the trace file's size per row id, set side by side with
zstd over raw int64 and over 4-byte ids (no delta, no shuffle). Prints one JSON object.

    python benchmarks/bench_trace.py [--text DIR] [--max-mb 4] [--out DIR]

Reads the Python docs' reST sources from Debian's python3.11-doc when installed, else the shipped
sample. The tokenizer is loaded (and the hash kernel compiled) before anything is timed.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

from engramtier.documents import TEXT_SUFFIXES
from engramtier.model.tokenizer import load_compressed_tokenizer
from engramtier.provenance import machine_info
from engramtier.trace.build import StepPlan, hasher_for, write_trace
from engramtier.trace.sources import TextSource, sample_text_dir
from engramtier.trace.tracefile import load_trace

DEBIAN_DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def pick_files(root: Path, max_bytes: int) -> list[str]:
    """The first files (sorted) under ``root`` up to ``max_bytes`` of text."""
    files, total = [], 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES):
        if total >= max_bytes:
            break
        files.append(str(path))
        total += path.stat().st_size
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--text", type=Path, default=DEBIAN_DOCS if DEBIAN_DOCS.is_dir() else sample_text_dir())
    parser.add_argument("--max-mb", type=float, default=4.0, help="text to read, in MB (default 4)")
    parser.add_argument("--out", type=Path, default=None, help="where the trace files go (default: a temp dir)")
    args = parser.parse_args()

    files = pick_files(args.text, int(args.max_mb * 1e6))
    load_compressed_tokenizer("deepseek")
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="bench_trace_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "trace_build", "text": str(args.text), "files": len(files),
              "text_bytes": sum(Path(f).stat().st_size for f in files), "tokenizer": "deepseek",
              "layers": [1, 15], "heads": 8, "max_ngram": 3, "table_size": 1_000_003}
    plans = {"prefill": StepPlan("prefill", batch=8, seq_len=2048),
             "decode": StepPlan("decode", requests=32, seq_len=2048, prompt_len=128)}
    for name, plan in plans.items():
        source = TextSource(files)
        hasher = hasher_for(source, 1_000_003, (1, 15), 8, 3, 0)
        hasher.hash_ragged(np.zeros(8, np.int64), np.array([0, 8]))  # compile outside the timing
        path = out_dir / f"{name}.trace"
        start = time.perf_counter()
        summary = write_trace(source, hasher, plan, path)
        wall = time.perf_counter() - start
        seconds = summary["seconds"]
        result[name] = {
            "tokens": summary["tokens"], "steps": summary["steps"], "row_ids": summary["rows"],
            "rows_per_token": hasher.rows_per_token, "wall_s": wall, "tokens_per_s": summary["tokens"] / wall,
            "seconds": seconds,
            "tokens_per_s_by_stage": {k: summary["tokens"] / v for k, v in seconds.items() if v > 0},
            "file_bytes": summary["bytes"], "file_bytes_per_row_id": summary["bytes"] / summary["rows"],
        }
        result[name]["compression_vs_int64"] = 8.0 / result[name]["file_bytes_per_row_id"]

    # the same row ids under plainer codings (one zstd frame per 1M ids, level 3, as the file uses)
    rows = load_trace(out_dir / "prefill.trace").rows
    compressor = zstandard.ZstdCompressor(level=3)
    per_row = {}
    for coding, data in (("zstd_raw_int64", rows), ("zstd_uint32", rows.astype(np.uint32))):
        size = sum(len(compressor.compress(data[i : i + (1 << 20)].tobytes())) for i in range(0, rows.size, 1 << 20))
        per_row[coding] = size / rows.size
    per_row["trace_file_delta_zigzag_shuffle"] = result["prefill"]["file_bytes_per_row_id"]
    result["bytes_per_row_id_prefill"] = per_row
    result["machine"] = machine_info()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
