"""Pricing AG2 1.x LLM calls with a maintained price table: ``genai-prices`` (optional).

AG2 1.x reports tokens only. Each call is priced from its provider, model and token breakdown
with the table bundled in the installed ``genai-prices`` (never a remote update: pricing does no
I/O), and records which table and version priced it. When the table is missing, or it does not
know the model, the call keeps its tokens with cost ``None``; the warning is logged once per
model and counted (:meth:`PriceTable.unpriced`), and no price is ever guessed. What the table says
of a provider and model is looked up once a day (prices may change on a date) and kept.
"""

from __future__ import annotations

import logging
import operator
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
        try:  # AG2's ``Usage`` (slots): plain attributes
            counts = _usage_counts(usage)
        except AttributeError:  # something else reported usage: what it has of it
            counts = tuple(getattr(usage, field, None) for field in _USAGE_FIELDS)
        prompt, completion, total, cached, written, reasoning = counts
        try:  # spelled out: a function call per count costs as much as all the rest
            prompt = None if prompt is None else int(prompt)
            completion = None if completion is None else int(completion)
            total = None if total is None else int(total)
            cached = None if cached is None else int(cached)
            written = None if written is None else int(written)
            reasoning = None if reasoning is None else int(reasoning)
        except (TypeError, ValueError, OverflowError):  # not all numbers: those that are
            prompt, completion, total, cached, written, reasoning = map(_count, counts)
        if total is None and prompt is not None:  # no total: prompt + completion
            total = prompt + (completion or 0)
        return _new(cls, (prompt, completion, total, cached, written, reasoning))


def _count(value: Any) -> int | None:
    """A token count as an integer (AG2 reports floats); ``None``: not reported, or no number
    (infinity, NaN, text that is not one)."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


#: ``ag2.events.Usage``'s fields, in the order of :class:`Tokens`.
_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens",
                 "cache_read_input_tokens", "cache_creation_input_tokens", "thinking_tokens")
_usage_counts = operator.attrgetter(*_USAGE_FIELDS)
_new = tuple.__new__
_NO_TOKENS = Tokens()


class Price(NamedTuple):
    """What one call cost, and the provenance recorded beside it."""

    cost_usd: float | None
    record: dict[str, Any]


class PriceTable:
    """Prices calls with ``genai-prices`` if it is installed; counts the calls it cannot price."""

    #: Provider and model pairs kept; past it, all are looked up again (a program that names
    #: models without end must not grow this without end).
    LIMIT = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unpriced: Counter[tuple[str, str | None]] = Counter()
        self._loaded_table: _Table | None = None
        self._loaded = False
        #: What the table says of each (provider, model) today (its entry, or why it has
        #: none), and until when (epoch seconds).
        self._entries: dict[tuple[str | None, str], tuple[_Found | str, float]] = {}

    def price(self, provider: str | None, model: str | None, tokens: Tokens) -> Price:
        """The cost of one call; never raises, never guesses."""
        found: _Found | str
        if not model or tokens.prompt is None and tokens.completion is None:
            found = "no model or no tokens"
        else:
            entry = self._entries.get((provider, model))
            found = (entry[0] if entry is not None and time.time() < entry[1]
                     else self._look_up(provider, model))
        if isinstance(found, str):
            return self._unknown(found, model)
        # One provenance dict per table entry: records are snapshotted, never mutated.
        return _new(Price, (found.cost(tokens), found.record))

    def unpriced(self) -> dict[str, int]:
        """How many calls went unpriced, by ``"<reason>: <model>"``."""
        with self._lock:
            return {f"{reason}: {model}": n for (reason, model), n in self._unpriced.items()}

    def _look_up(self, provider: str | None, model: str) -> _Found | str:
        """The table's entry for ``model`` today (kept until the day ends, UTC), or why there
        is none."""
        table = self._table()
        if table is None:
            return "table not installed"
        day = int(time.time() // 86400)
        found = table.lookup(provider, model, day) or "unknown model"
        entries = self._entries
        if len(entries) >= self.LIMIT:
            entries.clear()
        entries[(provider, model)] = (found, (day + 1) * 86400)
        return found

    def _unknown(self, reason: str, model: str | None) -> Price:
        table = self._table()
        if table is None:
            reason = "table not installed"
        with self._lock:
            first = (reason, model) not in self._unpriced
            self._unpriced[(reason, model)] += 1
        if first:
            log.warning("cmbagent-tracking: LLM calls of model %r recorded without a cost: %s%s",
                        model, reason, _HINTS.get(reason, ""))
        version = table.version if table is not None else None
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
    """A model's entry in the table, with its prices on one day, for calls through one of
    AG2's providers."""

    __slots__ = ("provider", "model", "record", "_rates", "_unrated", "_cache_outside",
                 "_reasoning_outside")

    def __init__(self, ag2_provider: str | None, provider: Any, model: Any, prices: Any,
                 version: str) -> None:
        self.provider = provider
        self.model = model
        self.record = {"table": TABLE, "version": version, "status": "priced",
                       "provider": provider.id, "model": model.id}
        rates = [getattr(prices, name, None) for name in (
            "input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")]
        #: Flat rates per token: input, output, cache read, cache write (0.0 where not flat).
        #: Floats: a call's cost is a float anyway, and Decimal arithmetic costs microseconds.
        self._rates = tuple(float(rate) / 1_000_000 if isinstance(rate, Decimal) else 0.0
                            for rate in rates)
        #: Where (in that order) the table has no flat rate: tokens there are priced by it.
        self._unrated = tuple(i for i, rate in enumerate(rates) if not isinstance(rate, Decimal))
        self._cache_outside = ag2_provider in _CACHE_OUTSIDE_PROMPT
        self._reasoning_outside = ag2_provider in _REASONING_OUTSIDE_COMPLETION

    def cost(self, tokens: Tokens) -> float:
        """The table's input tokens include cache reads and writes, its output tokens include
        reasoning, whatever the provider's own report leaves out."""
        prompt, completion, _, cached, written, reasoning = tokens
        cached, written = cached or 0, written or 0
        input_tokens = (prompt or 0) + (cached + written if self._cache_outside else 0)
        output_tokens = (completion or 0) + (reasoning or 0 if self._reasoning_outside else 0)
        counts = (input_tokens - cached - written, output_tokens, cached, written)
        for i in self._unrated:
            if counts[i]:  # a token class with no flat rate: the table's own calculation
                return self._calculated(input_tokens, output_tokens, cached, written)
        # The table's flat rates as the table applies them: input tokens less the cached ones
        # at the input rate, output, cache reads and writes each at its own rate.
        uncached_rate, output_rate, read_rate, write_rate = self._rates
        return (uncached_rate * counts[0] + output_rate * counts[1] + read_rate * counts[2]
                + write_rate * counts[3])

    def _calculated(self, input_tokens: int, output_tokens: int, cached: int,
                    written: int) -> float:
        """Tiered or unusual prices: the table's own calculation (about a millisecond)."""
        from genai_prices import Usage

        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                      cache_read_tokens=cached, cache_write_tokens=written)
        return float(self.model.calc_price(usage, self.provider).total_price)


class _Table:
    """The installed ``genai-prices`` table."""

    def __init__(self, genai_prices: Any) -> None:
        self.version: str = genai_prices.__version__
        self._snapshot = genai_prices.data_snapshot.get_snapshot()

    def lookup(self, provider: str | None, model: str, day: int) -> _Found | None:
        """``model``'s entry for calls through AG2's ``provider``, priced as on ``day`` (days
        since the epoch, UTC: prices that change on a date apply)."""
        provider_id = _PROVIDER_IDS.get(provider or "", provider) or None
        try:
            table_provider, info = self._snapshot.find_provider_model(model, None, provider_id,
                                                                      None)
        except LookupError:
            return None
        noon = datetime.fromtimestamp(day * 86400 + 43200, tz=timezone.utc)
        return _Found(provider, table_provider, info, info.get_prices(noon), self.version)
