"""The package's shape against docs/architecture.md: its import graph has no cycle and no import
that points up the layers the document lists, no module is over 450 lines, and every import
inside a function says in a comment why it is there. The graph holds every import as written,
function-level ones included: an import hidden in a function to dodge a cycle is still a cycle."""

import ast
import re
from pathlib import Path

import lra_bench

ROOT = Path(lra_bench.__file__).parent
LAYERS_DOC = ROOT.parent / "docs" / "architecture.md"
MAX_LINES = 450


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at `root` by dotted name (the package itself: its name)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports, from every import statement in it.
    `from pkg import name` points at the submodule `pkg.name` when there is one, else at `pkg`
    (whose __init__ then runs and must provide `name`)."""
    mods = modules(root)

    def owner(name: str) -> str | None:  # the module a dotted name lives in
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [owner(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else owner(base)
                           for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t is not None and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layers(doc: str) -> dict[str, int]:
    """The `## Layers` table of the document: module (or package) name -> its layer number."""
    section = doc.split("## Layers", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 2 and cells[0].isdigit():
            for name in re.findall(r"`([^`]+)`", cells[1]):
                out[name] = int(cells[0])
    return out


def layer_of(module: str, package: str, table: dict[str, int]) -> int | None:
    """The layer of the longest entry that names `module` or a package holding it."""
    short = module[len(package) + 1:] if module != package else "__init__"
    while short:
        if short in table:
            return table[short]
        short = short.rpartition(".")[0]
    return None


def uncommented_imports(root: Path) -> list[str]:
    """Imports inside functions with no comment on their line or the line above, as
    "module:line: text". Consecutive imports are one block (blank lines between them allowed): a
    comment above the first covers the rest. The comment says which heavy library the import
    keeps out of start-up, or why else it is not at the top."""
    out = []
    for name, path in modules(root).items():
        lines = path.read_text().splitlines()
        found = {(n.lineno, n.end_lineno) for fn in ast.walk(ast.parse("\n".join(lines), str(path)))
                 if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        covered_ends = set()
        for first, last in sorted(found):
            above = first - 1  # the nearest line above that is not blank (1-based)
            while above > 0 and not lines[above - 1].strip():
                above -= 1
            if (any("#" in lines[i - 1] for i in range(first, last + 1))
                    or lines[first - 2].strip().startswith("#") or above in covered_ends):
                covered_ends.add(last)
            else:
                out.append(f"{name}:{first}: {lines[first - 1].strip()}")
    return out


def upward_imports(graph: dict[str, set[str]], package: str, table: dict[str, int]) -> list[str]:
    out = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            la, lb = layer_of(a, package, table), layer_of(b, package, table)
            if la is not None and lb is not None and lb > la:
                out.append(f"{a} (layer {la}) imports {b} (layer {lb})")
    return out


def short(module: str) -> str:
    return module.split(".", 1)[1] if "." in module else "__init__"


# ---- lra_bench itself ------------------------------------------------------------------------

def test_no_import_cycles():
    assert [{short(m) for m in c} for c in cycles(import_graph(ROOT))] == []


def test_every_module_sits_in_a_documented_layer():
    table = layers(LAYERS_DOC.read_text())
    assert [m for m in modules(ROOT) if layer_of(m, "lra_bench", table) is None] == [], \
        f"add them to the Layers table of {LAYERS_DOC}"


def test_imports_point_down_the_layers():
    table = layers(LAYERS_DOC.read_text())
    assert upward_imports(import_graph(ROOT), "lra_bench", table) == []


def test_no_module_is_over_450_lines():
    long = {short(m): len(p.read_text().splitlines()) for m, p in modules(ROOT).items()}
    assert {m: n for m, n in long.items() if n > MAX_LINES} == {}


def test_every_import_inside_a_function_says_why():
    assert uncommented_imports(ROOT) == [], \
        "say in a comment which heavy library the import keeps out of start-up, or move it up"


# ---- the checks themselves, on a small package made for them -----------------------------------

DOC = """# pkg
## Layers
| layer | modules | what |
|---|---|---|
| 2 | `top` | the command |
| 1 | `low`, `sub` | what it uses |
| 0 | `__init__`, `base` | the bottom |
## Other
| 9 | `top` | not a layer table |
"""


def make_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    root = make_package(tmp_path, {
        "base.py": "import os\n",
        "low.py": "from pkg import base\n",
        "top.py": "from pkg.low import thing\n",
        # the cycle on purpose: low -> base at the top, base -> top -> low inside a function
        "sub/__init__.py": "",
        "sub/deep.py": "from .. import top\n",
    })
    assert cycles(import_graph(root)) == []
    (root / "base.py").write_text("import os\n\n\ndef later():\n    from pkg.sub import deep\n")
    assert cycles(import_graph(root)) == [{"pkg.base", "pkg.low", "pkg.top", "pkg.sub.deep"}]


def test_a_submodule_using_its_package_init_that_imports_it_is_a_cycle(tmp_path):
    root = make_package(tmp_path, {"sub/__init__.py": "from pkg.sub import deep\nNAME = 1\n",
                                   "sub/deep.py": "from pkg.sub import other\n",
                                   "sub/other.py": ""})
    assert cycles(import_graph(root)) == []  # `other` is a submodule: __init__ is not needed
    (root / "sub" / "deep.py").write_text("from pkg.sub import NAME\n")
    assert cycles(import_graph(root)) == [{"pkg.sub", "pkg.sub.deep"}]


def test_an_import_against_the_layers_is_found(tmp_path):
    table = layers(DOC)
    assert table == {"top": 2, "low": 1, "sub": 1, "__init__": 0, "base": 0}
    root = make_package(tmp_path, {"base.py": "", "low.py": "from pkg import base\n",
                                   "top.py": "import pkg.low\n", "sub/__init__.py": "",
                                   "sub/deep.py": "from pkg.base import x\n"})
    graph = import_graph(root)
    assert layer_of("pkg.sub.deep", "pkg", table) == 1 and layer_of("pkg", "pkg", table) == 0
    assert upward_imports(graph, "pkg", table) == []
    (root / "sub" / "deep.py").write_text("def f():\n    from pkg.top import x\n")
    assert upward_imports(import_graph(root), "pkg", table) == [
        "pkg.sub.deep (layer 1) imports pkg.top (layer 2)"]


def test_an_import_inside_a_function_without_a_comment_is_found(tmp_path):
    root = make_package(tmp_path, {
        "base.py": "import os\n",
        "low.py": ("def f():\n"
                   "    import json  # a comment on the line\n"
                   "    # a comment above a block\n"
                   "    import csv\n"
                   "    import io\n"
                   "\n"
                   "    from pkg import (base,\n"
                   "                     low)\n"
                   "\n"
                   "\n"
                   "class C:\n"
                   "    def g(self):\n"
                   "        from pkg import base  # in a method\n"),
    })
    assert uncommented_imports(root) == []
    (root / "base.py").write_text("import os\n\n\ndef f():\n    # a comment, then code\n"
                                  "    x = 1\n    import json\n    import csv\n\n\n"
                                  "def g():\n    def inner():\n        from pkg import low\n")
    assert uncommented_imports(root) == ["pkg.base:7: import json", "pkg.base:8: import csv",
                                         "pkg.base:13: from pkg import low"]
