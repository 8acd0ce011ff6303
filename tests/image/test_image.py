"""The image as a user meets it (`make image-check`; not part of `make test`): built from
deploy/Dockerfile, `docker run IMAGE` with no command serves the packaged voice, its
HEALTHCHECK turns healthy, and `docker stop` ends it at once (an init forwards the signal).

Where the real base (rayproject/ray, on Docker Hub) cannot be pulled, the base is a stand-in
made here: Debian bookworm by debootstrap from Debian's mirror (Python 3.11, as Ray's py311
image), `docker import`ed, with a user `ray` and a virtual environment on PATH as Ray's image
has. Containers use the host network and are reached on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from load_tests.local import free_port
from tests.helpers import speech_body

pytestmark = pytest.mark.timeout(1800)

ROOT = Path(__file__).resolve().parents[2]
BASE = os.environ.get("CHORUS_IMAGE_BASE", "")  # a Ray image to build on; else the stand-in
STANDIN = "chorus-standin-base:bookworm-py311"
IMAGE = "chorus:check"
MIRROR = "http://deb.debian.org/debian"
INPUTS_PORT = 47291  # where the build's inputs are served, the same every time if free
STANDIN_DOCKERFILE = """\
FROM {rootfs}
RUN useradd --create-home --uid 1000 --gid users ray
USER ray
RUN python3 -m venv /home/ray/anaconda3
ENV PATH=/home/ray/anaconda3/bin:$PATH HOME=/home/ray
WORKDIR /home/ray
"""


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    run = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and run.returncode:
        raise AssertionError(
            f"docker {' '.join(args[:3])}: {run.stdout[-3000:]}{run.stderr[-3000:]}"
        )
    return run.stdout.strip()


def docker_works() -> str | None:
    """Why the image cannot be checked here, or None."""
    if not shutil.which("docker"):
        return "no docker client (make image-check installs Debian's docker.io as root)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode:
        return "the Docker daemon is not running (make image-check starts dockerd as root)"
    if not BASE and not shutil.which("debootstrap"):
        return "no debootstrap to make a stand-in base, and CHORUS_IMAGE_BASE is not set"
    return None


def standin_base(tmp: Path) -> str:
    """The stand-in for Ray's image, made once per machine (kept as a local image)."""
    if docker("images", "-q", STANDIN):
        return STANDIN
    rootfs = tmp / "rootfs"
    packages = "python3,python3-venv,python3-pip,ca-certificates"
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={packages}",
            "bookworm",
            str(rootfs),
            MIRROR,
        ],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = f"chorus-standin-rootfs:{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "import", "-", imported],
        stdin=tar.stdout,
        check=True,
        capture_output=True,
        timeout=600,
    )
    tar.wait()
    (tmp / "Dockerfile").write_text(STANDIN_DOCKERFILE.format(rootfs=imported))
    docker("build", "--network", "host", "-t", STANDIN, str(tmp), timeout=600)
    return STANDIN


@contextmanager
def build_inputs(folder: Path) -> Iterator[str]:
    """This machine's CA bundle and local CPU torch wheel (pip reaches PyPI through a proxy
    here, and PyPI's torch is the CUDA build), served on 127.0.0.1 for the build only."""
    ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if ca.exists():
        shutil.copy(ca, folder / "ca.crt")
    for links in filter(None, os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()):
        for wheel in Path(links).glob("torch-*+cpu-*.whl") if Path(links).is_dir() else []:
            shutil.copy(wheel, folder / wheel.name)
    handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
    try:  # NOTE: the URL is a build argument, part of the dependency layer's cache key
        server = ThreadingHTTPServer(("127.0.0.1", INPUTS_PORT), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    why = docker_works()
    if why:
        pytest.skip(why)
    base = BASE or standin_base(tmp_path_factory.mktemp("standin"))
    with build_inputs(tmp_path_factory.mktemp("inputs")) as inputs:
        started = time.monotonic()
        docker(
            "build", "--network", "host", "--build-arg", f"BASE={base}",
            "--build-arg", f"BUILD_INPUTS_URL={inputs}",
            "-f", str(ROOT / "deploy" / "Dockerfile"), "-t", IMAGE, str(ROOT),
            timeout=1500,
        )  # fmt: skip
        print(f"built in {time.monotonic() - started:.0f} s")
    return IMAGE


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer 200 within {seconds:.0f} s")


def test_docker_run_with_no_command_serves_speech_and_stops_at_once(image: str) -> None:
    port = free_port()
    name = f"chorus-check-{uuid.uuid4().hex[:8]}"
    docker(
        "run", "-d", "--name", name, "--network", "host", "-e", f"CHORUS_HTTP_PORT={port}", image
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/readyz", 300)
        r = httpx.post(
            f"{url}/v1/audio/speech",
            json=speech_body("The image speaks.", response_format="wav"),
            timeout=60,
        )
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text[:300]
        assert r.content[:4] == b"RIFF" and len(r.content) > 24_000  # over half a second
        deadline = time.monotonic() + 120  # the HEALTHCHECK's first probe comes after 30 s
        while docker("inspect", "-f", "{{.State.Health.Status}}", name) != "healthy":
            assert time.monotonic() < deadline, docker(
                "inspect", "-f", "{{json .State.Health}}", name
            )
            time.sleep(2)
        started = time.monotonic()
        docker("stop", "-t", "30", name, timeout=60)
        stopped_s = time.monotonic() - started
        code = docker("inspect", "-f", "{{.State.ExitCode}}", name)
        print(f"stopped in {stopped_s:.1f} s, exit code {code}")
        assert stopped_s < 25, "docker stop waited for the kill timeout: SIGTERM was not handled"
        assert code == "0", f"exit code {code}: not a clean shutdown"
    finally:
        logs = docker("logs", "--tail", "40", name, check=False)
        docker("rm", "-f", name, check=False)
        print(logs)


def test_the_image_holds_the_configs_and_nothing_of_the_build(image: str) -> None:
    def ls(*paths: str) -> list[str]:
        return docker("run", "--rm", "--entrypoint", "ls", image, "-A", *paths).split()

    app = ls("/home/ray/chorus")
    assert {"serve_app", "deploy", "pyproject.toml"} <= set(app)
    assert not {".venv", ".git", "tests", "load_tests", "build"} & set(app)
    assert {"serve_config.yaml", "kuberay"} <= set(ls("/home/ray/chorus/deploy"))
    left = ls("/tmp")  # the build's inputs were read over HTTP and never stored
    assert not [f for f in left if f in ("ca.crt", "requirements.txt") or f.endswith(".whl")]
    # the dependencies' layer comes before the code's: a code change does not reinstall them
    steps = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).splitlines()
    code = next(n for n, step in enumerate(steps) if "serve_app" in step)  # newest first
    deps = next(n for n, step in enumerate(steps) if "-r /tmp/requirements.txt" in step)
    assert deps > code, steps
