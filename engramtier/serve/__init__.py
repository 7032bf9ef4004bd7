"""Applications that run the model with its table in tiers: `replay` (flat vs tiered, bitwise
checked, hits predicted by the simulator), `generate` (text from a trained or imported model) and
`serve` (an OpenAI-compatible HTTP server with Prometheus metrics), and their commands.

    replay.py    text -> steps -> the model over a flat and a tiered table; random runs to replay
    generate.py  batched generation with the KV cache, teacher-forced decode for the speculation studies
    commands.py  `engramtier generate | replay` and the serving options they share
    engine.py    the server's engine thread: scheduler steps (`engramtier.trace.schedule`) as TieredTable
                 steps, one forward per sequence over its slice of the step's rows, sampling, events
    app.py       the Starlette app: OpenAI /v1/completions (streaming too), /v1/models, /health, /metrics
    metrics.py   the Prometheus metrics (``engramtier:`` names), the table's counts read at each scrape
    server.py    `engramtier serve`
"""
