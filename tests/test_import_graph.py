"""No import cycle among the engine's modules, counting imports inside functions: a cycle hidden behind
a late import still means two files that cannot be understood (or tested) one without the other.

The graph is read from the source (ast), not by importing: `from .a import b` is an edge to engine.?.a,
or only to engine.?.a.b when b is a module. A package's `__init__` is a module like any other: a
submodule that takes a name from it while it imports that submodule is a cycle. Imports built at run
time (`__import__(f"...")`, as engine/kernels/__init__.py does) are not seen."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"

# No cycle is allowed (the kernels' eightbit -> ops -> triton_gemm cycle was removed by splitting the
# registry classes from the raw Triton code); the list stays for the test's own bookkeeping.
KNOWN: list[set[str]] = []


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ENGINE.rglob("*.py")}


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Engine modules that `name` imports anywhere in its source (functions and try blocks included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            subs = [f"{base}.{a.name}" for a in node.names]
            # `from pkg import name` reads pkg itself unless every name is a submodule
            targets = subs + ([base] if any(t not in known for t in subs) else [])
        else:
            continue
        for target in targets:
            if target in known and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_late_and_relative_imports():
    edges = graph()
    assert "engine.checkpoint.files" in edges["engine.checkpoint.io"]  # from .files import ...
    assert "engine.errors" in edges["engine.checkpoint.io"]  # from ..errors import ...
    assert "engine.checkpoint.sources" in edges["engine.checkpoint.assemble"]  # inside a function
    assert "engine.kernels.ops" in edges["engine.fused"]  # inside try:
    # and the cycle finder finds a planted one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles_among_engine_modules():
    found = cycles(graph())
    new = [sorted(c) for c in found if c not in KNOWN]
    assert not new, f"import cycles: {new}"
    gone = [sorted(c) for c in KNOWN if c not in found]
    assert not gone, f"these known cycles are gone: remove them from KNOWN in {__file__}: {gone}"
