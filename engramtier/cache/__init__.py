"""Which rows each tier keeps, and what that costs a step: policies, the engine, the simulator.

policy      the six-operation policy interface, the registry, `compiled_policy`, single-tier `replay`
references  policies named where they live ("module:attribute" in a TOML), resolved to builders
policies/   the built-ins, one per module (lru fifo clock sieve lfu lfuda arc twoq s3fifo wtinylfu slru
            lruk mq lirs clock2qplus clockpro hyperbolic lecar lhd cacheus random lruprob belady lookahead
            static, and
            partitioned, which splits a tier across n-gram orders); `_lists` holds the linked lists
            they share, `_draws` the seeded draws of the randomised ones
keymap      the key maps policies and slot maps find rows in: dense over a trace's keys, or hashed and
            sized by the nodes
diskcache   the compiled policy loops kept on disk across processes, keyed by their operations, and
            `inlined`, how policies' operations and helpers are compiled once and inlined by LLVM
nextuse     next-use arrays and the heap the offline policies (belady, lookahead) rank them in
hierarchy   a hierarchy of tiers as the user declares it (TOML or Python): capacities, policies, models
admission   admission filters in front of any tier's policy: bloom (second hit), prob:P, tinylfu
engine      the tiers of a hierarchy as compiled drivers over streams of lookups and demotions
simulator   replays a trace through a hierarchy in steps and charges each step its fetch and stall
mrc         miss-ratio curves: exact one-pass LRU, SHARDS sampling, any policy at many sizes
timing      `TierModel`: latency per wave plus bandwidth, its defaults and its fit to measurements
warm        warm start: the hottest rows of a frequency profile each cache tier opens holding
deadline    deadline-bounded (lossy) fetch: the rows a tier with on_late = "drop" gives up per step

The runtime (tiers/) drives the same engine and policies; nothing here imports tiers/.
"""
