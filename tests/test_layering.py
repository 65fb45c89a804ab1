"""The dependency direction of the packages, read from their source with `ast` (not grep): every `import`
and `from ... import`, relative ones resolved, including those inside functions.

    training -> models, augment, backends        service -> models, augment, backends        augment -> models
    backends -> models                 models -> (torch, safetensors, ... nothing of ours)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGES = ("models", "augment", "training", "service", "backends")
# package -> the packages of ours it must never import
FORBIDDEN = {
    "models": {"training", "service", "augment", "backends"},
    "augment": {"training", "service", "backends"},
    "backends": {"training", "service", "augment"},
    "service": {"training"},
    "training": {"service"},
}


def imported_modules(path: Path, root: Path = PROJECT_ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file at `path`, relative imports resolved."""
    package = path.relative_to(root).parent.parts  # a module's package, also for an __init__.py
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join((*base, node.module) if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from . import x` / `from pkg import module`: the names may be modules themselves
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def violations(root: Path = PROJECT_ROOT) -> list[str]:
    """'file:line: pkg imports other' for every import against the rules."""
    bad = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []:
            for line, name in imported_modules(path, root):
                top = name.split(".")[0]
                if top in forbidden:
                    bad.append(f"{path.relative_to(root)}:{line}: {package} imports {name}")
    return sorted(set(bad))


def test_packages_import_only_downwards():
    assert violations() == []


def test_the_known_packages_are_scanned():
    present = [p for p in PACKAGES if (PROJECT_ROOT / p).is_dir()]
    assert {"models", "augment", "training", "service"} <= set(present)
    for package in present:
        assert list((PROJECT_ROOT / package).rglob("*.py")), package


@pytest.mark.parametrize("source,expected", [
    ("import service.store\n", "training/x.py:1: training imports service.store"),
    ("def f():\n    from service import store\n", "training/x.py:2: training imports service"),
    ("from ..service import store\n", "training/x.py:1: training imports service"),
])
def test_a_forbidden_import_is_caught(tmp_path, source, expected):
    """The scanner sees plain, function-level and relative imports (a fake tree: training/x.py)."""
    for package in FORBIDDEN:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "training" / "x.py").write_text(source)
    assert expected in violations(tmp_path)


def test_relative_imports_resolve_to_their_package(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("from .checkpoint import save\nfrom . import sampling\n")
    names = {n for _, n in imported_modules(tmp_path / "models" / "__init__.py", tmp_path)}
    assert {"models.checkpoint", "models", "models.sampling"} <= names
    assert violations(tmp_path) == []
