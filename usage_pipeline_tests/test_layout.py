"""The house rules of the package, checked on its source: core never imports Dagster, and stages only
import downward (storage <- ingest, catalog <- metering <- billing <- defs <- cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "usage_pipeline"

# What each part may import from the package, besides itself and the top-level settings module.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "core.text": set(),  # wording shared by every layer (plurals)
    "core.storage": set(),
    "core.ingest": {"core.storage", "core.text"},
    "core.catalog": {"core.storage", "core.text"},
    "core.metering": {"core.storage", "core.catalog", "core.text"},
    "core.billing": {"core.storage", "core.catalog", "core.metering", "core.text"},
    "core.errors": {"core.storage", "core.ingest", "core.catalog"},
    "defs": set(),
    # Shared by every domain of defs/: below them all.
    "defs.resources": {"core"},
    "defs.metadata": {"core"},
    "defs.partitions": {"core"},
    "defs.ingest": {"core", "defs.resources", "defs.metadata"},
    "defs.catalog": {"core", "defs.resources", "defs.metadata"},
    "defs.metering": {"core", "defs.resources", "defs.metadata", "defs.partitions", "defs.catalog"},
    "defs.billing": {
        "core",
        "defs.resources",
        "defs.metadata",
        "defs.partitions",
        "defs.catalog",
        "defs.metering",
    },
    "defs.maintenance": {"core", "defs.resources", "defs.metadata"},
    "cli": {"core", "defs", "definitions"},
    "definitions": {"defs"},
    # The settings name the lake (core.storage) and give an s3:// lake the usage bucket's S3 access.
    "settings": {"core.storage", "core.ingest"},
}


def _part(module: str) -> str:
    """The part a dotted module (relative to usage_pipeline) belongs to: the longest key of ALLOWED."""
    return max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if parts:
            found.append((".".join(parts), path))
    return found


@pytest.mark.parametrize(("module", "path"), [m for m in _modules() if m[0].startswith("core")])
def test_core_never_imports_dagster(module: str, path: Path) -> None:
    dagster = [name for name in _imports(path) if name.split(".")[0].startswith("dagster")]
    assert dagster == [], f"usage_pipeline.{module} imports {dagster}: core/ must stay plain Python"


@pytest.mark.parametrize(("module", "path"), _modules())
def test_stages_only_import_downward(module: str, path: Path) -> None:
    part = _part(module)
    allowed = ALLOWED[part] | {part, "settings"}
    wrong = []
    for name in _imports(path):
        if not name.startswith("usage_pipeline."):
            continue
        target = name.removeprefix("usage_pipeline.")
        if not any(target == a or target.startswith(a + ".") for a in allowed):
            wrong.append(name)
    assert wrong == [], f"usage_pipeline.{module} ({part}) imports {wrong}, which is not below it"


def test_every_module_belongs_to_a_part() -> None:
    assert {_part(module) for module, _ in _modules()} <= set(ALLOWED)
