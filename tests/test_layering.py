"""Two layers, one direction: only app.py, pages/ and clipsim/ui/ may import streamlit."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_streamlit():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "clipsim").rglob("*.py")
                 if "ui" not in p.relative_to(ROOT / "clipsim").parts[:1] and "streamlit" in _imports(p)]
    assert offenders == []


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(ROOT)) for p in list((ROOT / "clipsim").rglob("*.py")) + list((ROOT / "pages").glob("*.py"))
               if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert missing == []
