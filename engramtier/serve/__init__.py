"""Applications that run the model with its table in tiers: `replay` (flat vs tiered, bitwise
checked, hits predicted by the simulator) and `generate` (text from a trained or imported model), and
their commands.

    replay.py    text -> steps -> the model over a flat and a tiered table; random runs to replay
    generate.py  batched generation with the KV cache, teacher-forced decode for the speculation studies
    commands.py  `engramtier generate | replay` and the serving options they share
"""
