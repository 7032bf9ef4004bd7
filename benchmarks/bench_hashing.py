"""Hashing throughput: the numba kernel (1 and 2 threads) against the straightforward numpy
formulation, on 10M tokens with 2 orders x 8 heads, in the same run. Prints one JSON object.

    python benchmarks/bench_hashing.py [--tokens 10000000] [--repeats 3]
"""

import argparse
import json
import time

import numpy as np

from engramtier.model.hashing import HashConfig, NgramHasher, hash_reference_numpy
from engramtier.model.tokenizer import load_compressed_tokenizer
from engramtier.provenance import machine_info


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tok = load_compressed_tokenizer("deepseek")
    config = HashConfig(vocab_size=tok.vocab_size, pad_id=tok.pad_id, table_sizes=(1_000_003, 1_000_003),
                        layer_ids=(1,), n_heads=8)
    hasher = NgramHasher(config)
    tokens = np.random.default_rng(0).integers(0, tok.vocab_size, size=args.tokens)
    starts = np.array([0, tokens.size])
    out = np.empty((tokens.size, 1, config.heads_per_layer), dtype=np.int64)
    hasher.hash_ragged(tokens, starts, out=out)  # compile and touch the reused buffer

    result = {"benchmark": "hashing", "tokens": args.tokens, "orders": 2, "heads": 8, "layers": 1,
              "rows_per_token": hasher.rows_per_token}
    for threads in (1, 2):
        seconds = best_of(args.repeats, lambda threads=threads: hasher.hash_ragged(tokens, starts, threads=threads, out=out))
        result[f"numba_{threads}_threads_tokens_per_s"] = args.tokens / seconds

    # numpy works on 1M-token slices (its temporaries for 10M tokens would dominate otherwise)
    sample = tokens[: min(args.tokens, 1_000_000)][None, :]
    np.testing.assert_array_equal(hash_reference_numpy(hasher, sample)[0], out[: sample.shape[1]])
    seconds = best_of(args.repeats, lambda: hash_reference_numpy(hasher, sample))
    result["numpy_tokens_per_s"] = sample.shape[1] / seconds
    result["speedup_1_thread_vs_numpy"] = result["numba_1_threads_tokens_per_s"] / result["numpy_tokens_per_s"]
    result["speedup_2_threads_vs_numpy"] = result["numba_2_threads_tokens_per_s"] / result["numpy_tokens_per_s"]
    result["identical_ids"] = True
    result["machine"] = machine_info()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
