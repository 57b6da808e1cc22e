"""The house's import direction: ``ops`` and ``front`` use ``cache`` and ``ecosystems``;
``cache`` uses neither; ``ecosystems`` use only the pure pieces of ``cache``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"
# What an ecosystem module may take from the engine: data types and pure rules.
PURE_CACHE = {"gateway.cache.rules", "gateway.cache.policy"}


def gateway_imports(path: Path) -> set[str]:
    """The ``gateway.*`` modules a file imports (``from gateway.x import y`` counts as
    ``gateway.x.y`` when ``y`` is a module, else ``gateway.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gateway"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (GATEWAY.parent / (sub.replace(".", "/") + ".py")).exists()
                found.add(sub if is_module else node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((GATEWAY / package).glob("*.py"))


@pytest.mark.parametrize("path", modules("cache"), ids=lambda p: p.name)
def test_the_engine_imports_only_itself(path):
    outside = {m for m in gateway_imports(path) if not m.startswith("gateway.cache")}
    assert not outside, f"gateway/cache/{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", modules("ecosystems"), ids=lambda p: p.name)
def test_ecosystems_use_only_pure_engine_pieces(path):
    allowed = PURE_CACHE | {"gateway.ecosystems"}
    outside = {m for m in gateway_imports(path)
               if m not in allowed and not m.startswith("gateway.ecosystems.")}
    assert not outside, f"gateway/ecosystems/{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", modules("front"), ids=lambda p: p.name)
def test_the_front_does_not_reach_into_the_operators_side(path):
    ops = {m for m in gateway_imports(path) if m.startswith("gateway.ops")}
    assert not ops, f"gateway/front/{path.name} imports {sorted(ops)}"


def test_only_the_wiring_stays_at_the_top():
    top = {p.name for p in GATEWAY.glob("*.py")} - {"__init__.py"}
    assert top <= {"config.py", "service.py", "addresses.py", "workers.py"}, sorted(top)


def test_the_check_sees_a_violation(tmp_path):
    """The direction test can fail: an engine module importing an ecosystem is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from gateway.ecosystems import apt\nimport gateway.ops.cli\n")
    assert gateway_imports(bad) == {"gateway.ecosystems.apt", "gateway.ops.cli"}
