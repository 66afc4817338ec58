"""What the package is made of: the parts (top-level folders that are Python packages) and
every module in them, named as ``radio.*``."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parts() -> list[str]:
    """Top-level folders that hold a Python package (``store``, ``distill``, ...), not ``radio``."""
    return sorted(p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name != "radio")


def source_modules() -> set[str]:
    """Every module of the package as it is imported: ``radio.store.layout``, ``radio.cli``, ..."""
    names = {"radio"}
    roots = [(REPO / "radio", "radio")] + [(REPO / p, f"radio.{p}") for p in parts()]
    for root, prefix in roots:
        for f in root.rglob("*.py"):
            rel = f.relative_to(root).with_suffix("")
            if any(s == "__pycache__" for s in rel.parts) or (root.name == "radio" and len(rel.parts) > 1):
                continue  # radio/<part>/ are the symlinks: their modules come from the part itself
            dotted = ".".join(rel.parts)
            names.add(prefix if dotted == "__init__" else f"{prefix}.{dotted.removesuffix('.__init__')}")
    return names
