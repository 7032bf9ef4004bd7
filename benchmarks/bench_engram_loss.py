"""Does Engram lower the loss? The same backbone trained with and without Engram layers, side by side.

Same seed, same documents, same batches, same number of steps: the backbone weights start equal (the
Engram parameters draw from a generator of their own), so the difference is the Engram layers, whose
extra parameters are almost all table rows. Validation loss is measured on held-out documents, with
the table rounded to its row format (the saved model's loss). Prints one JSON object.

The two trainings run at the same time, one process and one thread each, so that both see the same
machine: on a shared or busy machine, runs one after the other would be timed under different loads
(and two-thread runs of a model this small lose much of their time waiting on each other).

The text is the Python documentation sources (/usr/share/doc/python3.11/html/_sources) when installed,
else the sample shipped with engramtier. A byte-level BPE tokenizer of 8192 tokens is learned from the
training documents first: over DeepSeek's 129k vocabulary the output layer alone would take most of a
CPU's time.

    python benchmarks/bench_engram_loss.py [--steps 600] [--out DIR]
"""

import argparse
import json
import math
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

from engramtier.documents import text_documents
from engramtier.model.train import TrainConfig, split_documents, train, train_bpe_tokenizer
from engramtier.provenance import machine_info
from engramtier.trace.sources import sample_text_dir

PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default=str(PYTHON_DOCS if PYTHON_DOCS.is_dir() else sample_text_dir()))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8192, help="BPE tokens learned from the training documents")
    parser.add_argument("--eval-tokens", type=int, default=65536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="keep both run directories here (default: a temporary directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        base = TrainConfig(text=args.text, out="", steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                           d_model=args.d_model, eval_every=0, eval_tokens=args.eval_tokens, seed=args.seed)
        t0 = time.perf_counter()
        train_texts, _ = split_documents([doc for _, doc in text_documents([args.text])], base.val_fraction)
        tokenizer = train_bpe_tokenizer(train_texts, args.vocab, out / "tokenizer.json")
        tokenizer_seconds = time.perf_counter() - t0

        configs = [replace(base, out=str(out / name), tokenizer=str(tokenizer), engram=engram)
                   for name, engram in (("baseline", False), ("engram", True))]
        t0 = time.perf_counter()
        with ProcessPoolExecutor(len(configs), mp_context=multiprocessing.get_context("spawn")) as pool:
            baseline, engram = pool.map(_train_on_one_thread, configs)
        wall_seconds = time.perf_counter() - t0

    hash_config = engram["model_config"]["engram"]
    result = {
        "benchmark": "engram_loss",
        "text": args.text,
        "documents": {"train": baseline["train_documents"], "held_out": baseline["val_documents"]},
        "tokens": {"train": baseline["train_tokens"], "seen_per_run": baseline["train_tokens_seen"],
                   "held_out_evaluated": baseline["val_tokens_evaluated"]},
        "tokenizer": {**baseline["tokenizer"], "name": f"bpe:{args.vocab}", "seconds_to_learn": tokenizer_seconds},
        "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "seed": args.seed,
        "model": {k: baseline["model_config"][k] for k in ("d_model", "n_layers", "n_heads", "d_mlp", "tie_embeddings")},
        "engram_config": {"layers": hash_config["layer_ids"], "orders": list(range(2, len(hash_config["table_sizes"]) + 2)),
                          "hash_heads": hash_config["n_heads"], "subtable_rows_min": hash_config["table_sizes"][0],
                          "row_dim": engram["model_config"]["row_dim"], "row_format": engram["model_config"]["row_format"],
                          "fingerprint": engram["fingerprint"]},
        "baseline": _run_numbers(baseline),
        "engram": {**_run_numbers(engram), "val_loss_float32_table": engram["val_loss_float32_table"]},
        "val_loss_reduction": baseline["val_loss"] - engram["val_loss"],
        "val_perplexity_ratio": math.exp(engram["val_loss"] - baseline["val_loss"]),
        "engram_beats_baseline": engram["val_loss"] < baseline["val_loss"],
        "step_time_ratio": engram["seconds_per_step"] / baseline["seconds_per_step"],
        "runs": "concurrent, one process and one torch thread each",
        "wall_seconds_both_runs": wall_seconds,
        "machine": machine_info(),
    }
    print(json.dumps(result, indent=2))


def _train_on_one_thread(cfg: TrainConfig) -> dict:
    torch.set_num_threads(1)
    return train(cfg, progress=False)


def _run_numbers(summary: dict) -> dict:
    return {"val_loss": summary["val_loss"], "val_perplexity": math.exp(summary["val_loss"]),
            "final_train_loss": summary["final_train_loss"], "params": summary["params"],
            "train_seconds": summary["train_seconds"], "seconds_per_step": summary["seconds_per_step"]}


if __name__ == "__main__":
    main()
