"""The wheel installs as one namespace, ``crystalforge.<part>``, with no generic top-level names.

Built from the repository and imported from a folder outside it, so the editable install and
the source tree cannot stand in for the wheel.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("core", "agent", "tools", "generators", "memory", "evals")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        cwd=out,
    )
    (path,) = out.glob("crystalforge-*.whl")
    return path


def test_wheel_has_only_the_crystalforge_namespace(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"crystalforge"}
    for part in PARTS:
        assert f"crystalforge/{part}/__init__.py" in names


def test_installed_wheel_imports_outside_the_repo(wheel: Path, tmp_path: Path):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    code = (
        "import crystalforge, crystalforge.tools.validators.base, crystalforge.generators.base, "
        "crystalforge.memory.run_store, crystalforge.agent.graph\n"
        "print(crystalforge.__file__)\n"
        "import importlib.util\n"
        "print([n for n in ('tools', 'memory', 'agent', 'generators', 'core', 'evals') "
        "if importlib.util.find_spec(n)])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    location, leaked = done.stdout.strip().splitlines()
    assert location.startswith(str(site))
    assert leaked == "[]"
