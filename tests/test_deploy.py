"""deploy/: what can be checked without Docker and without systemd running.

- The systemd unit: its hardening directives, always; ``systemd-analyze verify`` (no warnings)
  and ``systemd-analyze security --offline`` (exposure at most 1.5) where the tool is
  installed. Without it only the directives are checked, and that part passes on them alone.
- The compose files and the Dockerfile: structure, and that the build context keeps what the
  image needs. ``docker build`` / ``compose up`` cannot run here; docs/operations.md says how
  they were checked.
- The container health check script, against a real HTTP server.
- The least-privilege roles SQL, end to end on a real PostgreSQL: migrations as the owner, the
  daemon as the collector role (good and quarantined input), and what that role may not do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import yaml  # PyYAML: a dependency of ag2, so of the test extra

from collector import schema
from collector.settings import HTTP_BIND, METRICS_BIND

from .helpers.support import CollectorProcess, execute, fetchval, free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "cmbagent-collector.service"


# --- systemd -----------------------------------------------------------------------------------

def unit_directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in order (systemd keys may repeat)."""
    directives: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        directives.setdefault((section, key.strip()), []).append(value.strip())
    return directives


def test_systemd_unit_is_hardened_and_stops_cleanly() -> None:
    d = unit_directives(UNIT.read_text())
    service = {key: values for (section, key), values in d.items() if section == "Service"}
    expected = {
        "User": "cmbagent-collector", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "StateDirectory": "cmbagent-tracking", "Restart": "on-failure", "KillSignal": "SIGTERM",
        "TimeoutStopSec": "30s", "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], (key, service.get(key))
    assert "CMBAGENT_TRACKING_HOME=/var/lib/cmbagent-tracking" in service["Environment"]
    assert service["ExecStart"][0].split()[-1] == "serve"
    assert service["EnvironmentFile"] == ["-/etc/cmbagent-tracking/collector.env"]
    assert d[("Install", "WantedBy")] == ["multi-user.target"]
    # The user the unit runs as is the one the sysusers.d file creates.
    sysusers = (DEPLOY / "sysusers.d" / "cmbagent-tracking.conf").read_text()
    assert re.search(r"^u cmbagent-collector - .* /var/lib/cmbagent-tracking ", sysusers, re.M)


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    """Where systemd-analyze exists: no warning from verify, a low exposure from security.

    Where it does not, this test passes on the directive checks above alone."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    # verify insists that ExecStart exists; the venv of the install docs does not exist here.
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", UNIT.read_text(), flags=re.M)
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=30)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run([analyze, "security", "--offline=yes", "--threshold=15", str(unit)],
                              capture_output=True, text=True, timeout=30)
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr


def test_env_file_example_is_plain_key_value() -> None:
    known = re.compile(r"^(CMBAGENT_[A-Z_]+|PGSSLMODE|PGSSLROOTCERT)$")
    names = set()
    for line in (DEPLOY / "collector.env.example").read_text().splitlines():
        line = line.strip().removeprefix("#")
        if "=" in line and " " not in line.partition("=")[0]:
            key, _, value = line.partition("=")
            assert known.match(key) and value and not value.startswith(("'", '"')), line
            names.add(key)
    assert {"CMBAGENT_COLLECTOR_BIND", "CMBAGENT_TRACKING_DATABASE_URL", "CMBAGENT_HTTP_BIND",
            "CMBAGENT_CURVE_SECRET_KEY_FILE", "CMBAGENT_CURVE_ALLOW_DIR"} <= names


# --- Docker ------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule, for the patterns used here (no "!" exceptions)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = re.sub(r"\\\[(.*?)\\\]", r"[\1]", regex).replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            return True
    return False


def test_dockerfile_is_non_root_with_healthcheck() -> None:
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    ops = {op: arg for op, arg in final}
    assert re.fullmatch(r"\d+(:\d+)?", ops["USER"]) and not ops["USER"].startswith("0"), ops
    assert "healthcheck.py" in ops["HEALTHCHECK"] and "--start-period" in ops["HEALTHCHECK"]
    assert set(ops["EXPOSE"].split()) == {"5555", "9555"}
    assert ops["ENTRYPOINT"] == '["cmbagent-collector"]' and ops["CMD"] == '["serve"]'
    assert ops["STOPSIGNAL"] == "SIGTERM"
    env = ops["ENV"]
    assert "CMBAGENT_COLLECTOR_BIND=tcp://0.0.0.0:5555" in env
    assert "CMBAGENT_HTTP_BIND=0.0.0.0:9555" in env
    assert sum(op == "FROM" for op, _ in instructions) == 2  # build stage, then runtime
    assert any(op == "RUN" and '"/src[collector]"' in arg for op, arg in instructions)


def test_build_context_keeps_what_the_image_needs_and_no_secrets() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    needed = ["pyproject.toml", "README.md", "agent_shim/__init__.py",
              "agent_shim/cmbagent_tracking.pth", "collector/cli.py", "migrations/env.py",
              "migrations/versions/0001_initial.py", "deploy/healthcheck.py"]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not dockerignored(path, patterns), path
    for path in [".git/config", "deploy/.env", ".venv/bin/python", "tests/test_deploy.py",
                 "collector/__pycache__/cli.cpython-311.pyc", "keys/agent.key_secret"]:
        assert dockerignored(path, patterns), path
    for op, arg in dockerfile_instructions():
        if op == "COPY" and not arg.startswith("--from"):
            source = arg.split()[0]
            assert source == "." or (ROOT / source).exists(), source


def compose(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_compose_starts_postgres_then_the_collector() -> None:
    services = compose("compose.yaml")["services"]
    postgres, collector = services["postgres"], services["collector"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert "ports" not in postgres  # reachable by the collector only
    assert any(v.startswith("pgdata:") for v in postgres["volumes"])
    for volume in postgres["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (DEPLOY / source).is_file(), source
    assert "${POSTGRES_PASSWORD:?" in postgres["environment"]["POSTGRES_PASSWORD"]

    assert collector["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / ".." / collector["build"]["dockerfile"]).is_file()
    assert collector["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert collector["command"] == ["serve"]  # migrates at start
    dsn = urlsplit(collector["environment"]["CMBAGENT_TRACKING_DATABASE_URL"])
    assert (dsn.scheme, dsn.hostname, dsn.username) == ("postgresql", "postgres",
                                                       "cmbagent_owner")
    assert all(p.startswith("127.0.0.1:") for p in collector["ports"])
    assert "127.0.0.1:5555:5555" in collector["ports"]
    assert collector["stop_signal"] == "SIGTERM" and collector["stop_grace_period"] == "30s"
    assert collector["read_only"] is True and collector["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in collector["security_opt"]


def test_compose_least_privilege_override_splits_the_roles() -> None:
    services = compose("compose.least-privilege.yaml")["services"]
    migrate, collector = services["migrate"], services["collector"]
    assert migrate["command"] == ["migrate"]
    assert "cmbagent_owner:" in migrate["environment"]["CMBAGENT_TRACKING_DATABASE_URL"]
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert collector["command"] == ["serve", "--no-migrate"]
    assert "cmbagent_collector:" in collector["environment"]["CMBAGENT_TRACKING_DATABASE_URL"]
    assert collector["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"}}


# --- the health check --------------------------------------------------------------------------

class _Readiness(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        code = self.status if self.path == "/readyz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ready\n" if code == 200 else b"not ready: database\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readiness_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Readiness]]]:
    handler = type("Handler", (_Readiness,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def run_healthcheck(bind: str, variable: str = HTTP_BIND) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (HTTP_BIND, METRICS_BIND)}
    return subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py")],
                          env={**env, variable: bind}, capture_output=True, text=True, timeout=30)


def test_healthcheck_follows_readyz(readiness_server: tuple) -> None:
    server, handler = readiness_server
    port = server.server_address[1]
    assert run_healthcheck(f"0.0.0.0:{port}").returncode == 0  # a wildcard: asked on loopback
    # The older name, still honoured by the collector, is followed too.
    assert run_healthcheck(f"127.0.0.1:{port}", METRICS_BIND).returncode == 0
    handler.status = 503
    result = run_healthcheck(f"127.0.0.1:{port}")
    assert result.returncode == 1 and "not ready" in result.stdout
    assert run_healthcheck(f"127.0.0.1:{free_port()}").returncode == 1  # nothing listening
    off = run_healthcheck("off")
    assert off.returncode == 1 and "serves no /readyz" in off.stdout, off


def test_deploy_files_name_the_http_address_by_its_current_name() -> None:
    """The collector still reads the older CMBAGENT_METRICS_BIND, but deploy/ teaches the
    current name only, so an operator copying it never sets the two apart."""
    stale = [path.name for path in DEPLOY.rglob("*") if path.is_file()
             and METRICS_BIND in path.read_text()]
    assert stale == []


# --- least-privilege roles, on a real PostgreSQL -----------------------------------------------

def role_script(names: dict[str, str]) -> tuple[list[str], list[str]]:
    """deploy/postgres-roles.sql with the role and database names replaced (schema names stay:
    the schema lives inside the test's own database): (cluster statements, database ones)."""
    text = (DEPLOY / "postgres-roles.sql").read_text()
    for old, new in names.items():
        text = re.sub(rf"(?<!SCHEMA )\b{old}\b", new, text)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    cluster, database = re.split(r"^\\connect \w+$", text, flags=re.M)

    def statements(part: str) -> list[str]:
        return [s.strip() for s in part.split(";") if s.strip()]

    return statements(cluster), statements(database)


def dsn_for(admin: str, user: str, password: str, database: str) -> str:
    parts = urlsplit(admin)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}", path=f"/{database}"))


def test_least_privilege_roles_run_the_collector(postgres_admin: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:10]
    names = {"cmbagent_owner": f"cmbtest_owner_{suffix}",
             "cmbagent_collector": f"cmbtest_collector_{suffix}",
             "cmbagent_tracking": f"cmbtest_roles_{suffix}"}
    owner, collector_role, database = names.values()
    cluster, in_database = role_script(names)
    admin_db = dsn_for(postgres_admin, *_credentials(postgres_admin), database)
    collector = None
    try:
        execute(postgres_admin, *cluster,
                         f"ALTER ROLE {owner} PASSWORD 'owner-pw'",
                         f"ALTER ROLE {collector_role} PASSWORD 'collector-pw'")
        execute(admin_db, *in_database)
        owner_dsn = dsn_for(postgres_admin, owner, "owner-pw", database)
        collector_dsn = dsn_for(postgres_admin, collector_role, "collector-pw", database)

        schema.upgrade(owner_dsn)  # migrations: the owner's job
        schema.upgrade(collector_dsn)  # a current schema: a no-op the collector role may run
        assert fetchval(admin_db, "SELECT tableowner FROM pg_tables WHERE tablename = "
                        "'execution_events'") == owner

        # The daemon as the collector role: TEMP staging tables, upserts, sequences, quarantine.
        from .helpers.frames import exercise_bad_input

        collector = CollectorProcess(collector_dsn, tmp_path, extra=("--no-migrate",)).start()
        exercise_bad_input(collector, "records")
        assert collector.stop() == 0, collector.log_text()
        collector = None

        # ... and nothing beyond rows.
        for statement in ["CREATE TABLE intruder (x int)", "CREATE TABLE public.intruder (x int)",
                          "DROP TABLE quarantine", "ALTER TABLE sessions ADD COLUMN x int",
                          "TRUNCATE execution_events"]:
            with pytest.raises((asyncpg.InsufficientPrivilegeError,
                                asyncpg.InvalidSchemaNameError)):
                execute(collector_dsn, statement)
    finally:
        if collector is not None and collector.alive():
            collector.kill()
        execute(postgres_admin, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)",
                         f"DROP ROLE IF EXISTS {collector_role}", f"DROP ROLE IF EXISTS {owner}")


def _credentials(dsn: str) -> tuple[str, str]:
    parts = urlsplit(dsn)
    return parts.username or "postgres", parts.password or ""
