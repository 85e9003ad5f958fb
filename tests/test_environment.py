"""The GPU conda environment installs exactly the pinned requirements that CI tests, plus flash-attn;
nothing imports flash-attn unconditionally."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _requirement_names(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[=<>!~\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")
            pins[name] = line
    return pins


def test_environment_yml_uses_the_tested_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert any(str(d).startswith("python=3.11") for d in deps)
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-r requirements.txt" in pip_section
    assert "flash-attn==2.7.4.post1" in pip_section
    assert "-e ." in pip_section


def test_requirements_pin_the_stack():
    pins = _requirement_names(ROOT / "requirements.txt")
    assert pins["torch"] == "torch==2.13.0"
    assert pins["transformers"] == "transformers==4.52.4"
    assert pins["lm-eval"] == "lm-eval==0.4.13"
    assert "flash-attn" not in pins
    hub = pins["huggingface-hub"]
    assert hub.startswith("huggingface-hub==0.")


def test_pyproject_reads_requirements_and_offers_flash_attn_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == ["requirements.txt"]
    assert project["project"]["optional-dependencies"]["gpu"] == ["flash-attn==2.7.4.post1"]


def test_flash_attn_is_only_imported_conditionally():
    for path in ROOT.glob("**/*.py"):
        if ".venv" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n.startswith("flash_attn") for n in names):
                    parent_try = any(isinstance(p, ast.Try) and node in ast.walk(p) for p in ast.walk(tree))
                    assert parent_try, f"{path}: flash_attn imported outside a try block"


def test_package_imports_without_flash_attn():
    code = "import sys; sys.modules['flash_attn'] = None; import SDAR, common, SDAR.modeling_sdar; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "ok", out.stderr
