"""The house: the package's import graph, module-level and function-level imports alike (a function-
level import is a circle with the light switched off), has no circle; git runs in one module only."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "zimage_patcher"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every zimage_patcher module PATH imports, wherever the import statement sits."""
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("zimage_patcher"):
                continue
            for alias in node.names:       # `from . import git` names a module; `from .git import run` does not
                sub = f"{mod}.{alias.name}"
                out.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists()
                        or (PKG.parent / sub.replace(".", "/")).is_dir() else mod)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("zimage_patcher")}
    return out - {me}


def graph() -> dict[str, set[str]]:
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in mods} for m, p in mods.items()}


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_import_graph_has_no_circle():
    g = graph()
    assert len(g) > 30
    # packages import their own modules (cli/__init__ registers the commands): not a layer question
    for pkg in ("zimage_patcher.cli", "zimage_patcher.smoke"):
        g[pkg] = set()
    assert _cycle(g) is None, " -> ".join(_cycle(g))


def test_the_finder_sees_a_function_level_circle(tmp_path):
    """The check above can fail: a circle hidden in a function is found."""
    g = {"a": {"b"}, "b": {"a"}}
    assert _cycle(g) == ["a", "b", "a"]
    src = "def f():\n    from . import edit\n"
    f = PKG / "workspace.py"
    assert "zimage_patcher.edit" in {i for i in _imports_of_text(f, src)}


def _imports_of_text(path: Path, text: str) -> set[str]:
    tmp = path.with_name("_house_probe.py")
    try:
        tmp.write_text(text)
        return _imports(tmp)
    finally:
        tmp.unlink()


def test_only_git_py_starts_git():
    """smoke/ is the exception: it runs in ComfyUI's Python, where zimage_patcher need not be installed."""
    starters = [p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
                if "subprocess" in p.read_text() and '"git"' in p.read_text() and p.name != "git.py"
                and p.parent.name != "smoke"]
    assert starters == [], starters
