"""The formats and kernels are the bottom layers of the engine: no import among them runs in a cycle, and
none reaches up into the rest of the engine. Read from the source (AST), imports inside functions
included, so an import hidden in a function body counts like one at the top."""
import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"
BOTTOM = ("engine.kernels", "engine.formats")
LEAVES = ("engine.errors",)  # what the bottom layers may import from the rest of the engine


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every engine module `path` imports, anywhere in the file (`from . import x` counts as x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m.startswith("engine")}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ENGINE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in files and m != name} for name, path in files.items()}


def in_bottom(name: str) -> bool:
    return any(name == b or name.startswith(b + ".") for b in BOTTOM)


def test_formats_and_kernels_import_nothing_above_them():
    upward = [(a, b) for a, deps in graph().items() if in_bottom(a)
              for b in deps if not in_bottom(b) and b not in LEAVES and b != "engine"]
    assert upward == []


def test_no_import_cycle_among_formats_and_kernels():
    g = {a: {b for b in deps if in_bottom(b) and not (a.startswith(b + ".") and b.count(".") == 1)}
         for a, deps in graph().items() if in_bottom(a)}
    # a module importing names from its own package's __init__ (`from . import x`) is how packages
    # work: that edge is left out; any other path back to the start is a cycle
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(g):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    src = tmp_path / "engine" / "kernels" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("def f():\n    from ..linear import QuantLinear\n    from . import ops\n")
    global ENGINE
    saved, ENGINE = ENGINE, tmp_path / "engine"
    try:
        assert imports(src) >= {"engine.linear", "engine.linear.QuantLinear", "engine.kernels.ops"}
    finally:
        ENGINE = saved
