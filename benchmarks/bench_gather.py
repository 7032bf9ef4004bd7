"""Host-to-device row gather: zero-copy over UVA vs gather-then-copy, as fractions of pinned bandwidth.

A pinned host table of --rows rows of --row-bytes (default 264: DeepSeek-V4.1-Flash's fp8[256]+ue8m0
row) is read --batches times at --ids random rows per batch (a prefill step's distinct rows), by

    pinned_copy       one large pinned -> device copy_ (the bus's measured ceiling)
    gather_then_copy  index_select on the CPU into a pinned staging buffer, then one async copy
    uva_gather        index_select on the GPU reading the pinned rows in place (engramtier.tiers.uva)

each timed with CUDA events after a warm-up, reported as GB/s of row bytes delivered and as a fraction
of pinned_copy. Without CUDA (or with --device cpu) only the CPU gather is timed and the device columns
say why they are missing, so the script runs anywhere. Prints one JSON object.

    python benchmarks/bench_gather.py [--device cuda] [--rows 4000000] [--ids 65536]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from engramtier.provenance import machine_info
from engramtier.tiers.uva import device_view, gather_rows, gather_then_copy


def timed(fn, repeats: int, cuda: bool) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs (CUDA events on a GPU), after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--row-bytes", type=int, default=264)
    parser.add_argument("--ids", type=int, default=65536, help="rows per gather")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_gather: --device cuda but CUDA is not available here; use --device cpu")
    host = torch.randint(0, 256, (args.rows, args.row_bytes), dtype=torch.uint8, pin_memory=cuda)
    ids = torch.randint(0, args.rows, (args.ids,))
    gathered_bytes = args.ids * args.row_bytes
    staging = torch.empty((args.ids, args.row_bytes), dtype=torch.uint8, pin_memory=cuda)
    out = torch.empty((args.ids, args.row_bytes), dtype=torch.uint8, device=args.device)
    result = {"benchmark": "gather", "machine": machine_info(), "device": args.device, "rows": args.rows,
              "row_bytes": args.row_bytes, "ids_per_gather": args.ids, "repeats": args.repeats}
    seconds = {"gather_then_copy": timed(lambda: gather_then_copy(host, ids, staging, out), args.repeats, cuda)}
    if cuda:
        block = host[: max(args.ids, min(args.rows, (256 << 20) // args.row_bytes))]
        block_out = torch.empty_like(block, device="cuda")
        copy_s = timed(lambda: block_out.copy_(block, non_blocking=True), args.repeats, cuda)
        pinned_gbps = block.numel() / copy_s / 1e9
        view, ids_dev = device_view(host), ids.cuda()
        seconds["uva_gather"] = timed(lambda: gather_rows(view, ids_dev, out), args.repeats, cuda)
        assert torch.equal(out.cpu(), host[ids]), "uva gather returned other rows"
        result["pinned_copy_gbps"] = pinned_gbps
    else:
        result["pinned_copy_gbps"] = None
        result["uva_gather"] = "skipped: no CUDA device (run with --device cuda on a GPU machine)"
    for name, s in seconds.items():
        gbps = gathered_bytes / s / 1e9
        result[name] = {"seconds": s, "gbps": gbps,
                        "fraction_of_pinned_copy": gbps / result["pinned_copy_gbps"] if cuda else None}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
