"""Imports run one way inside ``collector`` (commands on top of the read side, never back) and
inside ``agent_shim`` (no module imports one that imports it back, however indirectly).

Read from the source (every ``import``, those inside functions and ``TYPE_CHECKING`` blocks too,
since a lazy import still ties two modules together), so a wrong-way import fails here before it
can make a cycle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import agent_shim
import collector

PACKAGE = Path(collector.__file__).parent
AGENT_PACKAGE = Path(agent_shim.__file__).parent
ROOTS = ("collector", "agent_shim")
#: The one module of the agent side the collector may use: the protocol both sides speak.
AGENT_SIDE_ALLOWED = {"agent_shim.wire"}
#: The read side returns JSON-ready data (``reads``) or text (``render``): it imports at most the
#: schema and the settings, and never a command line, the web server or the daemon.
READ_SIDE = {"collector.reads": {"collector.schema", "collector.settings"},
             "collector.render": set()}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The collector and agent_shim modules ``path`` imports, by full name."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from package import module` imports the module; `from module import name`, not.
            submodules = {f"{module}.{alias.name}" for alias in node.names}
            found.update({m for m in submodules if _is_module(m)} or {module})
    return {m for m in found if m.split(".")[0] in ROOTS and m != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of ``package`` (the collector's by default) → the collector and agent_shim
    modules it imports."""
    return {_module_name(path): _imports(path) for path in sorted(package.rglob("*.py"))}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle among the graph's modules (the first module repeated at the end), or
    []."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done or module not in graph:
            return []
        for target in sorted(graph[module]):
            if found := visit(target, [*path, module]):
                return found
        done.add(module)
        return []

    for module in graph:
        if found := visit(module, []):
            return found
    return []


def test_the_graph_sees_the_imports_it_should() -> None:
    """The parser itself: a check that found no imports would pass every rule below."""
    graph = import_graph()
    assert {"collector.reads", "collector.render", "collector.options"} <= graph["collector.cli"]
    assert graph["collector.otlp.commands"] >= {"collector.options", "collector.reads"}
    assert "agent_shim.wire" in graph["collector.pipeline"]
    agent = import_graph(AGENT_PACKAGE)
    # `from . import records` (a module), `from ..context import CURRENT` (a name in a module),
    # `from .. import activate` inside a function (a name in the package): all three are seen.
    assert {"agent_shim.records", "agent_shim.context"} <= agent["agent_shim.workflow"]
    assert "agent_shim.context" in agent["agent_shim.ag2.wrapping"]
    assert "agent_shim" in agent["agent_shim.ag2"]


def test_the_cycle_finder_names_the_cycle() -> None:
    """Given a cycle through a module that is not its first, the finder names it in order."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"d", "b"}, "d": set()}
    assert _cycle(graph) == ["b", "c", "b"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_nothing_imports_the_command_line() -> None:
    importers = {m for m, targets in import_graph().items() if "collector.cli" in targets}
    assert importers <= {"collector.__main__"}, (
        f"{sorted(importers)} import collector.cli; shared argument types and the database "
        "option belong in collector.options")


def test_the_read_side_imports_only_what_lies_below_it() -> None:
    graph = import_graph()
    for module, allowed in READ_SIDE.items():
        assert graph[module] <= allowed, (module, sorted(graph[module] - allowed))


def test_the_read_side_never_prints() -> None:
    for module in READ_SIDE:
        source = PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")
        calls = [node.lineno for node in ast.walk(ast.parse(source.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                 and node.func.id == "print"]
        assert calls == [], f"{module} prints (lines {calls}); the commands in cli do"


def test_the_collector_takes_only_the_wire_protocol_from_the_agent_side() -> None:
    wrong = {m: sorted(t for t in targets if t.startswith("agent_shim") and
                       t not in AGENT_SIDE_ALLOWED)
             for m, targets in import_graph().items()}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_the_collector_has_no_import_cycle() -> None:
    assert _cycle(import_graph()) == []


def test_the_agent_side_has_no_import_cycle() -> None:
    cycle = _cycle(import_graph(AGENT_PACKAGE))
    assert cycle == [], (
        f"import cycle in agent_shim: {' -> '.join(cycle)}. Move what the lower module needs "
        "below both (a function-level import hides the cycle, it does not break it)")
