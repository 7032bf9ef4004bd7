"""The figures of a run, each a function from result records to a matplotlib figure (Agg, no display).

Sizes are drawn on log axes in rows with the same sizes in bytes on a secondary top axis, because a
policy researcher thinks in rows and a hardware planner in GiB. Every axis says its unit. Log axes
choose their labelled ticks from the span of the data (`_log_ticks`): matplotlib's own choice labels
one or two ticks over a decade, or crowds minor labels into each other.
`RunDir.save_figure` writes each as PNG and SVG.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from engramtier.analysis.tables import humanise
from engramtier.cache.hierarchy import format_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@functools.cache
def _pyplot():
    """pyplot on the Agg backend (no display), imported at the first figure: importing matplotlib takes
    a few tenths of a second that a command drawing nothing should not pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9,
                         "svg.fonttype": "none"})
    return plt

# Offline policies, drawn dashed. Static preloads its hot set, so its first requests hit: it can beat
# Belady, which is optimal only among caches that fetch on demand.
OFFLINE = {"belady": "belady (offline, optimal on demand)", "static": "static (hot set from the trace's own counts, preloaded)",
           "lookahead": "lookahead (sees the step's future)"}

def _bytes_label(x: float, _=None) -> str:
    return format_bytes(x) if x > 0 else ""


def _rows_label(x: float, _=None) -> str:
    return humanise(x) if x > 0 else ""


def _plain_label(x: float, _=None) -> str:
    return f"{x:g}"


def _log_ticks(axis, lo: float, hi: float, formatter, base: int = 10) -> None:
    """Labelled ticks for a log ``axis`` over data ``lo..hi``: in base 10, 1, 2, 3 and 5 per decade over
    up to a decade and a half, 1, 2 and 5 up to three decades, powers of ten beyond; in another base its
    powers; at most nine, thinned evenly. Minor ticks unlabelled."""
    plt = _pyplot()
    decades = np.log10(hi / lo) if 0 < lo < hi else 0.0
    subs = (1.0,) if base != 10 or decades > 3 else (1.0, 2.0, 5.0) if decades > 1.5 else (1.0, 2.0, 3.0, 5.0)
    axis.set_major_locator(plt.LogLocator(base=base, subs=subs, numticks=9))
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(plt.NullFormatter())


def _size_axes(ax, sizes, row_bytes: int) -> None:
    """The log x axis of tier sizes in rows, and a top axis with the same sizes as bytes (powers of two)."""
    plt = _pyplot()
    ax.set_xscale("log")
    lo, hi = float(np.min(sizes)), float(np.max(sizes))
    _log_ticks(ax.xaxis, lo, hi, plt.FuncFormatter(_rows_label))
    top = ax.secondary_xaxis("top", functions=(lambda r: r * row_bytes, lambda b: b / row_bytes))
    _log_ticks(top.xaxis, lo * row_bytes, hi * row_bytes, plt.FuncFormatter(_bytes_label), base=2)
    top.set_xlabel(f"tier size (bytes, {row_bytes} B per row)")


def hit_rate_figure(records: Sequence[Mapping], row_bytes: int, ceiling: float | None = None) -> Figure:
    """Hit rate of one cache tier vs its size, one line per policy; ``ceiling`` (1 - distinct rows /
    requests) is the most any cache that fetches on demand can hit, since every first request misses."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if ceiling is not None:
        ax.axhline(ceiling, color="black", lw=0.8, ls=":", label=f"ceiling of demand caches (first requests miss): {ceiling:.3f}")
    for policy in dict.fromkeys(r["policy"] for r in records):
        points = sorted((r["size_rows"], r["hit_rate"]) for r in records if r["policy"] == policy)
        sizes, rates = zip(*points, strict=True)
        ax.plot(sizes, rates, marker="o", ms=3.5, label=OFFLINE.get(policy, policy), ls="--" if policy in OFFLINE else "-")
    _size_axes(ax, [r["size_rows"] for r in records], row_bytes)
    ax.set_xlabel("tier size (rows)")
    ax.set_ylabel("hit rate (fraction of requests)")
    ax.set_ylim(0, 1)
    ax.legend(title="policy (dashed: offline)", fontsize=7, title_fontsize=8)
    ax.set_title("Hit rate vs tier size (single tier, whole trace)")
    return fig


def stall_heatmap_figure(records: Sequence[Mapping], row_bytes: int) -> Figure:
    """Stall seconds and stall fraction over the sizes of one or two cache tiers."""
    plt = _pyplot()
    names = list(records[0]["sizes"])
    y_name, x_name = (names + [None])[:2] if len(names) == 2 else (None, names[0])
    xs = sorted({r["sizes"][x_name] for r in records})
    ys = sorted({r["sizes"][y_name] for r in records}) if y_name else [0]
    steps = records[0]["steps"]
    grid = {key: np.full((len(ys), len(xs)), np.nan) for key in ("stall_ms_per_step", "stall_fraction")}
    for r in records:
        i = ys.index(r["sizes"][y_name]) if y_name else 0
        j = xs.index(r["sizes"][x_name])
        grid["stall_ms_per_step"][i, j] = r["stall_seconds"] / steps * 1e3
        grid["stall_fraction"][i, j] = r["stall_fraction"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    titles = {"stall_ms_per_step": "mean stall per step (ms)", "stall_fraction": "stall fraction of run time"}
    for ax, key in zip(axes, grid, strict=True):
        values = grid[key]
        im = ax.imshow(values, origin="lower", aspect="auto", cmap="magma_r")
        fig.colorbar(im, ax=ax, label=titles[key])
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=8,
                        color="white" if im.norm(v) > 0.55 else "black")
        ax.set_xticks(range(len(xs)), [format_bytes(x * row_bytes) for x in xs], rotation=30)
        ax.set_xlabel(f"{x_name} tier size")
        if y_name:
            ax.set_yticks(range(len(ys)), [format_bytes(y * row_bytes) for y in ys])
            ax.set_ylabel(f"{y_name} tier size")
        else:
            ax.set_yticks([])
        ax.grid(False)
        ax.set_title(titles[key])
    fig.suptitle(f"Stall vs cache tier sizes over {steps} steps (darker: more stall; other tiers as declared)")
    return fig


def mrc_figure(sizes: np.ndarray, exact: np.ndarray | None, estimates: Sequence[np.ndarray], rate: float,
               row_bytes: int, policy: str = "LRU", method: str = "SHARDS",
               exact_label: str = "exact LRU (Mattson stack distance)") -> Figure:
    """The exact miss-ratio curve of ``policy`` (when computed), and sampled estimates (``method``:
    SHARDS, or miniature simulation) over several hash seeds as a mean and a band. NaN estimates (sizes a
    method could not estimate) leave gaps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if exact is not None:
        ax.plot(sizes, exact, color="black", lw=2, label=exact_label)
    if len(estimates):
        est = np.asarray(estimates, dtype=float)
        error = "" if exact is None else f" (mean abs. error {float(np.nanmean(np.abs(est - exact))):.4f})"
        ax.fill_between(sizes, est.min(axis=0), est.max(axis=0), color="tab:orange", alpha=0.3,
                        label=f"{method} range over {len(est)} hash seeds")
        ax.plot(sizes, est.mean(axis=0), color="tab:orange", ls="--", label=f"{method} mean, R={rate:g}{error}")
    _size_axes(ax, sizes, row_bytes)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"{policy} cache size (rows)")
    ax.set_ylabel("miss ratio")
    ax.legend(fontsize=8)
    ax.set_title(f"Miss-ratio curve: exact vs {method}")
    return fig


def zipf_figure(counts: np.ndarray, alpha: float | None) -> Figure:
    """Requests per row by popularity rank (log-log) with the maximum-likelihood Zipf law."""
    plt = _pyplot()
    c = np.sort(counts[counts > 0])[::-1].astype(float)
    ranks = np.arange(1, c.size + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    # thin the points evenly in log rank: millions of markers say nothing more than a thousand
    keep = np.unique(np.geomspace(1, c.size, min(c.size, 2000)).astype(np.int64)) - 1
    ax.plot(ranks[keep], c[keep], ".", ms=3, label=f"trace ({c.size:,} distinct rows)")
    if alpha is not None:
        expected = c.sum() * ranks ** -alpha / np.sum(ranks ** -alpha)
        ax.plot(ranks, expected, color="tab:red", lw=1.5, label=f"Zipf fit, alpha = {alpha:.3f} (MLE)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("row popularity rank")
    ax.set_ylabel("requests for the row")
    ax.legend()
    ax.set_title("Access frequency by rank")
    return fig


def cxl_figure(records: Sequence[Mapping]) -> Figure:
    """Stall fraction and tokens (or requests) per second vs CXL latency, CXL as a cache tier above the
    store and CXL as the store, against the declared hierarchy without CXL."""
    plt = _pyplot()
    base = next(r for r in records if r["cxl_role"] is None)
    rate_key = "tokens_per_s" if "tokens_per_s" in base else "requests_per_s"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, key, label in ((axes[0], "stall_fraction", "stall fraction of run time"),
                           (axes[1], rate_key, rate_key.replace("_per_s", " per second"))):
        for role, marker in (("cache", "o"), ("store", "s")):
            line = sorted((r["cxl_latency_ns"], r[key]) for r in records if r["cxl_role"] == role)
            if line:
                name = next(r["label"] for r in records if r["cxl_role"] == role).split(" @ ")[0]
                where = "above the store" if role == "cache" else "replaces the store"
                ax.plot(*zip(*line, strict=True), marker=marker, label=f"{name} ({where})")
        ax.axhline(base[key], color="gray", ls="--", label=f"without CXL ({base['label']})")
        ax.set_xlabel("CXL read latency (ns)")
        ax.set_ylabel(label)
        top = max(r[key] for r in records) * 1.15
        ax.set_ylim(-0.03 * top, top)  # markers at zero stay visible
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("CXL memory swapped into the hierarchy, at several CXL latencies")
    return fig


def _tier_sizes(capacities: Mapping[str, int], row_bytes: int) -> str:
    """'gpu 256 KiB, dram 1 MiB > nvme': the cache tiers' sizes, then the store (the last tier, which
    holds the whole table, so its size says nothing)."""
    *caches, store = capacities
    return ", ".join(f"{name} {format_bytes(capacities[name] * row_bytes)}" for name in caches) + f" > {store}"


def _money(x: float, _=None) -> str:
    return f"${x:,.2f}" if x >= 0.1 else f"${x:.2g}"


def cost_figure(frontier: Mapping, row_bytes: int) -> Figure:
    """Cost vs stall fraction of every simulated hierarchy, the frontier and the budget's cheapest.
    Frontier points are numbered at the point and their tier sizes listed in a key under the plot:
    sizes written beside points that sit close together would overlap. Cost is on a log axis when it
    spans more than a decade, so that cheap points do not crowd into the left edge."""
    plt = _pyplot()
    points = frontier["points"]
    cost = np.array([p["cost_usd"] for p in points])
    stall = np.array([p["stall_fraction"] for p in points])
    front = np.array([p["on_frontier"] for p in points])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(cost[~front], stall[~front], s=18, color="tab:gray", alpha=0.7, label="simulated hierarchy")
    order = np.flatnonzero(front)[np.argsort(cost[front], kind="stable")]
    ax.plot(cost[order], stall[order], "o-", color="tab:blue", ms=5, drawstyle="steps-post",
            label="cost frontier, numbered by cost (no cheaper point stalls less)")
    key = []
    for rank, i in enumerate(order, 1):
        # alternately above and below the point, so close neighbours on the frontier do not print over
        # each other; always above near zero stall, where below is the axis
        above = rank % 2 or stall[i] < 0.05 * stall.max()
        ax.annotate(str(rank), (cost[i], stall[i]), textcoords="offset points", xytext=(3, 4 if above else -10),
                    fontsize=7, color="tab:blue")
        key.append(f"{rank}. {_money(cost[i])}, stall {stall[i]:.3f}: {_tier_sizes(points[i]['capacities'], row_bytes)}")
    ax.axhline(frontier["budget"], color="tab:red", ls=":", label=f"stall budget {frontier['budget']:.0%}")
    best = frontier["cheapest"]
    if best is not None:
        ax.plot(best["cost_usd"], best["stall_fraction"], "*", color="tab:red", ms=14,
                label=f"cheapest within budget: ${best['cost_usd']:,.2f}\n{best['label']}")
    if cost.min() > 0 and cost.max() > 10 * cost.min():
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, cost.min(), cost.max(), plt.FuncFormatter(_money))
    else:
        ax.xaxis.set_major_formatter(plt.FuncFormatter(_money))
    ax.set_xlabel("memory cost (USD, all tiers incl. the store)")
    ax.set_ylabel("stall fraction of run time")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title("Cost vs stall")
    ax.text(0, -0.14, "frontier (tier sizes, then the store):\n" + "\n".join(key), transform=ax.transAxes,
            va="top", fontsize=7)
    return fig


def step_timeline_figure(per_step: Mapping, tier_names: Sequence[str]) -> Figure:
    """Per step: fetch time vs the compute window (stall shaded, on a log axis unless a time is zero),
    and rows served by each tier."""
    plt = _pyplot()
    fetch, window, stall = (np.asarray(per_step[k]) for k in ("fetch_s", "window_s", "stall_s"))
    steps = np.arange(fetch.size)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    top.plot(steps, fetch * 1e3, lw=1, label="fetch time")
    top.plot(steps, window * 1e3, lw=1, color="black", ls="--", label="compute window")
    top.fill_between(steps, window * 1e3, fetch * 1e3, where=stall > 0, color="tab:red", alpha=0.3, label="stall")
    top.set_ylabel("milliseconds per step")
    ms = np.concatenate([fetch, window]) * 1e3
    if ms.size and ms.min() > 0:  # log shows fetch and window orders of magnitude apart; a zero keeps it linear
        top.set_yscale("log")
        _log_ticks(top.yaxis, ms.min(), ms.max(), plt.FuncFormatter(_plain_label))
    top.legend(fontsize=8)
    served = np.asarray([per_step["served"][n] for n in tier_names], dtype=float)
    bottom.stackplot(steps, served, labels=list(tier_names), alpha=0.8)
    bottom.set_ylabel("unique rows served per step")
    bottom.set_xlabel("step")
    bottom.legend(fontsize=8, loc="upper right")
    fig.suptitle("Per-step fetch, stall and the tier serving each row")
    return fig


def load_figure(per_step: Mapping, columns: Mapping[str, np.ndarray], top_tier: str) -> Figure:
    """A served workload's steps (a trace cut by `engramtier trace --arrivals`): the top tier's hit rate
    and the stall of each step against its load, the requests running in it, with the mean per load.
    Load changes what a step reads: more running requests mean more decode tokens (one each, whose rows
    recur from request to request less than a long prompt's) and a larger step, hence more rows to fetch."""
    plt = _pyplot()
    unique = np.asarray(per_step["unique"], dtype=float)
    hit = np.divide(np.asarray(per_step["served"][top_tier], dtype=float), unique, out=np.zeros_like(unique),
                    where=unique > 0)
    stall_ms = np.asarray(per_step["stall_s"]) * 1e3
    running = np.asarray(columns["running"])
    loads = np.unique(running)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, constrained_layout=True)
    for ax, values, label in ((top, hit, f"{top_tier} hit rate per step"), (bottom, stall_ms, "stall per step (ms)")):
        ax.scatter(running, values, s=6, alpha=0.25, color="tab:blue", label="steps")
        ax.plot(loads, [values[running == n].mean() for n in loads], color="black", lw=1.5, label="mean")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    top.set_ylim(0, 1)
    bottom.set_xlabel("requests running in the step")
    fig.suptitle("Hit rate and stall per step against the load of the step")
    return fig


def workload_figure(records: Sequence[Mapping]) -> Figure:
    """Served workloads at rising arrival rates (`benchmarks/bench_workload.py`'s records): the gpu tier's
    hit rate over all lookups and per step, and the stall per step and as a fraction of run time."""
    plt = _pyplot()
    rates = [r["rate"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    left.plot(rates, [r["gpu_hit_rate"] for r in records], "o-", label="gpu hit rate, all lookups")
    left.plot(rates, [r["step_hit_rate_mean"] for r in records], "s--", label="per step, mean")
    left.fill_between(rates, [r["step_hit_rate_p10"] for r in records], [r["step_hit_rate_p90"] for r in records],
                      alpha=0.2, label="per step, 10th-90th percentile")
    left.set_ylabel("gpu tier hit rate")
    left.set_ylim(0, 1)
    right.plot(rates, [r["stall_ms_mean"] for r in records], "o-", label="stall per step, mean")
    right.plot(rates, [r["stall_ms_p99"] for r in records], "s--", label="stall per step, p99")
    right.set_ylabel("stall per step (ms)")
    twin = right.twinx()
    twin.plot(rates, [r["stall_fraction"] for r in records], "^:", color="tab:red", label="stall fraction")
    twin.set_ylabel("stall fraction of run time")
    twin.grid(False)
    right.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.set_xlabel("arrival rate (requests/s, Poisson)")
    left.legend(fontsize=8)
    fig.suptitle("Served workloads at rising load: gpu hit rate and stall per step")
    return fig


def replay_stall_figure(records: Sequence[Mapping]) -> Figure:
    """A replay's steps (`engramtier replay`'s records): the flat and tiered step times (tiered only for
    --engram-only, which has no flat pass), and below them the tiered step's stall (waiting on its rows)
    with its median and 99th percentile, in milliseconds."""
    plt = _pyplot()
    ms = lambda key: np.asarray([r[key] for r in records], float) * 1e3  # noqa: E731
    stall = ms("stall_s")
    steps = np.arange(stall.size)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    for key, label in (("flat_step_s", "flat table"), ("tiered_step_s", "tiered table")):
        if key in records[0]:
            top.plot(steps, ms(key), lw=1, label=label)
    top.set_ylabel("step time (ms)")
    top.legend(fontsize=8)
    bottom.plot(steps, stall, lw=1, color="tab:red", label="stall")
    for q, ls in ((50, "--"), (99, ":")):
        bottom.axhline(np.percentile(stall, q), color="black", lw=0.8, ls=ls, label=f"p{q} {np.percentile(stall, q):.3f} ms")
    bottom.set_ylabel("stall per step (ms)")
    bottom.set_xlabel("step (warm-up steps excluded)")
    bottom.legend(fontsize=8, loc="upper right")
    fig.suptitle("Replay: step time per path, and the tiered table's stall per step")
    return fig


def plan_figure(records: Sequence[Mapping], plan: Mapping) -> Figure:
    """Tokens per second and stall fraction vs the split of the HBM budget (the KV cache's share of it,
    linear, so the knee where the Engram tier starts to lose rows shows), batches on the top axis,
    the best split marked."""
    plt = _pyplot()
    ok = sorted((r for r in records if r["feasible"]), key=lambda r: r["batch"])
    share = np.array([r["kv_fraction"] for r in ok])
    per_batch = ok[0]["kv_fraction"] / ok[0]["batch"]  # the budget's share one sequence's KV takes
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(share, [r["tokens_per_s"] for r in ok], marker="o", color="tab:blue", label="tokens/s")
    ax.set_xlabel(f"KV cache share of the HBM budget (the rest is the {plan['tier']} tier's)")
    ax.set_ylabel("tokens per second", color="tab:blue")
    ax.set_xlim(0, 1)
    top = ax.secondary_xaxis("top", functions=(lambda f: f / per_batch, lambda b: b * per_batch))
    top.set_xlabel("batch (sequences in flight, each reserving its KV cache)")
    twin = ax.twinx()
    twin.plot(share, [r["stall_fraction"] for r in ok], marker="s", ms=3.5, ls="--", color="tab:red",
              label="stall fraction")
    twin.set_ylabel("stall fraction of run time", color="tab:red")
    twin.set_ylim(0, max(0.05, 1.15 * max(r["stall_fraction"] for r in ok)))
    twin.grid(False)
    best = plan["best"]
    ax.axvline(best["kv_fraction"], color="black", lw=0.8, ls=":")
    right = best["kv_fraction"] > 0.5  # the label on the side with room
    ax.annotate(f"best: batch {best['batch']}\n{best['tokens_per_s']:,.0f} tokens/s\n{plan['tier']} tier "
                f"{format_bytes(best['tier_bytes'])}", (best["kv_fraction"], best["tokens_per_s"]),
                textcoords="offset points", xytext=(-8 if right else 8, -80), ha="right" if right else "left",
                fontsize=8)
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], loc="lower center", fontsize=8)
    ax.set_title(f"HBM budget {format_bytes(plan['hbm_budget_bytes'])} split between KV cache and the "
                 f"{plan['tier']} tier", pad=22)
    return fig


def warm_start_figure(cold, warm, n_steps: int, tier: str) -> Figure:
    """The first ``n_steps`` of a cold and a warm-started simulation (`SimResult`s): the top tier's hit rate
    per step (its share of the step's lookups) and the stall per step."""
    plt = _pyplot()
    n = min(n_steps, cold.requests.size)
    steps = np.arange(n)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    for name, result in (("cold", cold), ("warm start", warm)):
        rate = result.served[0, :n] / np.maximum(result.unique[:n], 1)
        top.plot(steps, rate, lw=1, label=f"{name} ({result.served[0, :n].sum() / max(result.unique[:n].sum(), 1):.1%} "
                 f"over these steps)")
        bottom.plot(steps, result.stall_s[:n] * 1e3, lw=1, label=name)
    top.set_ylabel(f"{tier} hit rate per step")
    top.set_ylim(0, 1)
    top.legend(fontsize=8)
    bottom.set_ylabel("stall per step (ms)")
    bottom.set_xlabel("step")
    bottom.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    bottom.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"Cold start vs warm start: the first {n} steps")
    return fig


def order_hit_rate_figure(records: Sequence[Mapping], row_bytes: int) -> Figure:
    """Left: each n-gram order's exact LRU hit rate over its own requests vs the rows given to it (how
    much an order gains per row, what profile shares allocate by). Right: one shared LRU vs partitioned
    caches at equal total rows, the comparison order-aware placement has to win."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for curve in dict.fromkeys(r["curve"] for r in records):
        points = sorted((r["size_rows"], r["hit_rate"]) for r in records if r["curve"] == curve)
        sizes, rates = zip(*points, strict=True)
        ax = left if curve.startswith("order ") else right
        ax.plot(sizes, rates, marker="o", ms=3.5, label=curve)
    for ax, title, xlabel in ((left, "Hit rate per n-gram order (exact LRU, own requests)", "rows given to the order"),
                              (right, "One shared cache vs partitioned by order (equal rows)", "tier size (rows)")):
        _size_axes(ax, [r["size_rows"] for r in records], row_bytes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("hit rate (fraction of requests)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        ax.set_title(title)
    return fig


def admission_figure(records: Sequence[Mapping], row_bytes: int) -> Figure:
    """Left: the gpu tier's hit rate vs its size, per policy and admission filter (none solid); right: the
    hierarchy's stall fraction. What filtering one-hit rows out of a small top tier buys."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {}
    for r in records:
        styles.setdefault(r["admission"], ("-", "--", ":", "-.")[len(styles) % 4])
    colours = {p: f"C{i}" for i, p in enumerate(dict.fromkeys(r["policy"] for r in records))}
    for (policy, filter_name) in dict.fromkeys((r["policy"], r["admission"]) for r in records):
        points = sorted((r["gpu_rows"], r["gpu_hit_rate"], r["stall_fraction"]) for r in records
                        if r["policy"] == policy and r["admission"] == filter_name)
        sizes, rates, stalls = zip(*points, strict=True)
        style = dict(color=colours[policy], ls=styles[filter_name], marker="o", ms=3,
                     label=f"{policy}, admission {filter_name}")
        left.plot(sizes, rates, **style)
        right.plot(sizes, stalls, **style)
    for ax, ylabel in ((left, "gpu tier hit rate (fraction of lookups)"), (right, "stall fraction of run time")):
        _size_axes(ax, [r["gpu_rows"] for r in records], row_bytes)
        ax.set_xlabel("gpu tier size (rows)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    left.set_ylim(bottom=0)
    left.set_title("gpu tier hit rate with and without admission")
    right.set_title("hierarchy stall (axis zoomed in)")
    return fig


def mini_mrc_grid_figure(panels: Sequence[Mapping], rate: float, title: str) -> Figure:
    """One panel per policy: its exact miss-ratio curve (a full replay at every size) beside its
    miniature-simulation estimates at ``rate`` (mean and range over the hash salts). Each of ``panels``
    holds ``policy``, ``sizes``, ``exact`` and ``estimates`` (salts x sizes, NaN where not estimated)."""
    plt = _pyplot()
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), sharey=True, squeeze=False,
                             constrained_layout=True)
    for ax, panel in zip(axes.flat[:len(panels)], panels, strict=True):  # a last row may have axes to spare
        sizes, exact, est = panel["sizes"], np.asarray(panel["exact"]), np.asarray(panel["estimates"], dtype=float)
        ax.plot(sizes, exact, color="black", lw=1.5, label="exact (full replay)")
        ax.fill_between(sizes, est.min(axis=0), est.max(axis=0), color="tab:orange", alpha=0.3, label="range over salts")
        error = float(np.nanmean(np.abs(np.nanmean(est, axis=0) - exact)))
        ax.plot(sizes, est.mean(axis=0), color="tab:orange", ls="--", label=f"mean (MAE {error:.4f})")
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, float(np.min(sizes)), float(np.max(sizes)), plt.FuncFormatter(_rows_label))
        ax.set_ylim(0, 1)
        ax.set_title(panel["policy"], fontsize=9)
        ax.legend(fontsize=6, loc="lower left")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("cache size (rows)")
    for ax in axes[:, 0]:
        ax.set_ylabel("miss ratio")
    fig.suptitle(f"{title}: miniature simulation at R={rate:g} vs the exact curve")
    return fig
