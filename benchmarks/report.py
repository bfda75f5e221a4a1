"""One row per figure: ours, the baseline measured in the same run, their ratio, the goal."""

from __future__ import annotations

from dataclasses import dataclass

from .stats import Summary


@dataclass
class Result:
    part: str
    metric: str
    ours: str
    baseline: str = "-"
    ratio: Summary | None = None
    goal: str = "-"
    met: bool | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "-"}[self.met]


COLUMNS = ("part", "metric", "ours", "baseline (same run)", "ratio", "goal", "")


def _cells(result: Result) -> tuple[str, ...]:
    ratio = result.ratio.format(digits=3) if result.ratio is not None else "-"
    return (result.part, result.metric, result.ours, result.baseline, ratio, result.goal,
            result.verdict)


def text_table(results: list[Result]) -> str:
    rows = [COLUMNS, *(_cells(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    notes = [f"  [{r.part}] {r.metric}: {r.note}" for r in results if r.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS[:-1]) + " | verdict |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in results]
    notes = [f"- **{r.part} {r.metric}**: {r.note}" for r in results if r.note]
    return "\n".join(lines + ([""] + notes if notes else []))
