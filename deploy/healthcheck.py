"""Container health check: exit 0 when the collector's /readyz answers 200, else 1.

Run by the collector's own Python (the image's venv is first on PATH), so it reads the HTTP
address exactly as the collector does (``collector.settings``: CMBAGENT_HTTP_BIND, the older
name it still honours, or the default); a wildcard host is reached over loopback. No curl: the
slim image has none.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from collector.settings import HTTP_BIND, Settings, SettingsError

WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def readiness_url(bind: str) -> str:
    host, _, port = bind.rpartition(":")
    if host in WILDCARDS:
        host = "127.0.0.1"
    return f"http://{host}:{port}/readyz"


def main() -> int:
    try:
        bind = Settings.from_env().http_bind
    except SettingsError as exc:
        print(f"the collector's settings are unusable: {exc}")
        return 1
    if bind is None:
        print(f"{HTTP_BIND}=off: the collector serves no /readyz to ask")
        return 1
    url = readiness_url(bind)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            print(response.read(200).decode(errors="replace").strip())
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503: running, but not ready; the body says why
        print(f"{exc.code}: {exc.read(200).decode(errors='replace').strip()}")
    except (OSError, ValueError) as exc:  # not listening (yet), or a host urllib cannot ask
        print(f"{url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
