"""The zero-code CMBAgent capture's startup path, without CMBAgent (the real ones are tested in
their own venvs: tests/cmbagent_fork, tests/cmbagent_released): an unknown ``cmbagent`` gets the
flat capture, one warning, and its workflow functions still record runs; nothing raises. So does
one that looks like a release but whose hooks cannot be installed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .helpers.support import free_port

REPO = Path(__file__).parents[1]
UNKNOWN_CMBAGENT = '''
__version__ = "9.9"

def one_shot(task, agent="engineer"):
    return task.upper()
'''

#: Modules of a release (``CMBAgent`` and ``functions.register_function``) but no ``solve``.
CHANGED_RELEASE = {"cmbagent.py": "class CMBAgent:\n    pass\n",
                   "functions.py": "def register_function(f, **kwargs):\n    pass\n"}


@pytest.mark.parametrize("modules", [{}, CHANGED_RELEASE], ids=["unknown", "changed-release"])
def test_an_unknown_cmbagent_gets_flat_capture_and_one_warning(tmp_path: Path,
                                                               modules: dict[str, str]) -> None:
    package = tmp_path / "site" / "cmbagent"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(UNKNOWN_CMBAGENT)
    for name, source in modules.items():
        (package / name).write_text(source)
    program = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.WARNING)
        assert "cmbagent" not in sys.modules
        import cmbagent  # the startup hook recognises it right after it has executed
        hooked = hasattr(cmbagent.one_shot, "__wrapped__")
        from agent_shim import cmbagent_capture
        print(hooked, cmbagent.one_shot("fit"), cmbagent_capture.install(cmbagent))
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)]),
           "CMBAGENT_COLLECTOR_URL": f"tcp://127.0.0.1:{free_port()}",
           "CMBAGENT_SPOOL_DIR": str(tmp_path / "spool"), "CMBAGENT_EXIT_TIMEOUT": "0.1"}
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "FIT", "flat"]
    assert result.stderr.count("this CMBAgent version (9.9) is not recognised") == 1
