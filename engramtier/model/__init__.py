"""The Engram model and the exact addressing of its table.

tokenizer   base tokenizers and DeepSeek's tokenizer compression (129,280 -> 99,092 ids)
hashing     `HashConfig` and `NgramHasher`: canonical token ids -> global row ids (numba and torch)
presets     named shapes of published models (dsv41-flash, engram-27b, engram-40b)
rows        row formats: bf16[D], fp8_e4m3[D] + ue8m0 scales, as opaque bytes
table       the flat table file: raw rows plus a manifest (format, shape, fingerprint, checksum)
rowsource   where the Engram layers get rows: the interface and the flat in-memory source
engram      the Engram layer (variants dsv41, demo, classic) and its trainable table
backbone    a small decoder-only model with Engram layers at chosen blocks, or a stand-in around them
train       training and held-out evaluation on real text; commands: `engramtier train`
checkpoint  DeepSeek-V4.1's Engram tensors: checked, its table rows served, its layers a stand-in model
"""
