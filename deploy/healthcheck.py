"""Container health check: exit 0 when the collector's /readyz answers 200, else 1.

Standard library only (the slim image has no curl). It asks the endpoint that
CMBAGENT_METRICS_BIND configures (HOST:PORT, default 127.0.0.1:9555); a wildcard host is
reached over loopback.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def readiness_url(bind: str) -> str:
    host, _, port = bind.rpartition(":")
    if host in WILDCARDS:
        host = "127.0.0.1"
    return f"http://{host}:{port}/readyz"


def main() -> int:
    bind = os.environ.get("CMBAGENT_METRICS_BIND") or "127.0.0.1:9555"
    url = readiness_url(bind)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            print(response.read(200).decode(errors="replace").strip())
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503: running, but not ready; the body says why
        print(f"{exc.code}: {exc.read(200).decode(errors='replace').strip()}")
    except (OSError, ValueError) as exc:  # not listening (yet), or CMBAGENT_METRICS_BIND unset
        print(f"{url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
