"""The docs say what is true of this repository: every Markdown file they name is in it (no pointer
to a spec kept elsewhere), nothing shipped is called "not shipped", and the facts stated in place of
those pointers are where the configs and comments now send the reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "results" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EVAL_SOURCES = [*sorted((REPO / "configs").rglob("*.yaml")), *sorted((REPO / "s2d2_eval").glob("*.py")),
                *sorted((REPO / "scripts").glob("*.py")), *sorted((REPO / "scripts").glob("*.sh")),
                REPO / "requirements.txt"]
MD_NAME = re.compile(r"(?<![\w/.-])((?:\.\./)*[\w.-]+(?:/[\w.-]+)*\.md)\b")


def _markdown_files() -> list[str]:
    """Every Markdown file of the checkout, as a path from the repo root (hidden folders skipped)."""
    return [str(p.relative_to(REPO)) for p in REPO.rglob("*.md")
            if not any(part.startswith(".") for part in p.relative_to(REPO).parts)]


def _resolves(name: str, files: list[str]) -> bool:
    """A path from the repo root, or a file name (or path tail) of a file in the repository."""
    if name.startswith("../"):
        return False  # outside the repository
    return any(path == name or path.endswith("/" + name) for path in files)


@pytest.mark.parametrize("path", [*DOCS, *EVAL_SOURCES], ids=lambda p: str(p.relative_to(REPO)))
def test_every_markdown_file_named_is_in_the_repository(path):
    files = _markdown_files()
    missing = sorted({name for name in MD_NAME.findall(path.read_text()) if not _resolves(name, files)})
    assert not missing, f"{path.relative_to(REPO)} names {missing}, which the repository does not hold"


def test_nothing_shipped_is_called_not_shipped():
    shipped = [p.name for p in (REPO / "models").iterdir() if (p / "config.json").is_file()]
    assert "fast-dllm-v2-tiny" in shipped
    for path in [*DOCS, *sorted((REPO / "configs" / "model").glob("*.yaml"))]:
        text = path.read_text().lower()
        assert "not shipped" not in text, path


def test_method_doc_holds_the_sections_the_references_point_to():
    text = (REPO / "docs" / "METHOD.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", text, flags=re.M))
    cited = {number for path in [*DOCS, *EVAL_SOURCES, *sorted((REPO / "tests").glob("test_eval_*.py"))]
             for number in re.findall(r"METHOD\.md`? §(\d+)", path.read_text())}
    assert cited and cited <= sections, sorted(cited - sections)
    for preset in ("s2d2_config_a", "s2d2_config_b", "fast_config_a", "fast_config_b", "fast_config_c"):
        assert f"`{preset}`" in text, preset  # §4 describes every paper preset of configs/decoding/
