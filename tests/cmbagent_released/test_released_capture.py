"""Released CMBAgent: recognised, and each workflow function is one run with its task, ended
with the workflow (here its real ``one_shot`` failing on a work_dir that is a file, before any
model call)."""

from __future__ import annotations

from pathlib import Path

import cmbagent
import pytest

from agent_shim import cmbagent_capture
from agent_shim.records import moment

#: CMBAgent's own agents warn so each time a CMBAgent() builds them.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Update function string contains no variables:UserWarning")


def test_it_is_recognised_as_released_and_its_structure_recorded() -> None:
    assert cmbagent_capture.install(cmbagent) == "released"  # done by conftest: said again
    assert cmbagent_capture.records_structure()


def test_one_shot_is_the_run_with_its_task_closed_when_it_raises(capture, tmp_path: Path) -> None:
    tracker, sink = capture
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(NotADirectoryError):
        cmbagent.one_shot("Plot a sine", work_dir=str(not_a_directory),
                          api_keys={"OPENAI": "offline"})
    runs = sink.of("run")
    assert [(moment(r), r["status"]) for r in runs] == [("start", "running"), ("end", "failed")]
    assert runs[0]["task_description"] == "Plot a sine"
    assert runs[0]["meta"] == {"workflow": "one_shot"}
    assert "NotADirectoryError" in runs[1]["error_message"]
    assert [s["status"] for s in sink.of("session")] == ["active", "failed"]
