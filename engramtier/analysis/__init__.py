"""Numbers and pictures from traces and simulations: sweeps, stall and cost analysis, plots, reports.

config      experiment TOML files, checked with one-line errors
sweep       policies x sizes (hit rate), hierarchies (stall), CXL swapped in, on a thread pool
cost        $/GB per tier, the cost/stall frontier, the cheapest hierarchy within a stall budget
speculative decode-time prefetch of the top-k candidate tokens' rows: coverage, extra bytes, stall
plan        an HBM budget split between KV cache and the Engram gpu tier for the most tokens/s
plots       the figures, PNG and SVG
tables      hit-rate curves as CSV and as the terminal table sweep and mrc print
report      report.html (self-contained) and report.md of a run directory
experiment  the stages shared by the commands; quickstart: the whole pipeline on the sample text
commands    `engramtier simulate | sweep | plan | mrc | report | quickstart`

Data flows one way: analysis reads trace/ and cache/, and nothing there reads analysis/.
"""
