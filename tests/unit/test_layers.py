"""The folders are the layers, and imports point one way: a module may import its own layer and
the ones below it, never above. Pure OCI rules import no I/O library at all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Lowest first. A module not named here is a finding: put it in a layer.
LAYERS = (
    ("proxy.oci",),
    ("proxy.config", "proxy.metrics"),
    ("proxy.upstream", "proxy.index"),
    ("proxy.services",),
    ("proxy.http",),
    (
        "proxy.app",
        "proxy.server",
        "proxy.workers",
        "proxy.logs",
        "proxy.cli",
        "proxy.devstack",
        "proxy.__main__",
    ),
)
IO_LIBRARIES = ("aiohttp", "aiohttp_client_cache", "redis", "prometheus_client", "asyncio")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str = "") -> set[str]:
    """Every module `path` imports, relative imports resolved against `package`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (
                package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            )
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _package(path: Path) -> str:
    module = _module(path)
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("proxy"), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    module = _module(path)
    if module == "proxy":
        return
    rank = _layer(module)
    assert rank is not None, f"{module} belongs to no layer: add it to LAYERS"
    upward = {
        name
        for name in _imports(path, _package(path))
        if name.startswith("proxy.") and (_layer(name) or 0) > rank
    }
    assert not upward, f"{module} (layer {rank}) imports from above: {sorted(upward)}"


@pytest.mark.parametrize("path", _sources("proxy/oci"), ids=lambda p: p.name)
def test_pure_rules_do_no_io(path: Path) -> None:
    io = {name for name in _imports(path, _package(path)) if name.split(".")[0] in IO_LIBRARIES}
    assert not io, f"{path.name} imports {sorted(io)}"


@pytest.mark.parametrize("folder", ["proxy", "bench"])
def test_product_and_bench_never_import_tests(folder: str) -> None:
    for path in _sources(folder):
        bad = {name for name in _imports(path) if name.split(".")[0] == "tests"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The parser finds the imports this check is about (else every test above passes idly)."""
    source = tmp_path / "x.py"
    source.write_text("from proxy.http.app import x\nimport aiohttp.web\nfrom tests import y\n")
    assert {"proxy.http.app", "aiohttp.web", "tests"} <= _imports(source)
    assert _layer("proxy.http.app") == 4
    assert _layer("proxy.oci.names") == 0


def test_the_check_resolves_relative_imports(tmp_path: Path) -> None:
    """`from ..http import errors` in proxy/oci/x.py is an upward import like any other."""
    source = tmp_path / "x.py"
    source.write_text("from ..http import errors\nfrom .names import is_tag\n")
    found = _imports(source, "proxy.oci")
    assert {"proxy.http.errors", "proxy.oci.names.is_tag"} <= found
    assert _layer("proxy.http.errors") == 4
