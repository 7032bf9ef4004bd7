"""Request arrivals: when each request comes and how many tokens it reads and writes.

From a file, the public traces' own column names are recognised (the first matching set wins and
the trace's meta says which was used):

    azure      TIMESTAMP, ContextTokens, GeneratedTokens            Azure LLM inference traces (2023, 2024);
                                                                    timestamps are dates and times
    burstgpt   Timestamp, Request tokens, Response tokens           BurstGPT; seconds
    mooncake   timestamp, input_length, output_length               Mooncake's traces; milliseconds

as CSV with a header line, or JSON lines (``.jsonl``; Mooncake ships its traces so), either
optionally gzipped. Times become seconds from the first arrival, requests are ordered by arrival,
and a request that reads or writes no token (BurstGPT logs failed requests with 0 response tokens)
is left out and counted.

Without a file, ``poisson:RATE`` draws exponential gaps at RATE requests per second and prompt and
output lengths from seeded `LengthDistribution`s.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from engramtier.errors import EngramTierError

# name -> (time column, input column, output column, seconds per time unit; None: dates and times)
FORMATS = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens", None),
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens", 1.0),
    "mooncake": ("timestamp", "input_length", "output_length", 1e-3),
}
POISSON = "poisson:"
DEFAULT_POISSON_REQUESTS = 1000


@dataclass(frozen=True)
class Arrivals:
    """Requests in arrival order: seconds from the first arrival, prompt and output tokens (each >= 1),
    and what they came from (JSON-ready, for the trace's meta)."""

    times_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    origin: dict

    def __len__(self) -> int:
        return int(self.times_s.size)

    def limited(self, max_requests: int | None, duration_s: float | None) -> "Arrivals":
        """The first ``max_requests`` requests arriving within ``duration_s`` seconds."""
        keep = np.ones(len(self), bool) if duration_s is None else self.times_s <= duration_s
        if max_requests is not None:
            keep[max_requests:] = False
        if not keep.any():
            raise EngramTierError(f"arrivals ({self.origin.get('path', self.origin.get('kind'))}): no request is left "
                                  f"within --max-requests {max_requests} and --duration {duration_s}; raise them")
        return Arrivals(self.times_s[keep], self.input_tokens[keep], self.output_tokens[keep],
                        {**self.origin, "requests": int(keep.sum())})


@dataclass(frozen=True)
class LengthDistribution:
    """Token counts drawn per request, rounded and at least 1:

    ``N``                      always N
    ``uniform:LO:HI``          uniform integers in [LO, HI]
    ``exponential:MEAN``       exponential with that mean
    ``lognormal:MEDIAN:SIGMA`` lognormal with that median and log-space sigma (long-tailed, as
                               prompt and output lengths of real traces are)
    """

    kind: str
    params: tuple[float, ...]

    KINDS = {"fixed": 1, "uniform": 2, "exponential": 1, "lognormal": 2}

    @classmethod
    def parse(cls, text: str, option: str) -> "LengthDistribution":
        kind, *rest = text.strip().split(":")
        if not rest and kind.isdigit():
            kind, rest = "fixed", [kind]
        try:
            params = tuple(float(p) for p in rest)
        except ValueError:
            params = ()
        if (cls.KINDS.get(kind) != len(params) or not all(math.isfinite(p) and p >= 0 for p in params)
                or (kind != "lognormal" and params and max(params) < 1)
                or (kind == "uniform" and params[0] > params[1]) or (kind == "lognormal" and params[0] < 1)):
            raise EngramTierError(f"{option} '{text}': expected N, uniform:LO:HI, exponential:MEAN or "
                                  "lognormal:MEDIAN:SIGMA with token counts >= 1 (e.g. lognormal:512:1)")
        return cls(kind, params)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        p = self.params
        values = {"fixed": lambda: np.full(n, p[0]),
                  "uniform": lambda: rng.integers(int(p[0]), int(p[1]) + 1, n),
                  "exponential": lambda: rng.exponential(p[0], n),
                  "lognormal": lambda: rng.lognormal(math.log(p[0]), p[1], n)}[self.kind]()
        return np.maximum(np.rint(values), 1).astype(np.int64)

    def describe(self) -> str:
        return f"{self.kind}:" + ":".join(f"{v:g}" for v in self.params)


def poisson_arrivals(rate: float, input_len: LengthDistribution, output_len: LengthDistribution, *, seed: int,
                     max_requests: int | None, duration_s: float | None) -> Arrivals:
    """``max_requests`` (default 1000 without a duration) Poisson arrivals at ``rate`` per second, cut at
    ``duration_s``; lengths drawn from the two distributions, all from one generator seeded ``seed``."""
    if not (math.isfinite(rate) and rate > 0):
        raise EngramTierError(f"--arrivals poisson:{rate}: the rate must be a number of requests per second > 0")
    n = max_requests or (DEFAULT_POISSON_REQUESTS if duration_s is None else int(rate * duration_s * 1.5 + 100))
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, n)
    times = np.cumsum(gaps) - gaps[0]
    origin = {"kind": "poisson", "rate_per_s": rate, "input_len": input_len.describe(),
              "output_len": output_len.describe(), "seed": seed}
    arrivals = Arrivals(times, input_len.draw(rng, n), output_len.draw(rng, n), origin)
    return arrivals.limited(max_requests, duration_s)


def parse_arrivals_spec(text: str) -> float | None:
    """The rate of ``poisson:RATE``, or None when ``text`` names a file."""
    if not text.startswith(POISSON):
        return None
    try:
        return float(text[len(POISSON):])
    except ValueError:
        raise EngramTierError(f"--arrivals {text}: expected poisson:RATE with RATE in requests per second, "
                              "e.g. poisson:4") from None


def read_arrivals(path: str | Path) -> Arrivals:
    """The requests of an arrival-trace file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise EngramTierError(f"--arrivals {path}: no such file; give an arrival trace (CSV or JSONL) or poisson:RATE")
    name = path.name.lower().removesuffix(".gz")
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            records = _jsonl_records(text, path) if name.endswith(".jsonl") else _csv_records(text, path)
            fmt, columns, rows = _columns(records, path)
    except UnicodeDecodeError:
        raise EngramTierError(f"--arrivals {path}: not UTF-8 text; give a CSV or JSONL arrival trace") from None
    except (OSError, EOFError) as err:
        if isinstance(err, OSError) and err.filename is not None:
            raise
        raise EngramTierError(f"--arrivals {path}: not a readable gzip file ({err}); recompress it") from None
    times, inputs, outputs = rows
    order = np.argsort(times, kind="stable")
    times, inputs, outputs = times[order] - times[order[0]], inputs[order], outputs[order]
    used = (inputs > 0) & (outputs > 0)
    if not used.any():
        raise EngramTierError(f"--arrivals {path}: every request reads or writes 0 tokens; nothing to replay")
    origin = {"kind": "file", "path": str(path), "format": fmt, "columns": list(columns),
              "time_unit": "datetime" if FORMATS[fmt][3] is None else f"{FORMATS[fmt][3]:g} s",
              "skipped_empty": int((~used).sum())}
    return Arrivals(times[used] - times[used][0], inputs[used], outputs[used], origin)


def _csv_records(text, path: Path):
    reader = csv.reader(text)
    header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
    for number, row in enumerate(reader, 2):
        if row:
            if len(row) != len(header):
                raise EngramTierError(f"--arrivals {path} line {number}: {len(row)} fields but the header has {len(header)}; "
                                      "give a CSV whose rows match its header")
            yield number, dict(zip(header, row, strict=True))


def _jsonl_records(text, path: Path):
    for number, line in enumerate(text, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise EngramTierError(f"--arrivals {path} line {number}: not valid JSON ({err.msg}); fix or remove it") from None
        if not isinstance(record, dict):
            raise EngramTierError(f"--arrivals {path} line {number}: expected a JSON object per line")
        yield number, record


def _columns(records, path: Path) -> tuple[str, tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(format name, its columns, (times in seconds, input tokens, output tokens)) of ``records``: the
    format is the first of `FORMATS` whose columns the first record has."""
    fmt = None
    times, inputs, outputs = [], [], []
    for number, record in records:
        if fmt is None:
            fmt = next((n for n, cols in FORMATS.items() if all(c in record for c in cols[:3])), None)
            if fmt is None:
                expected = "; ".join(f"{name}: {', '.join(cols[:3])}" for name, cols in FORMATS.items())
                raise EngramTierError(f"--arrivals {path} line {number}: unknown columns ({', '.join(map(str, record))}); "
                                      f"expected those of {expected}")
            time_col, in_col, out_col, unit = FORMATS[fmt]
        where = f"--arrivals {path} line {number}"
        times.append(_time(record.get(time_col), unit, f"{where} column {time_col}"))
        inputs.append(_count(record.get(in_col), f"{where} column {in_col}"))
        outputs.append(_count(record.get(out_col), f"{where} column {out_col}"))
    if fmt is None:
        raise EngramTierError(f"--arrivals {path}: the file holds no requests; give an arrival trace with a header "
                              "line (CSV) or one JSON object per line")
    return fmt, FORMATS[fmt][:3], (np.array(times, np.float64), np.array(inputs, np.int64), np.array(outputs, np.int64))


def _count(value, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number >= 0 and number == int(number)):
        raise EngramTierError(f"{where}: expected a token count (a whole number >= 0), got {value!r}")
    return int(number)


def _time(value, unit: float | None, where: str) -> float:
    if unit is not None or isinstance(value, (int, float)):
        try:
            seconds = float(value) * (unit or 1.0)
        except (TypeError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds):
            raise EngramTierError(f"{where}: expected a number, got {value!r}")
        return seconds
    try:
        stamp = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise EngramTierError(f"{where}: expected a date and time such as 2023-11-16 18:15:46.680590, "
                              f"got {value!r}") from None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()
