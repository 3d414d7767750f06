"""The package's form: rooms that do not import in circles, methods that do not borrow from each
other, imports at the top of files, and a README that names every room."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adkd"
# A method may build on another only where it is declared here (RD++ extends RD4AD; UniNet's student
# is RD4AD's decoder).
METHOD_BASES = {"rdpp": {"rd4ad"}, "uninet": {"rd4ad"}}
# Commands import their heavy parts when they run, so that every --help answers at once.
DEFERRED_IMPORTS = ("cli",)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """The adkd modules ``path`` imports at its top level, and those it imports inside functions
    (``if __name__ == "__main__"`` blocks aside)."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    guarded = {id(n) for node in tree.body if isinstance(node, ast.If) for n in ast.walk(node)}
    top, inner = set(), set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom | ast.Import) or id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom):  # a submodule by its name, else the module it is taken from
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            names = [a.name for a in node.names]
        targets = {n for n in names if n in known and n.startswith("adkd")}
        (top if id(node) in top_level else inner).update(targets)
    return top, inner


def test_no_module_imports_itself_through_others():
    known = modules()
    graph = {name: imports(path, known)[0] for name, path in known.items()}
    # a package imports its parents when imported: only edges between modules count
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_imports_are_at_the_top_of_files_outside_the_commands():
    known = modules()
    inside = {
        name: sorted(inner)
        for name, path in known.items()
        if not name.startswith(tuple(f"adkd.{room}" for room in DEFERRED_IMPORTS))
        for inner in [imports(path, known)[1]]
        if inner
    }
    assert inside == {}


def test_a_method_imports_no_other_method_except_its_declared_base():
    known = modules()
    methods = {p.name for p in (PACKAGE / "methods").iterdir() if (p / "__init__.py").is_file()} - {"components"}
    borrowed = {}
    for name, path in known.items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] != "methods" or parts[2] not in methods:
            continue
        top, inner = imports(path, known)
        others = {m.split(".")[2] for m in top | inner if m.startswith("adkd.methods.") and m.split(".")[2] in methods}
        others -= {parts[2], *METHOD_BASES.get(parts[2], set())}
        if others:
            borrowed[name] = sorted(others)
    assert borrowed == {}, "shared parts belong in adkd/methods/components/"


def test_the_readme_names_every_room():
    readme = (ROOT / "README.md").read_text()
    rooms = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert [room for room in rooms if f"`adkd/{room}/`" not in readme] == []
