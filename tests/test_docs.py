"""The documentation renders: every .rst of the project, with no docutils warning."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from docutils.core import publish_doctree

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.rst", *(ROOT / "docs").glob("*.rst")])


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_rst_renders_without_warnings(path):
    warnings = io.StringIO()
    publish_doctree(path.read_text(), source_path=str(path),
                    settings_overrides={"warning_stream": warnings, "report_level": 2,
                                        "halt_level": 5})
    assert warnings.getvalue() == ""


def test_the_design_page_names_only_modules_that_exist():
    """docs/design.rst cites modules by file name: each must be in the tree."""
    text = (ROOT / "docs" / "design.rst").read_text()
    for name in set(re.findall(r"``([\w/]+\.py)``", text)):
        hits = list((ROOT / "comet").rglob(Path(name).name)) + list(ROOT.glob(name))
        assert hits, f"docs/design.rst names {name}, which is not in comet/"
