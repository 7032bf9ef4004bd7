"""engramtier.serve: a trained model served over HTTP, its table in a TieredTable (`engramtier serve`).

An application layer over the others: it imports model, trace, cache and tiers, and nothing below
imports it.

engine     the engine thread: scheduler steps (`engramtier.trace.schedule`) as TieredTable steps, one
           forward per sequence over its slice of the step's rows, sampling, per-request events
app        the Starlette app: OpenAI /v1/completions (streaming too), /v1/models, /health, /metrics
metrics    the Prometheus metrics (``engramtier:`` names), the table's counts read at each scrape
server     `engramtier serve`
"""
