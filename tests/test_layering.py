"""Three layers, one-way imports: `common/` is pure library code (torch + stdlib); family folders
import `common/` and never each other."""

import ast
from pathlib import Path

from families import FAMILIES as REGISTRY

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {family.folder: family.package for family in REGISTRY.values()}
FAMILIES.update({"LLaDA2": "LLaDA2"})  # folders of families not registered yet
COMMON_ALLOWED = {"torch", "common", "__future__", "dataclasses", "typing", "math", "argparse", "types", "collections", "inspect"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_common_imports_only_torch_and_stdlib():
    for path in (ROOT / "common").glob("*.py"):
        extra = _imports(path) - COMMON_ALLOWED
        assert not extra, f"{path.name} imports {sorted(extra)}"


def test_families_never_import_each_other():
    packages = set(FAMILIES.values())
    for folder, package in FAMILIES.items():
        for path in (ROOT / folder).glob("**/*.py") if (ROOT / folder).exists() else []:
            others = (_imports(path) & packages) - {package}
            assert not others, f"{folder}/{path.name} imports {sorted(others)}"


def test_sdar_uses_common():
    uses = set()
    for path in (ROOT / "SDAR").glob("*.py"):
        uses |= _imports(path)
    assert "common" in uses


def test_every_registered_family_is_packaged():
    """Adding a family is its folder, its registry entry and its package in pyproject.toml."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = project.get("package-dir", {})
    for family in REGISTRY.values():
        assert family.package in project["packages"], family.name
        assert dirs.get(family.package, family.package) == family.folder, family.name
        assert (ROOT / family.folder / "__init__.py").is_file(), family.name


def test_common_knows_no_family():
    """`common/` stays family-free: no family's name, package or model type appears in its code."""
    names = {f.package for f in REGISTRY.values()} | {t for f in REGISTRY.values() for t in f.model_types}
    for path in (ROOT / "common").glob("*.py"):
        assert not (_imports(path) & names), path.name
