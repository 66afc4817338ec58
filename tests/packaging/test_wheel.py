"""The wheel a cluster node installs holds the whole package and works on its own.

Built from a copy of the source tree (as a fresh clone would be), installed with ``--no-deps``
into a fresh virtual environment whose dependencies come from this project's environment through
a ``.pth`` line (so nothing is downloaded), then run from a folder outside the repo.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile

import pytest
from package_tree import REPO, source_modules

_NOT_SOURCE = (
    ".venv",
    ".git",
    "build",
    "dist",
    "data",
    "runs",
    "tests",
    "bench",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_wheel_installs_alone_and_imports_every_module(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ]
    )
    (wheel,) = (tmp_path / "dist").glob("radio_train-*.whl")

    # Every module of the source tree is in the wheel, under radio/, and nothing else is.
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    in_wheel = {n.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for n in names if n.endswith(".py")}
    assert in_wheel == source_modules()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"radio"}

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    (purelib,) = (venv / "lib").glob("python3.*/site-packages")
    # Dependencies from this environment; its own .pth files (the editable install) stay inactive
    # because only site directories, not directories named in a .pth, have their .pth files run.
    (purelib / "project_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)])

    modules = sorted(m for m in source_modules() if not m.endswith("__main__"))
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    mod = importlib.import_module(name)\n"
        f"    assert mod.__file__.startswith({str(purelib)!r}), (name, mod.__file__)\n"
        "try:\n"
        "    import store\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    sys.exit('a bare part name is importable')\n"
        "print('imported', len([n for n in sys.modules if n.startswith('radio')]))\n"
    )
    out = _run([str(py), "-c", script], cwd=tmp_path).stdout.split()
    assert out[0] == "imported" and int(out[1]) >= len(modules)

    for cmd in ([str(venv / "bin" / "radio"), "--help"], [str(py), "-m", "radio.cli", "--help"]):
        help_text = _run(cmd, cwd=tmp_path).stdout
        assert "featurize" in help_text and "distill" in help_text and "fit-phis" in help_text
