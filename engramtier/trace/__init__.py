"""engramtier.trace: token sources -> row traces in steps -> trace files, exports and statistics.

sources    text documents (`engramtier.documents`) and synthetic Zipf streams, as canonical token ids
build      token ids -> global row ids, grouped into prefill or decode (continuous batching) steps
rowtrace   `RowTrace`, the in-memory trace the simulator replays
schedule   continuous batching as vLLM's V1 scheduler cuts steps (token budget, chunked prefill, FCFS)
arrivals   request arrivals: Azure, BurstGPT and Mooncake trace files, or Poisson with length distributions
workload   arrivals + text -> a row trace of the steps the scheduler cuts, with per-step columns
lookups    a step's unique rows in first-occurrence order: what the simulator and the runtime replay
tracefile  the chunked, compressed, checksummed trace file (`TraceWriter`, `TraceReader`)
export     libCacheSim oracleGeneral and CSV
layout     global row id -> sub-table, n-gram order and head, from a trace's meta
stats      skew, reuse, working sets and per-sub-table and per-order breakdowns
commands   `engramtier trace [--arrivals] | stats | export`
"""
