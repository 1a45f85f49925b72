"""The dependency rule of DESIGN.md, checked on the source with `ast`:

fronts -> engine -> runtime -> (routing, policies, templates, providers) -> config.model -> types/errors/json_kinds.
Nothing imports a front; only providers/transport.py imports the HTTP client; only fronts import MCP/Starlette.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "proxy"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


IMPORTS = {_name(path): _imports(path) for path in MODULES}


@pytest.mark.parametrize("module", ["proxy.types", "proxy.errors", "proxy.json_kinds"])
def test_leaves_import_nothing_from_proxy(module):
    assert not {i for i in IMPORTS[module] if _under(i, "proxy")}


def test_config_depends_only_on_leaves():
    for module, imports in IMPORTS.items():
        if _under(module, "proxy.config"):
            bad = {
                i
                for i in imports
                if _under(i, "proxy")
                and not _under(i, "proxy.config", "proxy.errors", "proxy.json_kinds", "proxy.resources", "proxy.types")
            }
            assert not bad, f"{module} imports {bad}"


def test_providers_do_not_reach_up():
    upward = (
        "proxy.engine",
        "proxy.runtime",
        "proxy.routing",
        "proxy.policies",
        "proxy.fronts",
        "proxy.cli",
        "proxy.config.load",
        "proxy.templates",
        "proxy.telemetry",
    )
    for module, imports in IMPORTS.items():
        if _under(module, "proxy.providers"):
            bad = {i for i in imports if _under(i, *upward)}
            assert not bad, f"{module} imports {bad}"


def test_only_the_transport_imports_aiohttp():
    users = {m for m, imports in IMPORTS.items() if any(_under(i, "aiohttp") for i in imports)}
    assert users <= {"proxy.providers.transport"}


def test_only_fronts_import_mcp_and_starlette():
    for module, imports in IMPORTS.items():
        if not _under(module, "proxy.fronts"):
            bad = {i for i in imports if _under(i, "mcp", "starlette", "uvicorn")}
            assert not bad, f"{module} imports {bad}"


def test_nothing_imports_a_front_but_the_cli():
    for module, imports in IMPORTS.items():
        if not _under(module, "proxy.fronts", "proxy.cli", "proxy.__main__") and not module.startswith("proxy.cli"):
            assert not {i for i in imports if _under(i, "proxy.fronts")}, module


def test_every_module_has_a_docstring():
    for path in MODULES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{path} has no module docstring"
