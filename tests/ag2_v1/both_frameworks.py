"""One unmodified program using classic AG2 (``autogen``) and AG2 1.x (``ag2``) side by side.

Runs the classic ``two_agent_tools`` scenario and the 1.x ``parallel_tools`` scenario in one
process and prints both expectations as JSON: ``{"classic": ..., "v1": ...}``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import scenarios as v1_scenarios  # this directory is the script's (sys.path[0])

CLASSIC = "two_agent_tools"
V1 = "parallel_tools"


def _classic_scenarios() -> object:
    # tests/ag2/scenarios.py has the same module name as ours: load it under another one.
    path = Path(__file__).parent.parent / "ag2" / "scenarios.py"
    spec = importlib.util.spec_from_file_location("classic_scenarios", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main() -> int:
    classic = _classic_scenarios().SCENARIOS[CLASSIC]()  # type: ignore[attr-defined]
    v1 = asyncio.run(v1_scenarios.SCENARIOS[V1]())
    print(json.dumps({"classic": asdict(classic), "v1": json.loads(v1.to_json())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
