"""One file, one module: no part of the package can be imported under a second name.

From the repo root (where `python -m ...`, pytest and IDEs put the working directory on
``sys.path``), ``store/layout.py`` could otherwise load twice: as ``store.layout`` and as
``radio.store.layout``, with two copies of every class, so an ``except`` for one copy's error
misses the other's. Each part's ``__init__`` refuses its bare name.
"""

from __future__ import annotations

import subprocess
import sys

from package_tree import REPO, parts, source_modules


def test_every_part_is_linked_into_radio():
    # A top-level package folder without its radio/<part> link would be left out of the wheel.
    for part in parts():
        link = REPO / "radio" / part
        assert link.is_symlink(), f"radio/{part} is not a symlink to ../{part}"
        assert link.resolve() == (REPO / part).resolve()
    assert {p.name for p in (REPO / "radio").iterdir() if p.is_symlink()} == set(parts())


def test_no_module_imports_under_its_bare_name():
    # radio/ itself (radio.errors, ...) is not on sys.path under any other name; the parts are.
    bare = sorted(
        m.removeprefix("radio.")
        for m in source_modules()
        if m.split(".")[1:2] and m.split(".")[1] in parts() and not m.endswith("__main__")
    )
    # The working directory (the repo root) is sys.path[0] for `python -c`, as for `python -m`.
    script = (
        "import importlib, sys\n"
        "ok = []\n"
        f"for name in {bare!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as e:\n"
        "        if not str(e).startswith('import radio.'):\n"
        "            ok.append(f'{name}: unexpected {e!r}')\n"
        "    else:\n"
        "        ok.append(name)\n"
        "print('\\n'.join(ok))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"importable under a second name:\n{proc.stdout}"
    assert len(bare) > 60


def test_bare_name_error_says_what_to_import():
    proc = subprocess.run([sys.executable, "-c", "import store.layout"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "ImportError: import radio.store, not store: store/ is importable only as radio.store"
    )
