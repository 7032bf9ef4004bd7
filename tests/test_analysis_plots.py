"""Figures stay readable whatever the span of the data: tick labels on the size axes do not overlap, from
one decade of sizes to five, the step timeline's time axis has several labels, and the cost frontier
names each point's tier sizes."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from engramtier.analysis import plots
from engramtier.analysis.cost import DEFAULT_USD_PER_GB, cost_frontier

ROW_BYTES = 160


def shown_labels(fig, axis):
    """The tick labels ``axis`` draws, major and minor: inside its view, with text, visible."""
    fig.canvas.draw()
    lo, hi = sorted(axis.get_view_interval())
    ticks = [t for t in axis.get_major_ticks() + axis.get_minor_ticks() if lo <= t.get_loc() <= hi]
    return [label for t in ticks for label in (t.label1, t.label2) if label.get_visible() and label.get_text()]


def assert_apart(fig, labels, along: int):
    """No two labels' boxes overlap (``along`` 0: side by side on x, 1: stacked on y)."""
    renderer = fig.canvas.get_renderer()
    boxes = sorted((label.get_window_extent(renderer) for label in labels), key=lambda b: b.extents[along])
    for a, b in pairwise(boxes):
        assert a.extents[along + 2] <= b.extents[along], f"tick labels overlap: {[x.get_text() for x in labels]}"


def hit_records(sizes):
    return [{"policy": p, "size_rows": s, "size_bytes": s * ROW_BYTES, "hit_rate": h}
            for p, scale in (("lru", 0.5), ("belady", 0.7)) for s, h in zip(sizes, scale * np.linspace(0.1, 0.9, len(sizes)), strict=True)]


SPANS = {"one decade": [2000, 3000, 5000, 8000, 12000, 20000],
         "quickstart --tiny": [409, 1638, 6553, 26214],
         "experiment.toml": [(1 << 20 << i) // ROW_BYTES for i in range(9)],
         "mrc default": list(np.unique(np.geomspace(1, 27_807, 48).astype(int)))}


@pytest.mark.parametrize("span", SPANS)
def test_size_axes_label_without_overlap(span):
    fig = plots.hit_rate_figure(hit_records(SPANS[span]), ROW_BYTES, 0.8)
    ax = fig.axes[0]
    top = next(child for child in ax.child_axes)  # the bytes axis
    for axis in (ax.xaxis, top.xaxis):
        labels = shown_labels(fig, axis)
        assert len(labels) >= 3, [x.get_text() for x in labels]
        assert_apart(fig, labels, 0)
    plots._pyplot().close(fig)


def test_one_decade_is_labelled_in_rows_and_bytes():
    fig = plots.hit_rate_figure(hit_records(SPANS["one decade"]), ROW_BYTES)
    ax = fig.axes[0]
    assert [x.get_text() for x in shown_labels(fig, ax.xaxis)] == ["2K", "3K", "5K", "10K", "20K"]
    assert [x.get_text() for x in shown_labels(fig, ax.child_axes[0].xaxis)] == ["512 KiB", "1 MiB", "2 MiB"]
    plots._pyplot().close(fig)


def test_mrc_figure_labels_its_sizes_apart():
    sizes = np.asarray(SPANS["mrc default"])
    exact = np.linspace(0.9, 0.2, sizes.size)
    fig = plots.mrc_figure(sizes, exact, [exact + 0.01, exact - 0.01], 0.1, ROW_BYTES)
    labels = shown_labels(fig, fig.axes[0].xaxis)
    assert len(labels) >= 3
    assert_apart(fig, labels, 0)
    plots._pyplot().close(fig)


def per_step(fetch_ms, window_ms):
    n = len(fetch_ms)
    fetch, window = np.asarray(fetch_ms) / 1e3, np.asarray(window_ms) / 1e3
    return {"fetch_s": fetch, "window_s": window, "stall_s": np.maximum(fetch - window, 0),
            "served": {"gpu": [10] * n, "nvme": [100] * n}}


@pytest.mark.parametrize("fetch_ms, scale", [
    ([2.67, 2.58, 2.42, 2.42, 2.0, 1.9, 2.1, 2.4, 0.66], "log"),  # quickstart --tiny: one labelled tick before
    ([0.0, 0.5, 1.2, 0.3, 0.0, 0.8], "linear")])  # a step with nothing to fetch keeps the axis linear
def test_fetch_time_panel_has_several_labels(fetch_ms, scale):
    window = [0.384] * (len(fetch_ms) - 1) + [0.11]
    fig = plots.step_timeline_figure(per_step(fetch_ms, window), ["gpu", "nvme"])
    top = fig.axes[0]
    assert top.get_yscale() == scale
    labels = shown_labels(fig, top.yaxis)
    assert len(labels) >= 3, [x.get_text() for x in labels]
    assert_apart(fig, labels, 1)
    plots._pyplot().close(fig)


def sim_record(label, gpu_rows, dram_rows, stall):
    tiers = [{"name": "gpu", "model": "hbm", "capacity_rows": gpu_rows},
             {"name": "dram", "model": "dram", "capacity_rows": dram_rows},
             {"name": "nvme", "model": "nvme", "capacity_rows": 3_206_914}]
    return {"label": label, "tiers": tiers, "stall_fraction": stall}


def test_cost_frontier_names_the_tier_sizes_of_its_points():
    points = [sim_record("a", 409, 6553, 0.2316), sim_record("b", 1638, 6553, 0.2315),
              sim_record("c", 409, 26214, 0.224), sim_record("d", 1638, 26214, 0.224),
              sim_record("e", 200_000, 800_000, 0.0)]
    frontier = cost_frontier(points, ROW_BYTES, DEFAULT_USD_PER_GB, 0.05)
    fig = plots.cost_figure(frontier, ROW_BYTES)
    ax = fig.axes[0]
    texts = "\n".join(t.get_text() for t in ax.texts)
    on_front = [p for p in frontier["points"] if p["on_frontier"]]
    assert len(on_front) == 4  # d costs more than c for the same stall
    for size in ("gpu 63.9 KiB, dram 1 MiB > nvme", "gpu 256 KiB, dram 1 MiB > nvme",
                 "gpu 63.9 KiB, dram 4 MiB > nvme", "gpu 30.5 MiB, dram 122 MiB > nvme"):
        assert size in texts
    assert "gpu 256 KiB, dram 4 MiB" not in texts  # off the frontier: not listed
    assert ax.get_xscale() == "log"  # the costs span more than a decade
    numbers = [t for t in ax.texts if t.get_text().isdigit()]
    assert sorted(t.get_text() for t in numbers) == ["1", "2", "3", "4"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in numbers]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plots._pyplot().close(fig)


def test_admission_figure_draws_each_policy_and_filter_on_both_panels():
    records = [{"policy": p, "admission": a, "gpu_rows": rows, "gpu_hit_rate": 0.1 * i, "stall_fraction": 0.09 - 0.01 * i}
               for p in ("lru", "s3fifo") for a in ("none", "bloom") for i, rows in enumerate((1_000, 4_000, 16_000))]
    fig = plots.admission_figure(records, ROW_BYTES)
    for ax in fig.axes[:2]:
        assert [line.get_label() for line in ax.get_lines()] == [
            "lru, admission none", "lru, admission bloom", "s3fifo, admission none", "s3fifo, admission bloom"]
        assert [list(line.get_xdata()) for line in ax.get_lines()] == [[1_000, 4_000, 16_000]] * 4
    assert fig.axes[0].get_ylim()[0] == 0
    plots._pyplot().close(fig)


@pytest.mark.parametrize("n_policies", [4, 5, 11])
def test_mini_mrc_grid_draws_one_panel_per_policy_and_hides_the_spare_axes(n_policies):
    """Four panels a row: policies that do not fill the last row leave its spare axes hidden (11 policies:
    the benchmark's sample, one axis spare)."""
    sizes = np.array([100, 1_000, 10_000])
    panels = [{"policy": f"p{i}", "sizes": sizes, "exact": [0.9, 0.6, 0.3],
               "estimates": [[0.88, 0.62, 0.31], [0.91, np.nan, 0.29]]} for i in range(n_policies)]
    fig = plots.mini_mrc_grid_figure(panels, 0.01, "test trace")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == [f"p{i}" for i in range(n_policies)]
    assert len(fig.axes) - len(visible) == -n_policies % 4
    plots._pyplot().close(fig)
