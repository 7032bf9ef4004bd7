"""What a read from one tier costs: a latency-per-wave plus bandwidth model, its defaults, and its fit.

A tier serves a step's rows in *waves*: ``parallelism`` requests are in flight at once, each wave waits
one ``latency_s``, and all the bytes also have to cross the tier's narrowest link at ``bandwidth_Bps``:

    fetch_seconds(n, row_bytes) = latency_s * ceil(n / parallelism) + n * row_bytes / bandwidth_Bps

(0 for n = 0). The two terms are added, not overlapped: a small batch is latency-bound (one wave and a
few bytes), a large one bandwidth-bound, and the sum is within a factor of two of the max of the two
in between, which is as close as figures from spec sheets deserve. The simulator charges each tier
this for the rows it served in a step; the runtime measures real reads and `calibrate` fits the two
coefficients to them, so a calibrated model replaces the published one below.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from engramtier.errors import EngramTierError, refuse_unknown


@dataclass(frozen=True)
class TierModel:
    """Cost of reading rows from one tier: ``latency_s`` per wave of ``parallelism`` requests in
    flight, plus the bytes at ``bandwidth_Bps`` (bytes of row payload per second)."""

    name: str
    latency_s: float
    bandwidth_Bps: float
    parallelism: int = 1

    def __post_init__(self) -> None:
        # Values may come from TOML (an int latency, a float parallelism): keep them as float, float, int.
        latency, bandwidth, parallelism = (_number(self, f) for f in ("latency_s", "bandwidth_Bps", "parallelism"))
        if not (math.isfinite(latency) and latency >= 0):
            raise EngramTierError(f"tier model '{self.name}': latency_s must be a finite number >= 0, got {latency}")
        if not bandwidth > 0:  # also refuses NaN; +inf means bytes cost nothing
            raise EngramTierError(f"tier model '{self.name}': bandwidth_Bps must be > 0, got {bandwidth}")
        if not (math.isfinite(parallelism) and parallelism == int(parallelism) and parallelism >= 1):
            raise EngramTierError(
                f"tier model '{self.name}': parallelism must be a whole number of requests >= 1, got {parallelism}"
            )
        object.__setattr__(self, "latency_s", latency)
        object.__setattr__(self, "bandwidth_Bps", bandwidth)
        object.__setattr__(self, "parallelism", int(parallelism))

    def fetch_seconds(self, n_rows, row_bytes: int):
        """Seconds to read ``n_rows`` rows (an int, or an array of per-step counts) of ``row_bytes`` each."""
        n = np.asarray(n_rows, dtype=np.int64)
        waves = (n + (self.parallelism - 1)) // self.parallelism
        seconds = self.latency_s * waves + n * (float(row_bytes) / self.bandwidth_Bps)
        return float(seconds) if seconds.ndim == 0 else seconds

    def rows_within(self, window_s, row_bytes: int, n_max):
        """The most rows, at most ``n_max`` (an int, or per-step counts), that `fetch_seconds` reads
        within ``window_s`` (one number, or one per step): the model inverted, by bisection on it, so
        that a count it returns is exactly one `fetch_seconds` keeps inside the window however the
        latency and bandwidth terms round (a closed form would be off by one at wave edges)."""
        n_max = np.asarray(n_max, dtype=np.int64)
        window = np.broadcast_to(np.asarray(window_s, dtype=np.float64), n_max.shape)
        lo = np.zeros(n_max.shape, np.int64)  # fetch_seconds(lo) <= window always (0 rows cost 0)
        hi = n_max.copy()
        fits = self.fetch_seconds(hi, row_bytes) <= window
        lo[fits] = hi[fits]
        while np.any(lo < hi):  # invariant: lo fits, hi + 1 does not (or hi = n_max)
            mid = hi - (hi - lo) // 2
            ok = self.fetch_seconds(mid, row_bytes) <= window
            lo = np.where(ok, mid, lo)
            hi = np.where(ok, hi, mid - 1)
        return lo

    def to_dict(self) -> dict:
        return asdict(self)


def _number(model: TierModel, field: str) -> float:
    value = getattr(model, field)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise EngramTierError(f"tier model '{model.name}': {field} must be a number, got {value!r}")
    return float(value)


def default_tier_models() -> dict[str, TierModel]:
    """Published-figure models for the tiers an Engram table can live in (each figure's source inline).

    A model covers the whole path of a row to the GPU's gather buffer. The figures are per device
    (one GPU, one PCIe x16 link, one CXL x8 module, one SSD, one NIC); calibrate on real hardware
    before trusting a stall estimate to better than a factor of two.
    """
    return {
        # GPU-resident rows gathered by a kernel in HBM. Bandwidth: NVIDIA H100 SXM5 datasheet, 3.35 TB/s
        # HBM3 peak, derated to 2 TB/s because 160-264 B rows at random addresses use whole 32-B sectors
        # but lose DRAM row-buffer locality (profiles of irregular H100 accesses report 40-70% of peak).
        # Latency: one kernel launch, ~5 us (CUDA launch overhead, NVIDIA CUDA C++ Best Practices Guide).
        # Parallelism: every resident thread has a row in flight, 132 SMs x 2048 threads ~ 2**18.
        "hbm": TierModel("hbm", latency_s=5e-6, bandwidth_Bps=2.0e12, parallelism=1 << 18),
        # Host DRAM gathered by CPU threads into pinned staging and copied to the GPU. Bandwidth: the PCIe 5.0
        # x16 link, 64 GB/s theoretical per direction (PCI-SIG PCIe 5.0 base spec, 32 GT/s x 16 lanes),
        # ~50 GB/s measured for pinned host-to-device copies on H100 hosts (CUDA bandwidthTest /
        # nvbandwidth). Latency: a DDR5 load from a random address, ~100 ns (Intel Memory Latency Checker on
        # Sapphire Rapids). Parallelism: 8 gather threads x 8 rows in flight each (a Golden Cove core has 16
        # L1D fill buffers, Intel 64 and IA-32 Optimization Reference Manual; a 160-B row spans 3 lines).
        # The fixed launch cost of the copy (a few us per step) is not modeled; `calibrate` captures it.
        "dram": TierModel("dram", latency_s=100e-9, bandwidth_Bps=50e9, parallelism=64),
        # CXL Type-3 memory expander read like DRAM, then over the same PCIe link. Latency: local DRAM
        # + 170 ns (CXL memory measures 2-5x local latency on three real expanders, Liu et al., "Exploring
        # and Evaluating Real-world CXL", arXiv 2405.14209; published Type-3 expanders span +100-250 ns). Bandwidth: one
        # PCIe 5.0 x8 module, up to 36 GB/s (Micron CZ120 product brief, MLC 2:1 read/write; Samsung CMM-D
        # is in the same class), below the x16 link to the GPU, so the module is the bound.
        "cxl": TierModel("cxl", latency_s=270e-9, bandwidth_Bps=36e9, parallelism=64),
        # Random 4 KiB reads on a datacenter NVMe SSD: one page read per row (rows of one page are not
        # merged here). Latency: ~80 us per 4 KiB read, typical QD1 figure of TLC datacenter drives (AnandTech
        # enterprise NVMe QD1 random-read reviews). Parallelism: queue depth 128; 128 / 80 us = 1.6 M reads/s,
        # inside the Samsung PM1743 spec sheet's 2.5 M random-read IOPS (PCIe 5.0 x4, 13 GB/s sequential),
        # and 1.6 M x 4 KiB = 6.5 GB/s, the ~6 GB/s of random-read throughput used as the bandwidth.
        "nvme": TierModel("nvme", latency_s=80e-6, bandwidth_Bps=6e9, parallelism=128),
        # A remote key-value store over RDMA. Latency: one-sided RDMA read ~2 us (Kalia et al., "Design
        # Guidelines for High Performance RDMA Systems", USENIX ATC 2016) plus a key lookup round trip, ~5 us
        # per get. Bandwidth: a 200 Gb/s NIC, 25 GB/s (NVIDIA ConnectX-6 HDR datasheet). Parallelism: 256
        # outstanding gets across the client's queue pairs.
        "remote": TierModel("remote", latency_s=5e-6, bandwidth_Bps=25e9, parallelism=256),
    }


def tier_model(name: str) -> TierModel:
    """The default model called ``name``; an unknown name is refused with the closest known one."""
    models = default_tier_models()
    refuse_unknown([name], models, what="tier model")
    return models[name]


def calibrate(samples: Iterable[tuple[int, int, float]], *, name: str = "calibrated",
              parallelism: int = 1) -> TierModel:
    """Fit ``latency_s`` and ``bandwidth_Bps`` to measured ``(n_rows, row_bytes, seconds)`` reads.

    ``parallelism`` is the reader's known concurrency (queue depth, threads), so each sample's wave count
    is known and the model is linear in (latency, 1 / bandwidth). Both are fitted non-negative, minimising
    the *relative* error of each sample: reads span microseconds to milliseconds, and an absolute fit
    would ignore the small reads that alone reveal the latency.
    """
    data = np.array([tuple(s) for s in samples], dtype=np.float64).reshape(-1, 3)
    if data.shape[0] < 2:
        raise EngramTierError(
            f"calibrate '{name}': need at least 2 (n_rows, row_bytes, seconds) samples, got {data.shape[0]}"
        )
    n, row_bytes, seconds = data.T
    if np.any(n < 1) or np.any(row_bytes < 1) or not np.all(np.isfinite(data)):
        raise EngramTierError(f"calibrate '{name}': every sample needs n_rows >= 1 and row_bytes >= 1 (finite numbers)")
    if np.any(seconds <= 0):
        raise EngramTierError(f"calibrate '{name}': every sample needs seconds > 0; drop reads that measured no time")
    probe = TierModel(name, 0.0, 1.0, parallelism)  # validates parallelism
    waves = np.ceil(n / probe.parallelism)
    design = np.column_stack([waves, n * row_bytes]) / seconds[:, None]  # rows scaled to relative error
    latency, seconds_per_byte = _nonnegative_least_squares(design, np.ones_like(seconds))
    if latency == 0 and seconds_per_byte == 0:
        raise EngramTierError(f"calibrate '{name}': the samples fit no positive cost; check the units (seconds)")
    bandwidth = 1.0 / seconds_per_byte if seconds_per_byte > 0 else math.inf
    return TierModel(name, latency_s=float(latency), bandwidth_Bps=float(bandwidth), parallelism=probe.parallelism)


def _nonnegative_least_squares(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """argmin ||a x - b|| over x >= 0 for two columns: the unconstrained optimum if it is feasible, else
    the best fit on one column alone (the optimum of a convex problem lies on the boundary then)."""
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    x, *_ = np.linalg.lstsq(a / scale, b, rcond=None)
    if np.all(x >= 0):
        return tuple(x / scale)
    best, best_residual = (0.0, 0.0), float(b @ b)
    for j in range(2):
        col = a[:, j]
        xj = max(0.0, float(col @ b) / float(col @ col)) if col @ col > 0 else 0.0
        residual = float(np.sum((col * xj - b) ** 2))
        if residual < best_residual:
            best, best_residual = ((xj, 0.0) if j == 0 else (0.0, xj)), residual
    return best
