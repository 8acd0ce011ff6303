"""The front door in HAProxy mode: chorus-haproxy's edit of the config Serve writes (checked by
the real haproxy), and who the ingress believes about a request's client address."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
from pathlib import Path

import pytest

from serve_app import haproxy
from serve_app.config import HAPROXY_BINARY, AppConfig
from serve_app.http.front_door import FrontDoor
from serve_app.http.requests import client_address
from tests.fakes import Clock, FakeRequest

pytestmark = pytest.mark.timeout(30)

SERVE_WROTE = Path(__file__).parent / "data" / "haproxy-ray-2.60.0.cfg"


def serve_config(tmp_path: Path, host: str = "127.0.0.1") -> Path:
    """What Serve writes, with its files in `tmp_path` and its HTTP frontend on `host`."""
    (tmp_path / "500.http").write_text("HTTP/1.0 500 Internal Server Error\r\n\r\n")
    text = SERVE_WROTE.read_text().replace("{dir}", str(tmp_path)).replace("{port}", "18000")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text.replace("bind 127.0.0.1:18000", f"bind {host}:18000"))
    return path


def binds(text: str) -> list[str]:
    return [line.split()[1] for line in text.splitlines() if line.strip().startswith("bind ")]


def test_the_edit_adds_the_client_address_and_keeps_a_local_server_local(
    tmp_path: Path,
) -> None:
    path = serve_config(tmp_path)
    before = path.read_text()
    assert binds(before) == [":9101", "127.0.0.1:18000", "*:8404"]  # what Serve binds
    haproxy.edit_file(str(path))
    after = path.read_text()
    defaults = after.split("\ndefaults\n", 1)[1].split("\nfrontend", 1)[0]
    assert "    option forwardfor" in defaults.splitlines()
    assert "option splice" not in defaults.replace("# dropped by chorus-haproxy: option splice", "")
    assert binds(after) == ["127.0.0.1:9101", "127.0.0.1:18000", "127.0.0.1:8404"]
    haproxy.edit_file(str(path))
    assert path.read_text() == after  # once only: Serve starts haproxy again on each reload
    # Nothing else changed.
    removed = set(before.splitlines()) - set(after.splitlines())
    splicing = {"    option splice-request", "    option splice-response"}
    assert removed == {"    bind :9101", "  bind *:8404", *splicing}


def test_a_server_on_every_interface_keeps_serves_side_listeners(tmp_path: Path) -> None:
    path = serve_config(tmp_path, host="0.0.0.0")
    haproxy.edit_file(str(path))
    assert binds(path.read_text()) == [":9101", "0.0.0.0:18000", "*:8404"]


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_haproxy_itself_accepts_the_edited_config(tmp_path: Path, host: str) -> None:
    path = serve_config(tmp_path, host)
    haproxy.edit_file(str(path))
    check = subprocess.run(
        [haproxy.real_haproxy(), "-c", "-f", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_command_edits_then_becomes_the_real_haproxy_with_serves_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = serve_config(tmp_path)
    args = ["-db", "-f", str(path), "-dR", "-sf", "123"]
    ran: list[tuple[str, list[str]]] = []
    monkeypatch.setattr("sys.argv", ["/venv/bin/chorus-haproxy", *args])
    monkeypatch.setenv(haproxy.BINARY_ENV, "/venv/bin/chorus-haproxy")
    monkeypatch.setattr("os.execv", lambda binary, argv: ran.append((binary, argv)))
    haproxy.main()
    [(binary, argv)] = ran
    assert Path(binary).name == "haproxy" and argv == [binary, *args]
    assert haproxy.MARKER in path.read_text()
    assert haproxy.BINARY_ENV == HAPROXY_BINARY  # the setting that names this command


def address(
    peer: str, *headers: tuple[str, str], trusted: tuple[str, ...] = (), door: bool = True
) -> str | None:
    networks = AppConfig.model_validate({"trusted_proxies": list(trusted)}).proxy_networks
    front = FrontDoor(active=door)
    front.know(["10.1.0.5"])
    return client_address(FakeRequest(peer, *headers), networks, front.forwards)


def test_behind_serves_haproxy_the_client_is_the_address_haproxy_saw() -> None:
    # HAProxy on a node appends the peer it saw as a header line of its own.
    seen = ("x-forwarded-for", "203.0.113.7")
    assert address("10.1.0.5", seen) == "203.0.113.7"
    assert address("127.0.0.1", ("x-forwarded-for", "203.0.113.7")) == "203.0.113.7"
    # What the client wrote itself is not believed, Forwarded included...
    forged = [("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=6.6.6.7")]
    assert address("10.1.0.5", *forged, seen) == "203.0.113.7"
    # ...unless HAProxy's peer is a trusted proxy: then the chain is walked as usual, through
    # the proxy's X-Forwarded-For or its Forwarded.
    via_lb = [("x-forwarded-for", "198.51.100.4"), ("x-forwarded-for", "192.0.2.10")]
    assert address("10.1.0.5", *via_lb, trusted=("192.0.2.10",)) == "198.51.100.4"
    forwarded_lb = [("forwarded", "for=198.51.100.9"), ("x-forwarded-for", "192.0.2.10")]
    assert address("10.1.0.5", *forwarded_lb, trusted=("192.0.2.10",)) == "198.51.100.9"
    assert address("10.1.0.5", *via_lb) == "192.0.2.10"  # the proxy is not trusted
    # Someone reaching an ingress replica's port directly is not a node: believed about nothing.
    assert address("203.0.113.50", ("x-forwarded-for", "6.6.6.6")) == "203.0.113.50"
    # Serve's proxy, or HAProxy without chorus-haproxy: the header is the client's word.
    assert address("127.0.0.1", ("x-forwarded-for", "6.6.6.6"), door=False) == "127.0.0.1"


async def test_a_node_that_joined_is_known_after_one_read() -> None:
    nodes = ["10.1.0.5"]
    clock = Clock()
    door = FrontDoor(active=True, nodes=lambda: list(nodes), clock=clock)
    new = ipaddress.ip_address("10.1.0.9")
    assert not door.forwards(new)  # unknown: a read starts
    await asyncio.wait_for(door._reading, 5)
    assert door.forwards(ipaddress.ip_address("10.1.0.5")) and not door.forwards(new)
    nodes.append("10.1.0.9")
    assert not door.forwards(new)  # read less than a second ago: not again yet
    clock.now += 1.5
    assert not door.forwards(new)
    await asyncio.wait_for(door._reading, 5)
    assert door.forwards(new)
    assert not FrontDoor(active=False).forwards(ipaddress.ip_address("127.0.0.1"))
