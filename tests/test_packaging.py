"""The startup hook reaches site-packages in every kind of install, or the tests say so at once."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

from .helpers.install_checks import require_startup_hook

ROOT = Path(__file__).parents[1]


def _site_packages(python: Path) -> Path:
    program = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.run([str(python), "-c", program],
                         capture_output=True, text=True, check=True).stdout
    return Path(out.strip())


def test_this_interpreter_has_the_startup_hook() -> None:
    require_startup_hook()


def test_an_editable_install_gets_the_startup_hook_and_captures(tmp_path: Path) -> None:
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", str(ROOT)],
                   check=True, capture_output=True)
    assert (_site_packages(python) / "cmbagent_tracking.pth").is_file()
    probe = "import sys; print('agent_shim._autoload' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    on = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                        env={**env, "CMBAGENT_COLLECTOR_URL": "tcp://127.0.0.1:9"}, check=True)
    off = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={**env, "CMBAGENT_COLLECTOR_URL": ""}, check=True)
    assert (on.stdout.strip(), off.stdout.strip()) == ("True", "False")


def test_a_missing_hook_fails_with_what_to_do(tmp_path: Path) -> None:
    message = ""
    try:
        require_startup_hook(tmp_path)
    except AssertionError as exc:
        message = str(exc)
    assert "pip install" in message and str(tmp_path) in message, message


def test_the_collector_loads_only_the_wire_protocol_of_the_agent_side() -> None:
    probe = ("import sys, collector.cli, collector.daemon, collector.web, collector.otlp.ingest; "
             "print(sorted(m for m in sys.modules if m.startswith('agent_shim')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "['agent_shim', 'agent_shim.wire']"
