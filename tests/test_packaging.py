"""What an install holds: the startup hook in every kind of install (or the tests say so at once),
and the migrations inside the collector package, in the wheel and the sdist alike."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

from collector import schema

from .helpers.install_checks import require_startup_hook
from .helpers.support import fetchval

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


def _built(tmp_path: Path) -> tuple[Path, Path]:
    """The project built as it is published: (wheel, sdist)."""
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-d", str(out)], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    [wheel], [sdist] = out.glob("*.whl"), out.glob("*.tar.gz")
    return wheel, sdist


def test_the_wheel_and_the_sdist_ship_the_migrations_and_the_wheel_migrates(
        tmp_path: Path, empty_database: str) -> None:
    migrations = {path.relative_to(ROOT).as_posix() for path in schema.MIGRATIONS.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts}
    assert {"collector/migrations/env.py", "collector/migrations/script.py.mako",
            "collector/migrations/versions/0001_initial.py"} <= migrations
    wheel, sdist = _built(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        assert migrations <= set(archive.namelist())
        archive.extractall(tmp_path / "installed")  # a pure-Python wheel installs by unpacking
    with tarfile.open(sdist) as archive:
        assert migrations <= {name.partition("/")[2] for name in archive.getnames()}

    # `migrate` from the installed copy alone: not the checkout (PYTHONPATH, the editable hook).
    program = ("import sys, collector.cli; print(collector.cli.__file__); "
               "sys.exit(collector.cli.main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "installed")}
    result = subprocess.run([sys.executable, "-c", program, "--dsn", empty_database, "migrate"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(tmp_path / "installed" / "collector")), result.stdout
    assert fetchval(empty_database, "SELECT version_num FROM alembic_version") \
        == schema.head_revision()
