"""Engram's N-gram hashing: canonical token ids -> global row ids of the table.

For every Engram layer ``l``, order ``n`` in 2..N and head ``h``, the suffix n-gram ending at each
position is mixed by XOR of token-times-odd-multiplier products (int64, wrapping) and reduced modulo a
prime unique to (l, n, h). Each (l, n, h) owns a sub-table; a row's global id is the sub-table's offset
plus the head index. The exact recipe is fixed by docs/design.md because the table's contents are only
meaningful under the addressing they were trained with.

Two implementations give identical ids: a numba kernel for the CPU (trace building, simulation) and a
torch one for tensors on any device (the model's forward pass). The numba kernel replaces the integer
division of ``mix % p`` (tens of cycles) by a floating-point reciprocal estimate and an exact integer
correction, which is what makes tens of millions of tokens per second per core possible.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numba
import numpy as np
from numba import njit, prange

from engramtier.errors import EngramTierError

if TYPE_CHECKING:  # torch is imported where a tensor is hashed: commands that only trace never load it
    import torch

_INT64_MAX = np.iinfo(np.int64).max
_SEED_LAYER_STRIDE = 10007

# The largest table shape accepted: 2**40 rows per sub-table keeps every global row id and every
# prime's trial-division search fast and inside int64; more heads, orders or layers than these are
# typos (DeepSeek-V4.1-Flash: 8 heads, orders 2..4, 2 layers), and would run for hours.
MAX_TABLE_SIZE = 1 << 40
MAX_HEADS = 64
MAX_NGRAM = 8
MAX_LAYERS = 64


def shape_problems(table_sizes, layer_ids, n_heads: int) -> list[str]:
    """What is wrong with a table shape (empty: nothing), checked before any prime is searched."""
    problems = []
    sizes, layers = list(table_sizes), list(layer_ids)
    if not sizes:
        problems.append("max n-gram must be >= 2 (Engram hashes orders 2..N)")
    elif any(s < 2 for s in sizes):
        problems.append(f"table sizes need one size >= 2 per order 2..N, got {sizes}")
    elif max(sizes) > MAX_TABLE_SIZE:
        problems.append(f"table size {max(sizes):,} exceeds {MAX_TABLE_SIZE:,} rows per sub-table")
    if len(sizes) + 1 > MAX_NGRAM:
        problems.append(f"max n-gram {len(sizes) + 1} exceeds {MAX_NGRAM}")
    if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
        problems.append(f"layer ids must be distinct non-negative layer numbers, got {layers}")
    elif len(layers) > MAX_LAYERS:
        problems.append(f"{len(layers)} Engram layers exceed {MAX_LAYERS}")
    if not 1 <= n_heads <= MAX_HEADS:
        problems.append(f"hash heads must be in 1..{MAX_HEADS}, got {n_heads}")
    return problems


def uniform_shape_problems(table_size: int, max_ngram: int, layer_ids, n_heads: int) -> list[str]:
    """`shape_problems` of ``table_size`` rows for every order 2..``max_ngram`` (the shape the command line
    and experiment files give), without first building a list as long as a mistyped ``max_ngram``."""
    if max_ngram > MAX_NGRAM:
        return [f"max n-gram {max_ngram} exceeds {MAX_NGRAM}", *shape_problems([table_size], layer_ids, n_heads)]
    return shape_problems([table_size] * max(max_ngram - 1, 0), layer_ids, n_heads)


@dataclass(frozen=True)
class HashConfig:
    """Everything that decides which row a token position reads.

    vocab_size   compressed vocabulary size V (ids are canonical ids in [0, V))
    pad_id       compressed id standing in for positions before a sequence's start
    table_sizes  per order n = 2..N, the smallest sub-table size; each head's prime is the next unused
                 prime above it
    layer_ids    transformer layers that hold an Engram module (seeds differ per layer)
    n_heads      hash heads per order
    tokenizer    name of the base tokenizer and a digest of its compression map (provenance: the
                 same text under another tokenizer addresses other rows)
    image_id     compressed id of the image token (V4.1 vision), None for none: a position holding it
                 hashes as the pad, and so does every position before it in its n-grams (an n-gram never
                 reaches across an image). Left out of ``to_dict`` when None, so the fingerprints of
                 configs without one stay what they were
    """

    vocab_size: int
    pad_id: int
    table_sizes: tuple[int, ...] = (1_000_003, 1_000_003)
    layer_ids: tuple[int, ...] = (1, 15)
    n_heads: int = 8
    seed: int = 0
    tokenizer: str = ""
    tokenizer_digest: str = ""
    image_id: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "table_sizes", tuple(int(s) for s in self.table_sizes))
        object.__setattr__(self, "layer_ids", tuple(int(l) for l in self.layer_ids))
        problems = []
        if self.vocab_size < 1:
            problems.append(f"vocab_size must be positive, got {self.vocab_size}")
        elif not 0 <= self.pad_id < self.vocab_size:
            problems.append(f"pad_id {self.pad_id} lies outside the vocabulary [0, {self.vocab_size})")
        if self.image_id is not None and not 0 <= self.image_id < self.vocab_size:
            problems.append(f"image_id {self.image_id} lies outside the vocabulary [0, {self.vocab_size})")
        problems += shape_problems(self.table_sizes, self.layer_ids, self.n_heads)
        if problems:
            raise EngramTierError("hash config: " + "; ".join(problems))

    @property
    def max_ngram_size(self) -> int:
        return len(self.table_sizes) + 1

    @property
    def heads_per_layer(self) -> int:
        """Sub-tables (and rows read per token) per Engram layer: (N-1) * H."""
        return (self.max_ngram_size - 1) * self.n_heads

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if not (k == "image_id" and v is None)}

    @classmethod
    def from_dict(cls, d: dict) -> "HashConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise EngramTierError(f"hash config: unknown keys {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def for_tokenizer(cls, tokenizer, tokenizer_name: str, table_sizes, layer_ids, n_heads: int,
                      seed: int = 0) -> "HashConfig":
        """The config hashing a `CompressedTokenizer`'s ids, with its compression map's digest as provenance
        and its image token (if it names one)."""
        return cls(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, table_sizes=tuple(table_sizes),
                   layer_ids=tuple(layer_ids), n_heads=n_heads, seed=seed, tokenizer=tokenizer_name,
                   tokenizer_digest=tokenizer.digest, image_id=tokenizer.image_id)

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the addressing: equal fingerprints read equal rows for equal token ids."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def layer_multipliers(config: HashConfig, layer_id: int) -> np.ndarray:
    """The N odd int64 multipliers of one layer (docs/design.md: seeded per layer)."""
    rng = np.random.default_rng(config.seed + _SEED_LAYER_STRIDE * layer_id)
    half = max(1, (_INT64_MAX // config.vocab_size) // 2)
    return rng.integers(0, half, size=config.max_ngram_size, dtype=np.int64) * 2 + 1


def head_primes(config: HashConfig) -> np.ndarray:
    """Primes [layers, orders, heads]: per order, successive primes above the order's table size,
    never reusing a prime taken by an earlier (layer, order, head)."""
    primes = np.empty((len(config.layer_ids), config.max_ngram_size - 1, config.n_heads), dtype=np.int64)
    last = [s - 1 for s in config.table_sizes]
    used: set[int] = set()
    for li in range(len(config.layer_ids)):
        for oi in range(config.max_ngram_size - 1):
            for h in range(config.n_heads):
                p = last[oi] + 1
                while p in used or not _is_prime(p):
                    p += 1
                used.add(p)
                last[oi] = p
                primes[li, oi, h] = p
    return primes


# Below this size the float64 estimate of x / p may be off by more than one, so _mod_exact is used.
_FAST_MOD_MIN_PRIME = 1 << 13


@njit(inline="always")
def _mod_fast(x, p, inv_p):
    """Python-style x mod p (in [0, p)) for int64 x and p >= _FAST_MOD_MIN_PRIME, without division.

    floor(x * (1/p)) in float64 is within one of x // p once p > 2**12 (its relative error is 2**-52),
    so r = x - q*p is exact and one branch-free correction finishes; this vectorises, idiv does not.
    """
    q = np.int64(np.floor(np.float64(x) * inv_p))
    r = x - q * p
    r = r + p if r < 0 else r
    return r - p if r >= p else r


@njit(inline="always")
def _mod_exact(x, p, inv_p):
    return x % p


def _make_hash_kernel(fast: bool):
    """The kernel reducing with `_mod_fast` or `_mod_exact`. It closes over a bool, a compile-time
    constant that pickles the same in every process, so numba's on-disk cache finds it again; closing
    over the jitted function itself would key the cache by that dispatcher's per-process id and
    recompile (seconds) in every new process."""

    @njit(parallel=True, nogil=True, cache=True)
    def kernel(tokens, starts, pad_id, image_id, multipliers, primes, inv_primes, offsets, out):
        """out[i, l, k] for flat tokens whose sequences begin at ``starts`` (last entry = len); a token equal
        to ``image_id`` (-1: none) blocks itself and every older shift, which then hold ``pad_id``.

        Works on chunks of positions so that each (layer, order, head) reduction runs as one
        vectorisable loop over the chunk; chunks run in parallel.
        """
        n = tokens.size
        n_layers, n_orders, n_heads = primes.shape
        n_cols = n_orders * n_heads
        chunk = 1024
        n_chunks = (n + chunk - 1) // chunk
        for c in prange(n_chunks):
            lo = c * chunk
            hi = min(n, lo + chunk)
            width = hi - lo
            context = np.empty((n_orders + 1, width), dtype=np.int64)  # context[k, j] = token k back
            mix = np.empty(width, dtype=np.int64)
            cols = np.empty((n_cols, width), dtype=np.int64)  # contiguous per head, then transposed
            seq = np.searchsorted(starts, lo, side="right") - 1
            for j in range(width):
                i = lo + j
                while starts[seq + 1] <= i:
                    seq += 1
                first = starts[seq]
                blocked = False
                for k in range(n_orders + 1):
                    blocked = blocked or i - k < first or tokens[i - k] == image_id
                    context[k, j] = pad_id if blocked else tokens[i - k]
            for l in range(n_layers):
                m0 = multipliers[l, 0]
                for j in range(width):
                    mix[j] = context[0, j] * m0
                for o in range(n_orders):
                    m = multipliers[l, o + 1]
                    for j in range(width):
                        mix[j] ^= context[o + 1, j] * m
                    for h in range(n_heads):
                        p = primes[l, o, h]
                        inv = inv_primes[l, o, h]
                        base = offsets[l, o, h]
                        col = cols[o * n_heads + h]
                        for j in range(width):
                            col[j] = base + (_mod_fast(mix[j], p, inv) if fast else _mod_exact(mix[j], p, inv))
                for j in range(width):
                    for k in range(n_cols):
                        out[lo + j, l, k] = cols[k, j]

    return kernel


_hash_kernel_fast = _make_hash_kernel(True)
_hash_kernel_exact = _make_hash_kernel(False)


class NgramHasher:
    """Maps canonical token ids to the global row ids every Engram layer reads (docs/design.md)."""

    def __init__(self, config: HashConfig):
        self.config = config
        self.multipliers = np.stack([layer_multipliers(config, l) for l in config.layer_ids])
        self.primes = head_primes(config)
        sizes = self.primes.reshape(-1)
        self.offsets = (np.cumsum(sizes) - sizes).reshape(self.primes.shape)
        self.n_rows = int(sizes.sum())
        self._inv_primes = 1.0 / self.primes.astype(np.float64)
        self._image_id = -1 if config.image_id is None else config.image_id  # -1 equals no token id
        self._torch_consts: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    @property
    def n_layers(self) -> int:
        return len(self.config.layer_ids)

    @property
    def rows_per_token(self) -> int:
        return self.n_layers * self.config.heads_per_layer

    @property
    def subtable_sizes(self) -> np.ndarray:
        """Sizes of the sub-tables in global order (layer, order, head)."""
        return self.primes.reshape(-1).copy()

    def _check_ids(self, lo: int, hi: int, where: str) -> None:
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise EngramTierError(
                f"{where}: token id {bad} is outside the compressed vocabulary [0, {self.config.vocab_size}); "
                "compress base ids with the model's CompressedTokenizer first"
            )

    def hash_ragged(self, tokens: np.ndarray, starts: np.ndarray, threads: int | None = None,
                    out: np.ndarray | None = None) -> np.ndarray:
        """Row ids [n_tokens, layers, (N-1)*H] for flat ``tokens`` holding sequences that begin at
        ``starts`` (with ``starts[-1] == len(tokens)``). Pass ``out`` (at least that many rows) to
        reuse a buffer across calls: fresh pages cost more than the hashing itself."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        shape = (tokens.size, self.n_layers, self.config.heads_per_layer)
        if out is None:
            out = np.empty(shape, dtype=np.int64)
        elif out.dtype != np.int64 or out.shape[1:] != shape[1:] or out.shape[0] < shape[0]:
            raise EngramTierError(f"hashing: output buffer {out.dtype}{list(out.shape)} cannot hold int64{list(shape)}")
        else:
            out = out[: tokens.size]
        if tokens.size == 0:
            return out
        self._check_ids(int(tokens.min()), int(tokens.max()), "hashing")
        if starts.size < 2 or starts[0] != 0 or starts[-1] != tokens.size or np.any(np.diff(starts) < 0):
            raise EngramTierError(f"hashing: sequence starts must rise from 0 to {tokens.size}")
        previous = numba.get_num_threads()
        if threads:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            kernel = _hash_kernel_fast if self.primes.min() >= _FAST_MOD_MIN_PRIME else _hash_kernel_exact
            kernel(tokens, starts, self.config.pad_id, self._image_id, self.multipliers, self.primes,
                   self._inv_primes, self.offsets, out)
        finally:
            numba.set_num_threads(previous)
        return out

    def hash(self, tokens: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Row ids [..., layers, (N-1)*H] for ids shaped [T] or [B, T] (each row its own sequence;
        right padding only changes the padded positions' rows)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim not in (1, 2):
            raise EngramTierError(f"hashing: expected token ids shaped [T] or [B, T], got shape {tokens.shape}")
        batch = tokens if tokens.ndim == 2 else tokens[None, :]
        starts = np.arange(batch.shape[0] + 1, dtype=np.int64) * batch.shape[1]
        rows = self.hash_ragged(batch.reshape(-1), starts, threads)
        return rows.reshape(*tokens.shape, self.n_layers, self.config.heads_per_layer)

    def hash_torch(self, tokens: torch.Tensor) -> torch.Tensor:
        """The same row ids for a LongTensor [B, T] (or [T]) on any device, computed there."""
        import torch

        if tokens.dtype != torch.int64:
            raise EngramTierError(f"hashing: token ids must be int64, got {tokens.dtype}")
        squeeze = tokens.dim() == 1
        x = tokens.unsqueeze(0) if squeeze else tokens
        if x.numel():
            self._check_ids(int(x.min()), int(x.max()), "hashing")
        mult, primes, offsets = self._torch_constants(x.device)
        n_orders = self.primes.shape[1]
        seq_len = x.shape[1]
        shifted = _blocked_to_pad([x] + [torch.nn.functional.pad(x, (k, 0), value=self.config.pad_id)[:, :seq_len]
                                         for k in range(1, n_orders + 1)], self.config)
        per_layer = []
        for l in range(self.n_layers):
            mix = shifted[0] * mult[l, 0]
            heads = []
            for o in range(n_orders):
                mix = mix ^ (shifted[o + 1] * mult[l, o + 1])
                heads.append(torch.remainder(mix.unsqueeze(-1), primes[l, o]) + offsets[l, o])
            per_layer.append(torch.cat(heads, dim=-1))
        rows = torch.stack(per_layer, dim=-2)
        return rows[0] if squeeze else rows

    def _torch_constants(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        import torch

        if device not in self._torch_consts:
            self._torch_consts[device] = tuple(
                torch.from_numpy(a).to(device) for a in (self.multipliers, self.primes, self.offsets)
            )
        return self._torch_consts[device]


def _blocked_to_pad(shifted: list, config: HashConfig) -> list:
    """The shifts (k = 0, 1, ... tokens back; numpy arrays or tensors) with docs/design.md's image rule applied:
    shift k holds the pad wherever shift k or a newer one holds the image token."""
    if config.image_id is None:
        return shifted
    out, blocked = [], None
    for s in shifted:
        image = s == config.image_id
        blocked = image if blocked is None else blocked | image
        out.append(s * ~blocked + config.pad_id * blocked)
    return out


def hash_reference_numpy(hasher: NgramHasher, tokens: np.ndarray) -> np.ndarray:
    """The straightforward numpy formulation of docs/design.md's addressing for ids shaped [B, T].

    Kept as the executable specification: tests check both kernels against it and the hashing
    benchmark measures them against it. Shift by padding, XOR the products, reduce with ``%``.
    """
    cfg = hasher.config
    tokens = np.asarray(tokens, dtype=np.int64)
    seq_len = tokens.shape[1]
    shifted = _blocked_to_pad([np.pad(tokens, ((0, 0), (k, 0)), constant_values=cfg.pad_id)[:, :seq_len]
                               for k in range(cfg.max_ngram_size)], cfg)
    layers = []
    for li in range(hasher.n_layers):
        m = hasher.multipliers[li]
        heads = []
        for oi in range(cfg.max_ngram_size - 1):
            mix = shifted[0] * m[0]
            for k in range(1, oi + 2):
                mix = np.bitwise_xor(mix, shifted[k] * m[k])
            for h in range(cfg.n_heads):
                heads.append(mix % hasher.primes[li, oi, h] + hasher.offsets[li, oi, h])
        layers.append(np.stack(heads, axis=-1))
    return np.stack(layers, axis=-2)
