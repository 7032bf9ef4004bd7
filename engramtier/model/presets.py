"""Named table shapes of published Engram models, so a trace or table addresses the rows they do.

A preset gives defaults for the settings `engramtier trace`, `build-table`, and an experiment's
[trace] table take (``--preset NAME``, ``preset = "NAME"``); any setting given explicitly overrides its
preset value, so ``--preset dsv41-flash --table-size 20011`` keeps the model's shape with small tables.

dsv41-flash  DeepSeek-V4.1-Flash as shipped (docs/design.md): layers [1, 14], orders 2..4, 8 heads, 16,000,000
             rows per order, fp8_e4m3[256] + ue8m0 rows (264 B); the prime search gives the published
             per-layer row counts 384,006,168 and 384,016,682 (768,022,850 rows, about 189 GiB).
engram-27b   the paper's Engram-27B (Cheng et al., arXiv 2601.07372, section 4 and Appendix A, Table 5):
engram-40b   layers [2, 15], N-gram orders [2, 3], 8 heads, d_mem 1280 (each of a layer's 2 x 8
             sub-tables holds rows of 1280 / 16 = 80 values: bf16[80], 160 B), Engram Vocab Size
             2,262,400 (27B) and 7,239,680 (40B) rows per sub-table. Those sizes are read from Table 5
             as transcribed by several independent summaries of the paper, not from the PDF itself; they
             agree with the paper's Engram parameter counts: 2 layers x 2 orders x 8 heads x 80 values x
             the size gives 5.79B (paper: 5.7B) and 18.53B (paper: 18.5B).

Every preset uses DeepSeek's tokenizer (the paper's models use the DeepSeek-V3 tokenizer) with the
Engram pad at base id 2, as DeepSeek's demo sets it, and hash seed 0. No preset names an image token
(``image_token``, a base id that hashing blocks: docs/design.md's image rule): give the model's own with
``--image-token`` (``image_token`` in an experiment's [trace]) where its inputs hold images.
"""

from __future__ import annotations

from dataclasses import dataclass

from engramtier.errors import refuse_unknown
from engramtier.model.hashing import HashConfig
from engramtier.model.rows import RowFormat
from engramtier.model.tokenizer import DEEPSEEK_ENGRAM_PAD, load_compressed_tokenizer


@dataclass(frozen=True)
class Preset:
    """One model's Engram shape; the field names follow `engramtier trace`'s options."""

    name: str
    layers: tuple[int, ...]
    max_ngram: int
    heads: int
    table_size: int
    row_format: str
    row_dim: int
    tokenizer: str = "deepseek"
    engram_pad: int = DEEPSEEK_ENGRAM_PAD
    seed: int = 0
    image_token: int | None = None

    @property
    def row_bytes(self) -> int:
        return RowFormat(self.row_format, self.row_dim).row_bytes

    def trace_settings(self) -> dict:
        """The preset's value of every trace setting it decides (SHAPE_KEYS)."""
        return {"tokenizer": self.tokenizer, "layers": self.layers, "heads": self.heads,
                "max_ngram": self.max_ngram, "table_size": self.table_size, "row_bytes": self.row_bytes,
                "engram_pad": self.engram_pad, "seed": self.seed, "image_token": self.image_token}


PRESETS = {p.name: p for p in (
    Preset("dsv41-flash", layers=(1, 14), max_ngram=4, heads=8, table_size=16_000_000, row_format="fp8_e4m3",
           row_dim=256),
    Preset("engram-27b", layers=(2, 15), max_ngram=3, heads=8, table_size=2_262_400, row_format="bf16", row_dim=80),
    Preset("engram-40b", layers=(2, 15), max_ngram=3, heads=8, table_size=7_239_680, row_format="bf16", row_dim=80),
)}

# The trace settings a preset decides, and their values without one (`engramtier trace`'s defaults).
SHAPE_DEFAULTS = {"tokenizer": "deepseek", "layers": (1, 15), "heads": 8, "max_ngram": 3, "table_size": 1_000_003,
                  "row_bytes": 160, "engram_pad": None, "seed": 0, "image_token": None}
SHAPE_KEYS = tuple(SHAPE_DEFAULTS)


def get_preset(name: str, where: str = "--preset") -> Preset:
    """The preset called ``name``; an unknown name is refused with the list of known ones."""
    refuse_unknown([name], PRESETS, where, "preset")
    return PRESETS[name]


def preset_hash_config(preset: str, table_size: int | None = None, image_token: int | None = None):
    """The `HashConfig` of preset ``preset``, its sub-tables ``table_size`` rows when given and its image
    token the base id ``image_token`` when given (the preset's tokenizer checks it)."""

    shape = shape_settings(preset, {"table_size": table_size, "image_token": image_token})
    tokenizer = load_compressed_tokenizer(shape["tokenizer"], shape["engram_pad"], shape["image_token"])
    return HashConfig.for_tokenizer(tokenizer, shape["tokenizer"], [shape["table_size"]] * (shape["max_ngram"] - 1),
                                    shape["layers"], shape["heads"], seed=shape["seed"])


def shape_settings(preset: str | None, given: dict) -> dict:
    """Every SHAPE_KEYS setting: the one ``given`` (None: not given), else the preset's, else the default."""
    base = get_preset(preset).trace_settings() if preset else SHAPE_DEFAULTS
    return {k: base[k] if given.get(k) is None else given[k] for k in SHAPE_KEYS}
