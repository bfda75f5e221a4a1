"""Checks on how the project is installed, for tests that depend on it."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

HOOK = "cmbagent_tracking.pth"


def require_startup_hook(site_packages: Path | None = None) -> None:
    """Fail at once, saying what to do, when the startup hook is not installed.

    Tests of unmodified programs otherwise fail only by a timeout: nothing is captured.
    """
    where = site_packages or Path(sysconfig.get_paths()["purelib"])
    assert (where / HOOK).is_file(), (
        f"the startup hook {HOOK} is not in {where}, so unmodified programs run by "
        f"{sys.executable} are not captured: install the project into this environment with "
        "`pip install .` or `pip install -e .` (putting the source tree on PYTHONPATH is not "
        "enough)")
