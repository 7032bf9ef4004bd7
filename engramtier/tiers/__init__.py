"""Where rows live, and the runtime that serves a model from them.

base             the tier interface: read, write, contains, capacity, stats and a `TierModel`
slab             a cache tier's slab of slots and the map of which row sits in which slot
gpu, dram, cxl   the cache tiers (device slab; pinned host slab; dram on slower or modelled memory)
uva              zero-copy gathers from pinned host memory on the GPU
nvme             the LMDB table on local disk: the source of truth every other tier copies
pages            that table's page: header, row checksums, compression; written and verified
lmdb_table       writing that LMDB table, resumably
computed         a store whose rows are computed from their ids: a table of any size without storage
remote/          a table in Redis, Redis Cluster (remote.redis) or Mooncake Store (remote.mooncake); its
                 failover (what the runtime does when the store goes away); commands: `engramtier remote`
tiered           `TieredTable`: the model's row source over a hierarchy of tiers, one step at a time
step             one step: decide (dedup, engine, slot plans, sources) and move the rows, in compiled kernels
slots            its slot planning: which slots a step's admissions and evictions change
staging          its staging buffers and the one host-to-device copy
records          what each step asked for, what served it and what it cost
open             the composition root: building a hierarchy's tiers and the `TieredTable` over them
commands         `engramtier build-table`

The applications that run a model over a tiered table (replay, generate) are `engramtier.serve`.
"""
