"""``python -m benchmarks [--quick] [--only emit,workflow,...]``: run the parts, print a table.

Part ``cmbagent`` runs only when named (``--only cmbagent``), in a Python 3.12 virtualenv with
the released CMBAgent.

Every figure is a median over repeated runs with its interquartile range in brackets; every
ratio is the median of ratios measured side by side in the same round. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

PARTS = ("emit", "workflow", "throughput", "latency", "reads", "memory", "redaction", "web")
#: Parts run only when named: they need an environment of their own.
NAMED_PARTS = ("cmbagent",)
REQUIREMENTS = {"opentelemetry.sdk": "opentelemetry-sdk", "sqlalchemy": "SQLAlchemy",
                "psycopg2": "psycopg2-binary", "psutil": "psutil", "autogen": "ag2",
                "asyncpg": "asyncpg (the [collector] extra)",
                "playwright": "playwright (the [browser] extra)"}
#: What the named parts need instead.
PART_REQUIREMENTS = {"cmbagent": {
    "cmbagent": "cmbagent-update==0.0.1.post68 'mistralai<2' matplotlib (Python 3.12)",
    "asyncpg": "asyncpg (the [collector] extra)"}}


def _missing(parts: list[str]) -> list[str]:
    needed: dict[str, str] = {}
    for part in parts:
        needed.update(PART_REQUIREMENTS.get(part, REQUIREMENTS))
    missing = []
    for module, distribution in needed.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run (default: all of {', '.join(PARTS)}; "
                             f"also {', '.join(NAMED_PARTS)}, see docs/benchmarks.md)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller loads")
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DSN"),
                        help="admin DSN of the PostgreSQL to create bench_* databases in "
                             "(default postgresql://postgres@127.0.0.1:5432/postgres)")
    parser.add_argument("--keep", action="store_true", help="keep the bench_* databases")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--collector-source", type=Path, metavar="DIR",
                        help="part throughput: also time the collector of this source tree (e.g. "
                             "a copy of main) beside this one's, alternating, in the same run")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    known = PARTS + NAMED_PARTS
    unknown = [p for p in parts if p not in known]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(known)}")
    missing = _missing(parts)
    if missing:
        print(f"benchmarks: missing {', '.join(missing)}; install them with\n"
              "  pip install '.[bench]' (part cmbagent: see docs/benchmarks.md)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from .harness import DEFAULT_ADMIN_DSN, Bench, machine
    from .report import markdown_table, text_table

    bench = Bench(admin_dsn=args.dsn or DEFAULT_ADMIN_DSN, quick=args.quick, keep=args.keep,
                  collector_source=args.collector_source and args.collector_source.resolve())
    results = []
    failed = False
    try:
        for part in sorted(parts, key=known.index):  # throughput feeds latency its maximum
            started = time.monotonic()
            print(f"-- {part} ...", file=sys.stderr, flush=True)
            try:
                results += importlib.import_module(f".{part}", __package__).run(bench)
            except Exception:
                failed = True
                traceback.print_exc()
            print(f"-- {part}: {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    finally:
        bench.cleanup()
    info = machine(bench.admin_dsn)
    print("\n".join(f"{k}: {v}" for k, v in info.items()))
    print("figures: median [interquartile range] over repeated runs; ratio = ours / baseline, "
          "per round\n")
    print(text_table(results))
    if args.markdown:
        print("\n" + markdown_table(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
