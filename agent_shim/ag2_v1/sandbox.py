"""``code_exec`` events for AG2 1.x's client-side sandbox tools.

``SandboxCodeTool`` and ``SandboxShellTool`` run what the model wrote through an adapter
(``ag2.tools.sandbox.adapter.CodeAdapter`` / ``ShellAdapter``); the tool hands the model a string,
so the exit code is only in hand at the adapter. AG2 has no hook there: ``patch_sandbox`` wraps the
two adapters' public ``run`` (the smallest patch that sees every execution, whichever backend
runs it). Each run is a ``code_exec`` span in the current scope: under the ``tool_call`` whose
tool ran it. The backend returns stdout and stderr combined (``ExecResult.output``), so the
output is one text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any

from ag2.tools.sandbox.adapter import CodeAdapter, ShellAdapter

from ..tracker import Span
from .capture import TURN, Runtime

#: How ``ShellAdapter`` appends a non-zero exit code to the output it returns.
_EXIT_SUFFIX = re.compile(r"\[exit code: (-?\d+)\]\Z")
#: How ``ShellAdapter`` answers a command its filters refuse (nothing runs).
_REFUSED = "Command not allowed"


def patch_sandbox(runtime: Runtime) -> list[tuple[Any, str, Any]]:
    """Patch ``CodeAdapter.run`` and ``ShellAdapter.run``; ``(owner, name, original)`` to undo."""
    code_run, shell_run = CodeAdapter.run, ShellAdapter.run

    @functools.wraps(code_run)
    async def run_code(self: Any, code: str, language: Any, **kwargs: Any) -> Any:
        return await _traced(runtime, "code", {"language": language, "code": code},
                             _code_end, code_run(self, code, language, **kwargs))

    @functools.wraps(shell_run)
    async def run_shell(self: Any, command: str, **kwargs: Any) -> Any:
        return await _traced(runtime, "shell", {"language": "sh", "code": command},
                             _shell_end, shell_run(self, command, **kwargs))

    CodeAdapter.run = run_code  # type: ignore[method-assign]
    ShellAdapter.run = run_shell  # type: ignore[method-assign]
    return [(CodeAdapter, "run", code_run), (ShellAdapter, "run", shell_run)]


Ending = dict[str, Any]


async def _traced(runtime: Runtime, subtype: str, inputs: dict[str, Any],
                  end: Callable[[Any], Ending], run: Awaitable[Any]) -> Any:
    span = _start(runtime, subtype, inputs)
    try:
        result = await run
    except BaseException as exc:
        _end(runtime, span, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        raise
    _end(runtime, span, end(result))
    return result


def _start(runtime: Runtime, subtype: str, inputs: dict[str, Any]) -> Span | None:
    if not runtime.enabled:
        return None
    try:
        turn = TURN.get()
        return runtime.tracker.start_span(
            "code_exec", subtype=subtype, inputs=inputs,
            agent_name=turn.agent_name if turn is not None else None,
            meta={"framework": "ag2",
                  "tool": "SandboxCodeTool" if subtype == "code" else "SandboxShellTool"})
    except Exception as exc:
        runtime.disable("code_exec", exc)
        return None


def _end(runtime: Runtime, span: Span | None, ending: Ending) -> None:
    if span is None:
        return
    try:
        runtime.tracker.end_span(span, **ending)
    except Exception as exc:
        runtime.disable("code_exec", exc)


def _exited(exit_code: int | None, output: Any) -> Ending:
    failed = exit_code != 0
    return {"status": "failed" if failed else "completed",
            "outputs": {"exit_code": exit_code, "output": output},
            "error": f"exit code {exit_code}" if failed else None}


def _code_end(result: Any) -> Ending:
    return _exited(getattr(result, "exit_code", None), getattr(result, "output", None))


def _shell_end(text: Any) -> Ending:
    """``ShellAdapter.run`` returns text: the output, with ``[exit code: N]`` after it when N is
    not 0, or the reason its filters refused the command (then nothing ran)."""
    if not isinstance(text, str):
        return _exited(None, text)
    if text.startswith(_REFUSED):
        return {"status": "failed", "subtype": "refused", "error": text,
                "outputs": {"exit_code": None, "output": None}}
    match = _EXIT_SUFFIX.search(text)
    if match is None:
        return _exited(0, text)
    return _exited(int(match.group(1)), text[:match.start()].rstrip("\n"))
