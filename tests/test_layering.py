"""Three layers, one-way imports: `common/` is pure library code (torch + stdlib); family folders
import `common/` and never each other."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {"SDAR": "SDAR", "Fast-dLLM-v2": "fast_dllm_v2", "LLaDA2": "LLaDA2", "D2F": "D2F"}
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
