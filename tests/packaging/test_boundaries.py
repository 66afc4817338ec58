"""The layout is the architecture: which part may import which, checked on the source.

- Only ``store/`` touches the store's formats: it alone imports zarr and tensorstore; pyarrow is
  for ``store/`` (manifests) and ``shards/`` (img2dataset's parquet) only.
- ``store/`` is the contract between the phases and ``shards/`` the input, so neither imports
  another part (no phase, no CLI); distill never imports featurize; no library module imports
  the CLI.
- No two modules import each other, directly or round a longer circle, counting imports inside
  functions too (a lazy import hides a circle from Python, not from the reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

from package_tree import REPO, parts, source_modules

# part -> parts it must not import (every part: cli); store and shards import no other part
OTHERS = set(parts())
FORBIDDEN_PARTS = {"store": OTHERS - {"store"}, "shards": OTHERS - {"shards"}, "distill": {"featurize", "cli"}}
STORE_FORMATS = {"zarr": {"store"}, "tensorstore": {"store"}, "pyarrow": {"store", "shards"}}


def _file(module: str) -> Path:
    base = REPO.joinpath(*module.split("."))  # radio/<part> links to the part's folder
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(module: str) -> set[str]:
    """Every module ``module`` imports, anywhere in its body, as absolute dotted names."""
    path = _file(module)
    return _imports_in(path.read_text(), module if path.name == "__init__.py" else module.rpartition(".")[0])


def _imports_in(source: str, package: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from radio.store import compact`
    return out


def _graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {m: {i for i in _imports(m) if i in modules and i != m} for m in modules}


def _part(module: str) -> str | None:
    names = module.split(".")
    return names[1] if len(names) > 1 and names[0] == "radio" and names[1] in parts() else None


def test_the_store_formats_are_read_only_in_store():
    wrong = []
    for m in sorted(source_modules()):
        for i in _imports(m):
            allowed = STORE_FORMATS.get(i.split(".")[0])
            if allowed is not None and _part(m) not in allowed:
                wrong.append(f"{m} imports {i}")
    assert wrong == []


def test_parts_import_only_downwards():
    wrong = []
    for m, deps in sorted(_graph().items()):
        part = _part(m)
        for d in sorted(deps):
            dp = _part(d)
            if dp in FORBIDDEN_PARTS.get(part or "", set()) or (dp == "cli" and part != "cli"):
                wrong.append(f"{m} imports {d}")
    assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # A package's __init__ re-exporting its modules is not a circle with them: drop the edges
    # from a package to its own submodules and from a submodule to its own package.
    return {
        m: {d for d in deps if not d.startswith(m + ".") and not m.startswith(d + ".")} for m, deps in graph.items()
    }


def test_no_import_circles():
    assert _cycles(_package_edges(_graph())) == []


def test_the_checks_see_imports_inside_functions():
    # A circle closed by a lazy import is still a circle: the checks must see it.
    source = "import zarr\n\ndef f():\n    from .decode import pixel_column\n    from ..store import layout\n"
    assert _imports_in(source, "radio.featurize") == {
        "zarr",
        "radio.featurize.decode",
        "radio.featurize.decode.pixel_column",
        "radio.store",
        "radio.store.layout",
    }
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
