"""The package's shape, read from its source: minitf's modules import each other without a cycle (imports
inside functions count), none is over 500 lines, at most 20 sit at the top of ``minitf/``, and none imports
the reference libraries (torch, transformers, TransformerLens are for tests and benchmarks only)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minitf"
MAX_LINES = 500
MAX_TOP_MODULES = 20
FORBIDDEN = {"torch", "transformers", "transformer_lens"}


def module_names() -> dict[str, Path]:
    """Dotted name → file, e.g. "minitf.index.build" → minitf/index/build.py ("minitf.index" for its __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(minitf modules that ``name`` imports anywhere in its file, top-level names of everything it imports).

    ``import a.b.c`` names the deepest of a.b.c, a.b, a that is a module; ``from a.b import c`` names a.b.c when
    that is a module (a submodule imported by name), else a.b. Relative imports are resolved against the package.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets, roots = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            dotted = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for d in dotted:
            roots.add(d.split(".")[0])
            while d and d not in modules:
                d = d.rpartition(".")[0]
            if d and d != name:
                targets.add(d)
    return targets, roots


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = module_names()
    graph, roots = {}, {}
    for name, path in modules.items():
        graph[name], roots[name] = imported(name, path, modules)
    return graph, roots


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_every_kind_of_import(tmp_path):
    """The reader finds absolute, relative, submodule and function-level imports, and cycles through them."""
    pkg = tmp_path / "minitf"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import numpy as np\nfrom minitf.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import minitf.a.x\nfrom . import sub\n")
    modules = {"minitf": pkg / "__init__.py", "minitf.sub": pkg / "sub" / "__init__.py", "minitf.a": pkg / "a.py",
               "minitf.sub.b": pkg / "sub" / "b.py", "minitf.c": pkg / "c.py"}
    graph = {name: imported(name, path, modules)[0] for name, path in modules.items()}
    assert graph == {"minitf": set(), "minitf.sub": set(), "minitf.a": {"minitf.sub.b"},
                     "minitf.sub.b": {"minitf.c"}, "minitf.c": {"minitf.a", "minitf.sub"}}
    assert imported("minitf.a", modules["minitf.a"], modules)[1] == {"numpy", "minitf"}
    assert cycles(graph) == [["minitf.a", "minitf.c", "minitf.sub.b"]]


def test_no_import_cycle_between_minitf_modules():
    graph, _ = import_graph()
    assert len(graph) > 30 and "minitf.model" in graph["minitf"]
    assert cycles(graph) == []


def test_no_module_over_500_lines():
    long = {name: n for name, path in module_names().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_at_most_20_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert "model.py" in top and len(top) <= MAX_TOP_MODULES, top


def test_minitf_never_imports_the_reference_libraries():
    _, roots = import_graph()
    assert "numpy" in roots["minitf.model"]
    bad = {name: sorted(r & FORBIDDEN) for name, r in roots.items() if r & FORBIDDEN}
    assert bad == {}


def test_the_readme_layout_names_every_module():
    """Each subpackage of minitf/ and each module in it appears in the README's Layout section."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) > 1:
            name = f"`minitf/{rel.parent.as_posix()}/`"
        elif len(rel.parts) == 1:
            name = f"`minitf/{rel.name}`" if rel.name != "__main__.py" else f"`{rel.name}`"
        else:
            name = f"`{rel.name}`"
        if name not in layout:
            missing.append(str(rel))
    assert missing == []
