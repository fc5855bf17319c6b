"""`pip wheel .` gives a wheel that works outside the checkout: a fresh virtualenv with only that
wheel (and its dependencies from the package registry) has the console scripts, the buildout
recipe and extension entry points, and the data files (XSD schemas, the example configuration
and software releases). Everything runs from a directory outside the checkout, with `-I`-like
isolation (no PYTHONPATH), so nothing is imported from the source tree."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.registry, pytest.mark.timeout(900)]


def _run(argv: list, cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, virtualenv) built once for the module."""
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", REPO], cwd=work)
    (wheel,) = (work / "dist").glob("slapnode-*.whl")
    venv = work / "venv"
    _run(["/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable, "-m", "venv", venv], cwd=work)
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=work)
    return wheel, venv


def test_wheel_contents_match_the_tree(installed):
    wheel, _venv = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "slapos/grid/schemas/computer_consumption.xsd" in names
    assert not any(n.startswith(("tests/", "demo/", "bench/")) for n in names)
    assert not any(n in ("slapos/__init__.py", "slapos/recipe/__init__.py") for n in names)  # namespaces
    data = "slapnode-0.1.0.dev0.data/data/share/slapnode/"
    assert data + "slapos.cfg.example" in names
    assert data + "software-release/hello-web/software.cfg" in names
    assert data + "software-release/hello-c/hello-c-1.0.tar.gz" in names
    # every non-Python file of the package is in the wheel (package_data matches real files)
    for path in (REPO / "slapos").rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
            name = path.relative_to(REPO).as_posix()
            assert name in names, f"{name} is in the tree but not in the wheel"


def test_console_scripts_work_outside_the_checkout(installed, tmp_path):
    _wheel, venv = installed
    version = _run([venv / "bin" / "slapos", "--version"], cwd=tmp_path)
    assert "0.1.0.dev0" in version
    help_text = _run([venv / "bin" / "slapos", "node", "instance", "--help"], cwd=tmp_path)
    assert "usage:" in help_text and "instance" in help_text
    where = _run([venv / "bin" / "python", "-I", "-c", "import slapos.slap; print(slapos.slap.__file__)"], cwd=tmp_path)
    assert where.strip().startswith(str(venv)), where


def test_recipe_and_extension_entry_points_resolve(installed, tmp_path):
    _wheel, venv = installed
    code = (
        "from importlib.metadata import entry_points\n"
        "recipes = entry_points(group='zc.buildout')\n"
        "assert {'config', 'template', 'wrapper', 'mkdir', 'password', 'publish', 'request', 'promise', 'cmmi'}"
        " <= set(recipes.names), recipes.names\n"
        "for ep in recipes: assert callable(ep.load()), ep\n"
        "(ext,) = entry_points(group='zc.buildout.extension', name='profile-base-location')\n"
        "assert callable(ext.load())\n"
        "import importlib.resources as r\n"
        "assert r.files('slapos.grid.schemas').joinpath('partition_consumption.xsd').read_text().startswith('<')\n"
        "print('ok')\n"
    )
    assert _run([venv / "bin" / "python", "-I", "-c", code], cwd=tmp_path).strip() == "ok"
    share = venv / "share" / "slapnode"
    assert (share / "slapos.cfg.example").read_text().strip()
    assert (share / "software-release" / "hello-web" / "software.cfg").is_file()


def test_sdist_carries_what_the_tests_and_docs_need(installed, tmp_path):
    """The sdist (MANIFEST.in) has the tests, the demo, the docs, tools/ and the examples, and
    `make test` can start from it (Makefile, pyproject.toml)."""
    import tarfile

    _wheel, venv = installed
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "setuptools>=77"], cwd=tmp_path)
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path / 'dist')!r}))"
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    name = result.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / "dist" / name) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    for needed in ("Makefile", "pyproject.toml", "MANIFEST.in", "CHANGES.rst", "slapos.cfg.example",
                   "tools/stage.py", "demo/demo.py", "docs/install.md", "docs/http.md", "tests/conftest.py",
                   "tests/packaging/test_wheel.py", "software-release/hello-c/source/hello-c-1.0/main.c",
                   "slapos/grid/schemas/computer_consumption.xsd"):
        assert needed in members, needed
    assert not any(m.startswith(("demo/run/", ".venv/")) or "__pycache__" in m for m in members)
