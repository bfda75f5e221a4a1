"""Pricing AG2 1.x LLM calls with a maintained price table: ``genai-prices`` (optional).

AG2 1.x reports tokens only. Each call is priced from its provider, model and token breakdown
with the table bundled in the installed ``genai-prices`` (never a remote update: pricing does no
I/O), and records which table and version priced it. When the table is missing, or it does not
know the model, the call keeps its tokens with cost ``None``; the warning is logged once per
model and counted (:meth:`PriceTable.unpriced`), and no price is ever guessed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

TABLE = "genai-prices"

_HINTS = {"table not installed": " (pip install 'cmbagent-tracking[pricing]')",
          "unknown model": f" in {TABLE} (a newer {TABLE} may know it)"}

#: AG2's provider names where the price table spells them differently.
_PROVIDER_IDS = {"gemini": "google", "vertexai": "google-vertex", "bedrock": "aws"}

#: Providers whose reported prompt tokens leave out cache reads and writes (billed on top).
_CACHE_OUTSIDE_PROMPT = frozenset({"anthropic", "bedrock"})
#: Providers whose reported completion tokens leave out reasoning tokens (billed as output).
_REASONING_OUTSIDE_COMPLETION = frozenset({"google", "gemini", "vertexai"})


class Tokens(NamedTuple):
    """One call's token counts as AG2 reports them (``None``: not reported). A tuple: one is
    built per LLM call, and a frozen dataclass costs a microsecond to build."""

    prompt: int | None = None
    completion: int | None = None
    total: int | None = None
    cached: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None

    @classmethod
    def of(cls, usage: Any) -> Tokens:
        """From an ``ag2.events.Usage`` (token counts are floats there)."""
        if usage is None:
            return _NO_TOKENS
        counts: tuple[Any, ...]
        try:  # AG2's ``Usage`` (slots): plain attributes
            counts = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens,
                      usage.cache_read_input_tokens, usage.cache_creation_input_tokens,
                      usage.thinking_tokens)
        except AttributeError:  # something else reported usage: what it has of it
            counts = tuple(getattr(usage, field, None) for field in _USAGE_FIELDS)
        prompt, completion, total, cached, written, reasoning = map(_count, counts)
        if total is None and prompt is not None:  # no total: prompt + completion
            total = prompt + (completion or 0)
        return cls(prompt, completion, total, cached, written, reasoning)


def _count(value: Any) -> int | None:
    """A token count as AG2 reports it (a float, or ``None``), as an integer."""
    return int(value) if isinstance(value, (int, float)) else None


#: ``ag2.events.Usage``'s fields, in the order of :class:`Tokens`.
_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens",
                 "cache_read_input_tokens", "cache_creation_input_tokens", "thinking_tokens")
_NO_TOKENS = Tokens()


class Price(NamedTuple):
    """What one call cost, and the provenance recorded beside it."""

    cost_usd: float | None
    record: dict[str, Any]


class PriceTable:
    """Prices calls with ``genai-prices`` if it is installed; counts the calls it cannot price."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unpriced: Counter[tuple[str, str | None]] = Counter()
        self._loaded_table: _Table | None = None
        self._loaded = False

    def price(self, provider: str | None, model: str | None, tokens: Tokens) -> Price:
        """The cost of one call; never raises, never guesses."""
        table = self._table()
        if table is None:
            return self._unknown(None, "table not installed", model)
        if not model or tokens.prompt is None and tokens.completion is None:
            return self._unknown(table.version, "no model or no tokens", model)
        found = table.lookup(_PROVIDER_IDS.get(provider or "", provider) or None, model,
                             int(time.time() // 86400))
        if found is None:
            return self._unknown(table.version, "unknown model", model)
        # One provenance dict per table entry: records are snapshotted, never mutated.
        return Price(found.cost(provider, tokens), found.record)

    def unpriced(self) -> dict[str, int]:
        """How many calls went unpriced, by ``"<reason>: <model>"``."""
        with self._lock:
            return {f"{reason}: {model}": n for (reason, model), n in self._unpriced.items()}

    def _unknown(self, version: str | None, reason: str, model: str | None) -> Price:
        with self._lock:
            first = (reason, model) not in self._unpriced
            self._unpriced[(reason, model)] += 1
        if first:
            log.warning("cmbagent-tracking: LLM calls of model %r recorded without a cost: %s%s",
                        model, reason, _HINTS.get(reason, ""))
        return Price(None, {"table": TABLE, "version": version, "status": reason})

    def _table(self) -> _Table | None:
        # Imported on the first priced call, not at install: it pulls in pydantic and httpx.
        if not self._loaded:
            try:
                import genai_prices

                self._loaded_table = _Table(genai_prices)
            except Exception:
                self._loaded_table = None
            self._loaded = True
        return self._loaded_table


class _Found:
    """A model's entry in the table, with its prices on one day."""

    __slots__ = ("provider", "model", "record", "_rates")

    def __init__(self, provider: Any, model: Any, prices: Any, version: str) -> None:
        self.provider = provider
        self.model = model
        self.record = {"table": TABLE, "version": version, "status": "priced",
                       "provider": provider.id, "model": model.id}
        #: Flat rates per token: input, output, cache read, cache write (``None``: not flat).
        #: Floats: a call's cost is a float anyway, and Decimal arithmetic costs microseconds.
        self._rates = tuple(float(rate) / 1_000_000 if isinstance(rate, Decimal) else None
                            for rate in (getattr(prices, name, None) for name in (
                                "input_mtok", "output_mtok", "cache_read_mtok",
                                "cache_write_mtok")))

    def cost(self, provider: str | None, tokens: Tokens) -> float:
        """The table's input tokens include cache reads and writes, its output tokens include
        reasoning, whatever the provider's own report leaves out."""
        cached, written = tokens.cached or 0, tokens.cache_write or 0
        input_tokens = (tokens.prompt or 0) + (
            cached + written if provider in _CACHE_OUTSIDE_PROMPT else 0)
        output_tokens = (tokens.completion or 0) + (
            tokens.reasoning or 0 if provider in _REASONING_OUTSIDE_COMPLETION else 0)
        flat = self._flat(input_tokens - cached - written, output_tokens, cached, written)
        if flat is not None:
            return flat
        # Tiered or unusual prices: the table's own calculation (about a millisecond a call).
        from genai_prices import Usage

        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                      cache_read_tokens=cached, cache_write_tokens=written)
        return float(self.model.calc_price(usage, self.provider).total_price)

    def _flat(self, *counts: int) -> float | None:
        """The table's flat per-million rates applied as the table applies them: input tokens
        less the cached ones at the input rate, output, cache reads and writes at their own
        rates; ``None`` when a token class this call used has no flat rate of its own."""
        total = 0.0
        for rate, n in zip(self._rates, counts, strict=True):
            if n:
                if rate is None:
                    return None
                total += rate * n
        return total


class _Table:
    """The installed ``genai-prices`` table; lookups are cached per model and day."""

    def __init__(self, genai_prices: Any) -> None:
        self.version: str = genai_prices.__version__
        self._snapshot = genai_prices.data_snapshot.get_snapshot()
        self.lookup = functools.lru_cache(maxsize=256)(self._lookup)

    def _lookup(self, provider_id: str | None, model: str, day: int) -> _Found | None:
        """``day``: days since the epoch (UTC), so that prices that change on a date apply."""
        try:
            provider, info = self._snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            return None
        noon = datetime.fromtimestamp(day * 86400 + 43200, tz=timezone.utc)
        return _Found(provider, info, info.get_prices(noon), self.version)
