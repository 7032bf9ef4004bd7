"""engramtier.trace: token sources -> row traces in steps -> trace files, exports and statistics.

sources    text documents (`engramtier.documents`) and synthetic Zipf streams, as canonical token ids
build      token ids -> global row ids, grouped into prefill or decode (continuous batching) steps
rowtrace   `RowTrace`, the in-memory trace the simulator replays
lookups    a step's unique rows in first-occurrence order: what the simulator and the runtime replay
tracefile  the chunked, compressed, checksummed trace file (`TraceWriter`, `TraceReader`)
export     libCacheSim oracleGeneral and CSV
layout     global row id -> sub-table, n-gram order and head, from a trace's meta
stats      skew, reuse, working sets and per-sub-table and per-order breakdowns
commands   `engramtier trace | stats | export`
"""
