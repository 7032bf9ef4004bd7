"""`engramtier report RUN`: the run directory as one self-contained HTML page and a Markdown page.

The report is built once as a list of blocks (headings, tables, figures, preformatted text) and
rendered twice: ``report.html`` inlines every figure's SVG, so the page opens anywhere without the
folder; ``report.md`` links the PNGs in ``figures/`` (for a repository or a wiki).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from engramtier.outputs import write_text_atomic
from engramtier.rundir import FIGURES, REPORTS, RunDir

CAPTIONS = {
    "zipf_rank": "Requests per table row by popularity rank, with the maximum-likelihood Zipf law.",
    "mrc_shards": "Exact LRU miss-ratio curve against SHARDS sampled estimates (band: range over hash seeds).",
    "mrc_mini": "A policy's miss-ratio curve by miniature simulation over spatial samples (band: range over hash salts), "
                "against its exact curve when computed.",
    "hit_rate_vs_size": "Hit rate of a single cache tier vs its size, per policy (belady and static are offline).",
    "step_timeline": "The declared hierarchy step by step: fetch time against the compute window, and who served the rows.",
    "stall_heatmap": "Total stall and stall fraction over the swept cache tier sizes.",
    "cxl_swap": "Stall and throughput with a CXL tier above the store at several latencies, against the hierarchy without it.",
    "cost_frontier": "Memory cost vs stall fraction of every simulated hierarchy; the frontier and the cheapest within budget.",
    "plan_tokens_per_s": "Tokens per second and stall fraction for each split of the HBM budget between KV cache and the Engram tier.",
    "replay_stall": "Step time of the flat and the tiered table, and the tiered table's stall per step (warm-up excluded).",
}
REPLAY_TIER_COLUMNS = ["name", "policy", "capacity_rows", "capacity_bytes", "lookups", "hits", "hit_rate",
                       "served_bytes", "bytes_read", "promoted", "evicted"]


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "—" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 10_000 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _kv(d: dict) -> tuple:
    return ("table", ["quantity", "value"], [[k, v] for k, v in d.items() if not isinstance(v, (dict, list))])


def summary_blocks(summary: dict) -> list[tuple]:
    """The summary numbers as headings and tables, known sections first, anything else as JSON."""
    blocks: list[tuple] = []
    s = dict(summary)
    if "trace" in s:
        blocks += [("h2", "Trace"), _kv(s.pop("trace"))]
    if "hit_rate" in s:
        table = s.pop("hit_rate")
        sizes = list(dict.fromkeys(k for row in table.values() for k in row))
        blocks += [("h2", "Hit rate by policy and tier size"),
                   ("table", ["policy", *sizes], [[p, *(row.get(k) for k in sizes)] for p, row in table.items()])]
    if "mrc" in s:
        blocks += [("h2", "Miss-ratio curve (SHARDS vs exact)"), _kv(s.pop("mrc"))]
    if "mini" in s:
        blocks += [("h2", "Miss-ratio curve (miniature simulation)"), _kv(s.pop("mini"))]
    if "simulation" in s:
        sim = s.pop("simulation")
        tiers = sim.get("tiers", [])
        cols = ["name", "policy", "capacity_rows", "lookups", "hits", "hit_rate", "served_share", "bytes_read",
                "evicted"]
        blocks += [("h2", "Simulation of the declared hierarchy"), _kv(sim),
                   ("table", cols, [[t.get(c) for c in cols] for t in tiers])]
    if "stall" in s:
        st = s.pop("stall")
        blocks += [("h2", "Stall sweep"),
                   ("table", ["", "hierarchy", "stall fraction"],
                    [["least stall", st["least"]["label"], st["least"]["stall_fraction"]],
                     ["most stall", st["most"]["label"], st["most"]["stall_fraction"]]])]
    if "cxl" in s:
        rows = s.pop("cxl")
        cols = list(rows[0]) if rows else []
        blocks += [("h2", "CXL tier"), ("table", cols, [[r[c] for c in cols] for r in rows])]
    if "cost" in s:
        cost = s.pop("cost")
        best = cost.get("cheapest")
        line = (f"Cheapest hierarchy within a stall budget of {cost['budget']:.1%}: "
                + (f"{best['label']} at ${best['cost_usd']:,.2f} (stall fraction {best['stall_fraction']:.4f})"
                   if best else "none of the simulated hierarchies meets it"))
        cols = ["label", "cost_usd", "stall_fraction", "tokens_per_s"]
        blocks += [("h2", "Cost frontier"), ("p", line),
                   ("table", ["$/GB " + k for k in cost["prices_usd_per_gb"]], [list(cost["prices_usd_per_gb"].values())]),
                   ("table", ["#", *cols], [[i, *(p.get(c) for c in cols)] for i, p in enumerate(cost["frontier"], 1)])]
    if "flat" in s and "tiered" in s:
        blocks += replay_blocks(s)
    for key, value in s.items():
        blocks += [("h2", key), ("pre", json.dumps(value, indent=2))]
    return blocks


def replay_blocks(s: dict) -> list[tuple]:
    """A replay's summary (`engramtier.serve.replay`) as tables, taking its keys out of ``s``: the check,
    flat vs tiered timing, the tiered table's stall per step, and each tier's size and traffic."""
    flat, tiered, plan, sim = s.pop("flat"), s.pop("tiered"), s.pop("plan"), s.pop("simulated")
    steps, warmup, equal = s.pop("steps"), s.pop("warmup_steps", 0), s.pop("bitwise_equal")
    unequal = s.pop("first_unequal_step")
    check = (f"Model {s.pop('run', '?')}: {steps} {plan['mode']} steps ({plan.pop('padding')}) after {warmup} "
             "untimed warm-up steps per path. "
             f"Outputs bitwise equal: {'yes' if equal else f'no, from step {unequal} on'}; simulator hit counts "
             f"equal: {'yes' if sim['hits_equal'] else 'no'}.")
    timing_cols = ["path", "steps", "median step (s)", "p10 (s)", "p90 (s)", "first step: time to first token (s)",
                   "tokens/s (total time)", "tokens/s (median step)"]
    timing = [[name, p["steps"], p["step_s"]["p50"], p["step_s"]["p10"], p["step_s"]["p90"],
               p["time_to_first_token_s"], p["tokens_per_s"], p["median_tokens_per_s"]]
              for name, p in (("flat", flat), ("tiered", tiered))]
    stall = tiered["stall_per_step_s"]
    return [("h2", "Replay: flat vs tiered table"), ("p", check), _kv(plan), ("p", s.pop("timing")),
            ("table", timing_cols, timing),
            ("h2", "Stall of the tiered table"),
            ("table", ["per step: mean (s)", "p50 (s)", "p99 (s)", "total (s)", "fraction of tiered step time",
                       "simulated total (s)"],
             [[stall["mean"], stall["p50"], stall["p99"], tiered["stall_seconds"], tiered["stall_fraction"],
               sim["stall_seconds"]]]),
            ("h2", "Tiers"), ("p", s.pop("bytes_read_note") + "."),
            ("table", REPLAY_TIER_COLUMNS, [[t.get(c) for c in REPLAY_TIER_COLUMNS] for t in s.pop("tiers")]),
            ("h2", "Table"), _kv(s.pop("table"))]


def report_blocks(run: RunDir) -> list[tuple]:
    config = run.config()
    blocks: list[tuple] = [("h1", f"engramtier {config.get('command', '')} run"),
                           ("p", f"{run.path.resolve()} — created {config.get('created', '?')}, "
                                 f"engramtier {config.get('engramtier', '?')}, fingerprint {config.get('fingerprint') or '—'}")]
    missing = run.missing_stages()
    if missing:
        blocks.append(("p", f"INCOMPLETE: the command did not finish stage(s) {', '.join(missing)} (interrupted or "
                            "failed); what follows is what it recorded. Run the same command again to finish it."))
    blocks += summary_blocks(run.summary())
    figures = run.figures()
    if figures:
        blocks.append(("h2", "Figures"))
        blocks += [("figure", name) for name in figures]
    blocks += [("h2", "Configuration"), ("pre", json.dumps({k: config.get(k) for k in ("command", "arguments", "config")},
                                                           indent=2)),
               ("h2", "Machine"), _kv(config.get("machine") or {})]
    return blocks


def _svg(path: Path) -> str:
    """An SVG file's ``<svg>`` element, without the XML prolog, ready to inline."""
    text = path.read_text(encoding="utf-8")
    return text[text.index("<svg"):]


def render_html(run: RunDir, blocks: list[tuple]) -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           f"<title>{html.escape(blocks[0][1])}</title>",
           "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
           "text-align:right;font-variant-numeric:tabular-nums}td:first-child,th:first-child{text-align:left}"
           "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}figure{margin:1em 0 2em}"
           "figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:14px}</style>",
           "</head><body>"]
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "pre":
            out.append(f"<pre>{html.escape(rest[0])}</pre>")
        elif kind == "table":
            head, rows = rest
            out.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows]
            out.append("</table>")
        elif kind == "figure":
            name = rest[0]
            caption = CAPTIONS.get(name, name)
            out.append(f"<figure id='{html.escape(name)}'>{_svg(run.path / FIGURES / f'{name}.svg')}"
                       f"<figcaption>{html.escape(name)}: {html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(blocks: list[tuple]) -> str:
    cell = lambda v: _fmt(v).replace("|", "\\|")  # noqa: E731
    out = []
    for kind, *rest in blocks:
        if kind == "h1":
            out.append(f"# {rest[0]}\n")
        elif kind == "h2":
            out.append(f"## {rest[0]}\n")
        elif kind == "p":
            out.append(f"{rest[0]}\n")
        elif kind == "pre":
            out.append(f"```json\n{rest[0]}\n```\n")
        elif kind == "table":
            head, rows = rest
            out.append("| " + " | ".join(cell(h) for h in head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
            out.append("")
        elif kind == "figure":
            name = rest[0]
            out.append(f"![{name}]({FIGURES}/{name}.png)\n\n*{CAPTIONS.get(name, name)}*\n")
    return "\n".join(out)


def write_report(path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into the run directory ``path``; returns their paths."""
    run = RunDir.open(path)
    blocks = report_blocks(run)
    html_path, md_path = (run.path / name for name in REPORTS)
    write_text_atomic(html_path, render_html(run, blocks))
    write_text_atomic(md_path, render_markdown(blocks))
    return html_path, md_path

