"""Small statistics: percentiles, a median with its spread, and ratios of paired samples."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """A median over repeated runs and its spread (the interquartile range)."""

    median: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        values = [v for v in values if not math.isnan(v)]
        return cls(percentile(values, 50), percentile(values, 25), percentile(values, 75),
                   len(values))

    def scaled(self, factor: float) -> Summary:
        return Summary(self.median * factor, self.q1 * factor, self.q3 * factor, self.n)

    def format(self, unit: str = "", digits: int = 3) -> str:
        """``12.3 µs [11.9-12.8]``: median, then the interquartile range."""
        if math.isnan(self.median):
            return "-"
        value = _number(self.median, digits)
        if self.n < 2:
            return f"{value}{unit}"
        return f"{value}{unit} [{_number(self.q1, digits)}-{_number(self.q3, digits)}]"


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Summary:
    """The median of per-round ratios: pairs measured side by side cancel the machine's drift."""
    return Summary.of(n / d for n, d in zip(numerators, denominators, strict=True) if d)


def _number(value: float, digits: int) -> str:
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"
