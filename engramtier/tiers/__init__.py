"""Where rows live, and the runtime that serves a model from them.

base             the tier interface: read, write, contains, capacity, stats and a `TierModel`
slab             a cache tier's slab of slots and the map of which row sits in which slot
gpu, dram, cxl   the cache tiers (device slab; pinned host slab; dram on slower or modelled memory)
uva              zero-copy gathers from pinned host memory on the GPU
nvme             the LMDB table on local disk: the source of truth every other tier copies
build            writing that LMDB table, resumably; commands: `engramtier build-table`
remote           a table in Redis, Redis Cluster (redis_store) or Mooncake Store (mooncake_store)
failover         what the runtime does when the remote store goes away
tiered           `TieredTable`: the model's row source over a hierarchy of tiers
replay, generate the model over a tiered table, compared with the flat one; commands: `engramtier
                 replay | generate` (runtime_commands), `engramtier remote` (remote_commands)
"""
