"""A small decoder-only language model with Engram layers at chosen blocks.

The model reads and predicts *base* tokenizer ids; Engram's compression to canonical ids happens only
for hashing, through a lookup buffer. All Engram layers' row ids are computed once, when the forward
pass begins, and requested from the row source at that moment, so that a tiered source has the whole
attention-and-MLP time of the preceding blocks to bring the rows in.

The residual stream has ``hc_mult`` branches (Engram gates each branch separately). The blocks read
the mean of the branches and add their output to every branch: fixed, uniform hyper-connections, a
stand-in for DeepSeek's learned ones; with hc_mult = 1 it is the ordinary residual stream.

``backbone = "stand-in"`` keeps only what the Engram layers need around them: a seeded token embedding
gives their input hidden states, the blocks between them do nothing, and the output head is the tied
embedding. It serves a checkpoint's own Engram layers (`engramtier.model.checkpoint`) at their real
width and row size with no backbone to run or store: the layers' compute, bytes and stall are real,
the text it generates means nothing, and nothing hides the fetch that a real backbone's blocks would.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engramtier.errors import EngramTierError
from engramtier.model.engram import TrainableTable, engram_layer
from engramtier.model.hashing import HashConfig, NgramHasher
from engramtier.model.rows import RowFormat
from engramtier.model.rowsource import RowSource
from engramtier.model.speculation import Speculation, candidate_rows
from engramtier.model.tokenizer import lookup_digest
from engramtier.model.trainconfig import VARIANTS


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model's shape; round-trips through JSON.

    vocab_size  base tokenizer vocabulary (input and output ids)
    tokenizer   base tokenizer: a built-in name, or a tokenizer.json path relative to the run directory
    engram      the hash config of the Engram layers (its layer_ids index the blocks), None for none
    row_dim     D, values per table row; row_format the byte layout of the table (`RowFormat`)
    variant     the Engram layer (`engramtier.model.engram`'s variants); a config without one is "classic"
    backbone    "transformer" (attention and MLP blocks) or "stand-in" (the module docstring)
    """

    vocab_size: int
    tokenizer: str = "deepseek"
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 0  # 0: SwiGLU's usual 8/3 * d_model, rounded up to a multiple of 64
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    hc_mult: int = 1
    engram: HashConfig | None = None
    row_dim: int = 32
    row_format: str = "bf16"
    conv_kernel: int = 4
    variant: str = "classic"
    backbone: str = "transformer"

    def __post_init__(self):
        if isinstance(self.engram, dict):
            self.engram = HashConfig.from_dict(self.engram)
        if self.d_mlp == 0:
            self.d_mlp = 64 * math.ceil(8 * self.d_model / 3 / 64)
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant '{self.variant}' is unknown (use one of {', '.join(VARIANTS)})")
        if self.backbone not in BACKBONES:
            problems.append(f"backbone '{self.backbone}' is unknown (use one of {', '.join(BACKBONES)})")
        if self.backbone == "transformer" and (self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2):
            problems.append(f"d_model {self.d_model} must split into {self.n_heads} heads of even width")
        if self.engram is not None and max(self.engram.layer_ids) >= self.n_layers:
            problems.append(f"Engram layer ids {list(self.engram.layer_ids)} exceed the {self.n_layers} blocks")
        if min(self.vocab_size, self.n_layers, self.hc_mult, self.conv_kernel, self.max_seq_len) < 1:
            problems.append("vocab_size, n_layers, hc_mult, conv_kernel and max_seq_len must be positive")
        if problems:
            raise EngramTierError("model config: " + "; ".join(problems))
        RowFormat(self.row_format, self.row_dim)  # refuse a bad format or dim now, not at the first forward

    @property
    def format(self) -> RowFormat:
        return RowFormat(self.row_format, self.row_dim)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["engram"] = self.engram.to_dict() if self.engram is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise EngramTierError(f"model config: unknown keys {sorted(unknown)}; was it written by a newer engramtier?")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


BACKBONES = ("transformer", "stand-in")
DSV41_NORM_EPS = 1e-6  # DeepSeek's rms_norm_eps, which its Engram layer's gate uses
_STAND_IN_MAX_SEQ_LEN = 1 << 20  # a stand-in backbone has no attention: no context limit of its own


def stand_in_config(hash_config: HashConfig, vocab_size: int, d_model: int, hc_mult: int, variant: str,
                    row_format: str, row_dim: int) -> ModelConfig:
    """A stand-in model around Engram layers of ``variant`` at ``hash_config``'s layers: ``d_model`` wide,
    ``hc_mult`` copies, reading ``row_format``[``row_dim``] rows; dsv41 at DeepSeek's norm eps."""
    return ModelConfig(vocab_size=vocab_size, tokenizer=hash_config.tokenizer, d_model=d_model,
                       n_layers=max(hash_config.layer_ids) + 1, n_heads=1, max_seq_len=_STAND_IN_MAX_SEQ_LEN,
                       norm_eps=DSV41_NORM_EPS if variant == "dsv41" else 1e-5, hc_mult=hc_mult, engram=hash_config,
                       row_dim=row_dim, row_format=row_format, variant=variant, backbone="stand-in")


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding on [B, heads, T, hd], pairing the two halves of each head."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Incremental decoding state of a batch: per block the attention keys and values (preallocated
    to ``max_len``; none for a stand-in backbone), Engram's last N-1 canonical ids (the next tokens'
    N-grams reach back into them), and each Engram layer's state (its ShortConv's)."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device, dtype):
        head_dim = config.d_model // config.n_heads
        blocks = config.n_layers if config.backbone == "transformer" else 0
        shape = (blocks, batch_size, config.n_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len
        hash_config = config.engram
        self.recent_ids = None if hash_config is None else torch.full(
            (batch_size, hash_config.max_ngram_size - 1), hash_config.pad_id, dtype=torch.int64, device=device)
        self.engram_states: dict[int, torch.Tensor | None] = {}


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None, layer: int) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        start = 0 if cache is None else cache.length
        if cache is not None:
            cache.keys[layer, :, :, start : start + length] = k
            cache.values[layer, :, :, start : start + length] = v
            k, v = cache.keys[layer, :, :, : start + length], cache.values[layer, :, :, : start + length]
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new queries sit after the cached keys: query i sees keys up to start + i
            visible = torch.arange(start + length, device=x.device) <= start + torch.arange(length, device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_mlp, bias=False)
        self.up = nn.Linear(config.d_model, config.d_mlp, bias=False)
        self.down = nn.Linear(config.d_mlp, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """[Engram] -> attention -> MLP, each added to the residual stream (a stand-in block: Engram only)."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        hash_config = config.engram
        self.engram = None
        if hash_config is not None and layer in hash_config.layer_ids:
            self.engram = engram_layer(config.variant, config.d_model, hash_config.heads_per_layer, config.format,
                                       hash_config.max_ngram_size, config.hc_mult, config.conv_kernel, config.norm_eps)
        self.transformer = config.backbone == "transformer"
        if self.transformer:
            self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
            self.attn = Attention(config)
            self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
            self.mlp = SwiGLU(config)

    def forward(self, h, cos, sin, engram_rows, cache: KVCache | None, blocked: torch.Tensor | None) -> torch.Tensor:
        """h [B, T, hc, d]; ``engram_rows`` this block's rows when it holds an Engram layer; ``blocked``
        [B, T] the image positions (None: none), which the Engram layer leaves as they are."""
        if self.engram is not None:
            state = None if cache is None else cache.engram_states.get(self.layer)
            h, state = self.engram(h, engram_rows, state, blocked)
            if cache is not None:
                cache.engram_states[self.layer] = state
        if not self.transformer:
            return h
        h = h + self.attn(self.attn_norm(h.mean(dim=2)), cos, sin, cache, self.layer).unsqueeze(2)
        return h + self.mlp(self.mlp_norm(h.mean(dim=2))).unsqueeze(2)


class EngramLM(nn.Module):
    """The language model. ``compress_lookup`` maps base ids to canonical ids (needed with Engram).

    ``trainable_table`` gives the model its own float32 table to train; without it, every forward
    pass must be handed a row source holding the table in ``config.row_format``.
    """

    def __init__(self, config: ModelConfig, compress_lookup: np.ndarray | None = None,
                 trainable_table: bool = True, seed: int = 0):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        head_dim = config.d_model // config.n_heads
        freqs = config.rope_theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        positions = config.max_seq_len if config.backbone == "transformer" else 0  # a stand-in has no attention
        angles = torch.outer(torch.arange(positions, dtype=torch.float64), freqs)
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)
        self.hasher = self.table = None
        if config.engram is not None:
            self.hasher = NgramHasher(config.engram)
            self.register_buffer("compress_lookup", self._check_lookup(compress_lookup), persistent=False)
            if trainable_table:
                self.table = TrainableTable(self.hasher.n_rows, config.row_dim)
        self._init_weights(seed)

    def _check_lookup(self, lookup) -> torch.Tensor:
        hash_config = self.config.engram
        if lookup is None:
            raise EngramTierError("model: an Engram model needs the tokenizer's compression lookup (CompressedTokenizer.lookup)")
        lookup = torch.as_tensor(np.asarray(lookup, dtype=np.int64))
        if lookup.shape != (self.config.vocab_size,) or int(lookup.min()) < 0 or int(lookup.max()) >= hash_config.vocab_size:
            raise EngramTierError(
                f"model: the compression lookup (shape {list(lookup.shape)}) must map {self.config.vocab_size} base ids "
                f"into [0, {hash_config.vocab_size}); it comes from another tokenizer"
            )
        if hash_config.image_id is not None and int((lookup == hash_config.image_id).sum()) != 1:
            raise EngramTierError(
                f"model: the image token's canonical id {hash_config.image_id} must be one base id's alone, and the "
                "compression lookup gives it to none or several; load the tokenizer the hash config was made for"
            )
        if hash_config.tokenizer_digest and lookup_digest(lookup.numpy()) != hash_config.tokenizer_digest:
            raise EngramTierError(
                f"model: the tokenizer's compression map (digest {lookup_digest(lookup.numpy())}) is not the one the hash "
                f"config was made for ({hash_config.tokenizer_digest}); load tokenizer '{hash_config.tokenizer}'"
            )
        return lookup

    @torch.no_grad()
    def _init_weights(self, seed: int) -> None:
        """GPT-2 style initialisation from two generators, one for the backbone and one for Engram, so
        that a model with and without Engram starts from the same backbone weights. Table rows start
        as small as token embeddings: rows of unit scale would add noise many times larger than the
        embeddings to the residual stream, and training first has to undo it. Biases (the demo layer's)
        start at zero."""
        backbone, engram = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
        engram_parts = [b.engram for b in self.blocks if b.engram is not None]
        if self.table is not None:
            engram_parts.append(self.table)
        engram_modules = {id(m) for part in engram_parts for m in part.modules()}
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding, TrainableTable)):
                std = residual_std if name.endswith(("attn.out", "mlp.down")) else 0.02
                _normal_(module.weight, std, engram if id(module) in engram_modules else backbone)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()

    def num_params(self) -> dict:
        table = self.table.weight.numel() if self.table is not None else (self.hasher.n_rows * self.config.row_dim if self.hasher else 0)
        dense = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("table."))
        return {"dense": dense, "table": table, "total": dense + table}

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        max_len = max_len or self.config.max_seq_len
        if max_len > self.config.max_seq_len:
            raise EngramTierError(f"model: a cache of {max_len} positions exceeds max_seq_len {self.config.max_seq_len}")
        return KVCache(self.config, batch_size, max_len, self.rope_cos.device, self.tok_emb.weight.dtype)

    def row_ids(self, base_ids: torch.Tensor, cache: KVCache | None = None, advance: bool = True) -> torch.Tensor:
        """Global row ids [B, T, layers, (N-1)*H] of every Engram layer for these positions; with a
        cache, the N-grams reach back into the tokens decoded before (and the cache remembers these,
        unless ``advance`` is False: a server names a step's rows before it runs the step's forwards)."""
        canonical = self.compress_lookup[base_ids]
        if cache is None:
            return self.hasher.hash_torch(canonical)
        context = torch.cat([cache.recent_ids, canonical], dim=1)
        if advance:
            cache.recent_ids = context[:, context.shape[1] - cache.recent_ids.shape[1] :]
        return self.hasher.hash_torch(context)[:, context.shape[1] - canonical.shape[1] :]

    def _request_rows(self, base_ids, rows: RowSource | None, cache: KVCache | None) -> dict:
        """Ask the row source for every Engram layer's rows now; the blocks collect them later."""
        if self.hasher is None:
            return {}
        source = rows if rows is not None else self.table
        if source is None:
            raise EngramTierError("model: this model holds no trainable table; pass rows=FlatRowSource(...) or another row source")
        if rows is not None and (rows.row_bytes != self.config.format.row_bytes or rows.n_rows != self.hasher.n_rows):
            raise EngramTierError(
                f"model: the row source holds {rows.n_rows} rows of {rows.row_bytes} B, the model needs {self.hasher.n_rows} "
                f"rows of {self.config.format.row_bytes} B ({self.config.row_format}[{self.config.row_dim}]); open the model's own table"
            )
        ids = self.row_ids(base_ids, cache)
        return {layer: source.prefetch(ids[:, :, i]) for i, layer in enumerate(self.config.engram.layer_ids)}

    def forward(self, base_ids: torch.Tensor, rows: RowSource | None = None, kv_cache: KVCache | None = None,
                speculate: Speculation | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] for base ids [B, T] (right padding never changes earlier positions).

        ``rows`` is the row source of the Engram table (default: the trainable table); with
        ``kv_cache`` the ids continue the cached sequences and the cache advances past them. With
        ``speculate`` (and a cache), the next position's candidate rows go to ``rows.speculate`` once
        the named block has run (`engramtier.model.speculation`).
        """
        return self._head(self.norm(self.hidden_states(base_ids, rows, kv_cache, speculate).mean(dim=2)))

    def hidden_states(self, base_ids: torch.Tensor, rows: RowSource | None = None, kv_cache: KVCache | None = None,
                      speculate: Speculation | None = None) -> torch.Tensor:
        """The residual stream [B, T, hc, d] after the last block: `forward` without the output head,
        which is what a replay of the Engram layers alone times (the head is not theirs)."""
        length = base_ids.shape[1]
        start = 0 if kv_cache is None else kv_cache.length
        limit = self.config.max_seq_len if kv_cache is None else kv_cache.max_len
        if start + length > limit:
            raise EngramTierError(f"model: {start + length} positions exceed the limit of {limit}; shorten the input or raise max_seq_len")
        if speculate is not None:
            self._check_speculation(speculate, rows, kv_cache)
        handles = self._request_rows(base_ids, rows, kv_cache)
        blocked = self.image_positions(base_ids)
        cos, sin = self.rope_cos[start : start + length], self.rope_sin[start : start + length]
        h = self.tok_emb(base_ids).unsqueeze(2).expand(-1, -1, self.config.hc_mult, -1)
        for block in self.blocks:
            engram_rows = handles[block.layer].wait() if block.engram is not None else None
            h = block(h, cos, sin, engram_rows, kv_cache, blocked)
            if speculate is not None and block.layer == speculate.after_block:
                rows.speculate(self.speculative_rows(h[:, -1], kv_cache, speculate.k))
        if kv_cache is not None:
            kv_cache.length += length
        return h

    def image_positions(self, base_ids: torch.Tensor) -> torch.Tensor | None:
        """[B, T] True where the token is the hash config's image token (None: the config names none)."""
        image = None if self.hasher is None else self.config.engram.image_id
        return None if image is None else self.compress_lookup[base_ids] == image

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x) if self.lm_head is not None else x @ self.tok_emb.weight.t()

    def _check_speculation(self, speculate: Speculation, rows, kv_cache: KVCache | None) -> None:
        speculate.check(self.config.n_layers, self.config.vocab_size)
        if self.hasher is None or kv_cache is None:
            raise EngramTierError("model: speculation needs Engram layers and a KV cache (it names the next position's rows)")
        if not hasattr(rows, "speculate"):
            raise EngramTierError(f"model: the row source {type(rows).__name__} cannot speculate (it has no `speculate`); "
                                  "serve the table from a TieredTable")

    def speculative_rows(self, hidden: torch.Tensor, cache: KVCache, k: int) -> torch.Tensor:
        """Row ids [B, k, layers, (N-1)*H] of the k likeliest next tokens, read off ``hidden`` [B, hc, d]
        (the last position's residual stream after some block) through the final norm and head; the
        cache already holds this step's last N-1 canonical ids, the candidates' context."""
        candidates = self._head(self.norm(hidden.mean(dim=1))).topk(k, dim=-1).indices
        return candidate_rows(self.hasher, cache.recent_ids, self.compress_lookup[candidates])


def _normal_(weight: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """Fill from a CPU generator (reproducible on any device) and copy into place."""
    weight.copy_(torch.empty(weight.shape).normal_(0.0, std, generator=generator))
