"""The layout's rules, read from the source: who may import whom, and module sizes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parent.parent / "service"
MAX_MODULE_LINES = 300


def _modules() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py") if "migrations" not in p.parts)


def _package(path: Path) -> str:
    """`bot`, `web`, `store`, ... for a module in a folder; the module's name at the top."""
    relative = path.relative_to(SERVICE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> set[str]:
    """Every `service.*` module this file imports, at any depth (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "service":
                found |= {f"service.{alias.name}" for alias in node.names}
            elif node.module.startswith("service."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("service.")}
    return found


def _imported_packages(path: Path) -> set[str]:
    return {name.split(".")[1] for name in _imports(path)}


# (importing package, packages it must never import, why)
RULES = [
    ("bot", {"web"}, "the bot and the webhook service share only the database"),
    # The store may name the outbox's state and message types (column defaults), no more.
    ("store", {"bot", "web", "jobs"}, "the store holds data, not the processes that use it"),
    ("fal", {"bot", "web", "outbox", "jobs", "store", "cli", "operator"}, "fal is the protocol"),
    ("outbox", {"bot", "web", "jobs"}, "the outbox sends what it is given"),
    ("jobs", {"bot", "web"}, "jobs are applied by the web process and the bot alike"),
]


@pytest.mark.parametrize(("package", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_import_rules(package: str, forbidden: set[str], why: str) -> None:
    offenders = {
        str(path.relative_to(SERVICE)): sorted(_imported_packages(path) & forbidden)
        for path in _modules()
        if _package(path) == package and _imported_packages(path) & forbidden
    }
    assert not offenders, f"{package}/ must not import {sorted(forbidden)} ({why}): {offenders}"


def test_fal_imports_nothing_of_ours_beyond_settings() -> None:
    outside = {
        str(path.relative_to(SERVICE)): sorted(
            name
            for name in _imports(path)
            if not name.startswith("service.fal") and name != "service.settings"
        )
        for path in _modules()
        if _package(path) == "fal"
    }
    assert not any(outside.values()), outside


# Which database it is: a comparison with a dialect's name, or a test of a URL's prefix.
_DIALECT_TEST = re.compile(
    r"""dialect\.name\s*[!=]=|get_backend_name\(\)|is_sqlite|startswith\(\s*["'](sqlite|postgres)"""
)


def test_only_the_dialect_seam_asks_which_database_it_is() -> None:
    seam = SERVICE / "store" / "dialect.py"
    askers = [
        f"{path.relative_to(SERVICE)}:{number}"
        for path in _modules()
        if path != seam and path.name != "settings.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _DIALECT_TEST.search(line)
    ]
    assert not askers, askers


def test_no_module_is_over_the_size_limit() -> None:
    long = {
        str(path.relative_to(SERVICE)): count
        for path in _modules()
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these (over {MAX_MODULE_LINES} lines): {long}"


def test_every_module_opens_with_a_line_saying_what_it_holds() -> None:
    silent = [
        str(path.relative_to(SERVICE))
        for path in _modules()
        if path.name != "__main__.py" and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not silent, silent


def test_the_rules_see_real_imports() -> None:
    # The checks above pass vacuously if the parser finds nothing: it must see known edges.
    assert "service.store.engine" in _imports(SERVICE / "web" / "webhooks.py")
    assert "web" in _imported_packages(SERVICE / "cli.py") or "web" in {
        name.split(".")[1] for name in _imports(SERVICE / "cli.py")
    }
    assert _DIALECT_TEST.search('if url.startswith("sqlite"):')
    assert _DIALECT_TEST.search("engine.dialect.name == 'postgresql'")
