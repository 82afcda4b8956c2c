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


def _clipsim_imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(module, imported names, at module level) of every `import clipsim...` / `from clipsim... import` in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "clipsim":  # from clipsim import fileio, ...
            out += [(f"clipsim.{a.name}", [], id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clipsim"):
            out.append((node.module, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], id(node) in top) for a in node.names if a.name.startswith("clipsim")]
    return out


def test_top_level_stays_small():
    """Families live in subpackages (search/, prune/, runs/, maps/, report/, plots/, cli/, jobs/, data/, ui/)."""
    modules = [p.name for p in (ROOT / "clipsim").glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(modules) <= 15, modules


def test_ui_holds_streamlit_code_only():
    plain = [p.name for p in (ROOT / "clipsim" / "ui").glob("*.py")
             if p.name != "__init__.py" and "streamlit" not in _imports(p)]
    assert plain == []


def test_no_private_name_crosses_a_module_boundary():
    offenders = []
    for path in [*ROOT.joinpath("clipsim").rglob("*.py"), *ROOT.joinpath("pages").glob("*.py"),
                 *ROOT.joinpath("benchmarks").glob("*.py"), ROOT / "app.py"]:
        own = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for module, names, _ in _clipsim_imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and module != own:
                offenders.append(f"{path.relative_to(ROOT)}: {module} {private}")
    assert offenders == []


def test_workspace_is_a_floor():
    """workspace.py imports only leaves; the read API (ws.neighbours, ...) reaches the stored search results lazily."""
    leaves = {"clipsim.fileio", "clipsim.errors", "clipsim.names", "clipsim.store"}
    lazy_ok = leaves | {"clipsim.data.retrieval", "clipsim.search.result"}
    got = _clipsim_imports(ROOT / "clipsim" / "workspace.py")
    assert [m for m, _, top in got if top and m not in leaves] == []
    assert [m for m, _, top in got if not top and m not in lazy_ok] == []
    for leaf in ("names.py", "errors.py"):
        assert {m for m, _, _ in _clipsim_imports(ROOT / "clipsim" / leaf)} <= {"clipsim.errors"}, leaf
    # fileio refuses writes into a read-only workspace: it asks names (itself a leaf) whether the mode is on
    assert {m for m, _, _ in _clipsim_imports(ROOT / "clipsim" / "fileio.py")} <= {"clipsim.errors", "clipsim.names"}


def test_cli_imports_its_command_modules_explicitly():
    text = (ROOT / "clipsim" / "cli" / "__init__.py").read_text()
    assert "find_spec" not in text and "import_module" not in text
