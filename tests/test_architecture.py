"""The layout is the architecture (docs/architecture.md): a static check over `fewshot`'s source.

- Stages, read top to bottom as the data moves; a module imports only from its own stage or the ones above
  it, and training, inference and zero-shot sit side by side without importing each other.
- No import cycle among modules, counting the imports inside functions too.
- No project import inside a function, except the documented ones in `DEFERRED`.
- No module imports or reads another module's private (`_name`) members.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fewshot"

#: Stage order, top to bottom; a module belongs to the stage of its longest matching prefix.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("fewshot", "fewshot.registry", "fewshot.files", "fewshot.runtime")),
    ("data", ("fewshot.data",)),
    ("backbones and distances", ("fewshot.backbones", "fewshot.distances")),
    ("learners", ("fewshot.learners",)),
    ("model", ("fewshot.model",)),
    ("metrics", ("fewshot.metrics",)),
    ("evaluation", ("fewshot.evaluation",)),
    ("training, inference, zero-shot", ("fewshot.training", "fewshot.inference", "fewshot.zeroshot")),
    ("interface", ("fewshot.cli", "fewshot.api", "fewshot.__main__", "fewshot.train", "fewshot.evaluate",
                   "fewshot.recipe", "fewshot.search", "fewshot.zeroshot.__main__")),
]

#: Wings of one stage that must not import each other.
SIDE_BY_SIDE = ("fewshot.training", "fewshot.inference", "fewshot.zeroshot")
SIDE_BY_SIDE_STAGE = 7

#: (importing module, imported module) pairs allowed inside a function, with the reason.
DEFERRED: dict[tuple[str, str], str] = {
    # The `python -m fewshot.X` shims import their command line only when run as a program, so that
    # importing them defines nothing.
    ("fewshot.train", "fewshot.cli.train"): "shim runs its command only as __main__",
    ("fewshot.evaluate", "fewshot.cli.evaluate"): "shim runs its command only as __main__",
    ("fewshot.recipe", "fewshot.cli.recipe"): "shim runs its command only as __main__",
    ("fewshot.search", "fewshot.cli.search"): "shim runs its command only as __main__",
    ("fewshot.zeroshot.__main__", "fewshot.cli.zeroshot"): "shim runs its command only as __main__",
    # Each command parses its flags without torch (`--help` answers at once); its runner, which imports torch and
    # the library, is imported after parsing in one place, `fewshot.cli.plugins.run_command`.
    # A flag naming a registered component lists the built-in names for --help and imports the registries only to
    # check a value given (fewshot.cli.catalogue.RegisteredName).
    ("fewshot.cli.catalogue", "fewshot.cli.registries"): "registries (torch) only when a name is checked",
}


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)  # project modules imported at module level
    deferred: set[str] = field(default_factory=set)  # project modules imported inside a function
    private: list[str] = field(default_factory=list)  # "line: what" for each private name taken from elsewhere


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(name: str) -> int:
    best, index = -1, None
    for i, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"module {name} belongs to no stage: add it to STAGES"
    return index


def wing_of(name: str) -> str | None:
    return next((w for w in SIDE_BY_SIDE if name == w or name.startswith(w + ".")), None)


def collect() -> dict[str, Module]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in files}
    modules = {module_name(p): Module(module_name(p), p) for p in files}

    def target(node: ast.ImportFrom | ast.Import, mod: Module) -> list[tuple[str, str | None]]:
        """(imported project module, imported name or None) for each name of an import statement."""
        out: list[tuple[str, str | None]] = []
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fewshot":
                    out.append((alias.name, None))
            return out
        if node.level:
            base = mod.name.split(".")
            if mod.path.name != "__init__.py":
                base = base[:-1]
            base = base[:len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] != "fewshot":
            return out
        for alias in node.names:
            full = f"{source}.{alias.name}"
            out.append((full, None) if full in known else (source, alias.name))
        return out

    for mod in modules.values():
        tree = ast.parse(mod.path.read_text(), filename=str(mod.path))
        inside: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inside.update(id(n) for n in ast.walk(node) if n is not node)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for imported, name in target(node, mod):
                    (mod.deferred if id(node) in inside else mod.imports).add(imported)
                    if name and name.startswith("_") and not name.startswith("__"):
                        mod.private.append(f"{node.lineno}: from {imported} import {name}")
    # Attribute reads `alias._name` where alias names an imported project module, and `self.other._name`: a
    # private member of a collaborator object (its class lives elsewhere).
    for mod in modules.values():
        tree = ast.parse(mod.path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "fewshot":
                        aliases[alias.asname or alias.name.split(".")[0]] = alias.name
            elif isinstance(node, ast.ImportFrom):
                for imported, name in target(node, mod):
                    if name is None:
                        aliases[next(a.asname or a.name for a in node.names if imported.endswith(a.name))] = imported
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):
                mod.private.append(f"{node.lineno}: {node.value.id}.{node.attr}")
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name)
                    and node.value.value.id == "self"):
                mod.private.append(f"{node.lineno}: {ast.unparse(node)}")
    return modules


MODULES = collect()


def test_every_module_has_a_stage() -> None:
    for name in MODULES:
        stage_of(name)


def test_no_module_imports_a_later_stage_or_a_side_by_side_wing() -> None:
    upward = []
    for mod in MODULES.values():
        for imported in sorted(mod.imports | mod.deferred):
            if imported not in MODULES:
                continue
            mine, theirs = stage_of(mod.name), stage_of(imported)
            if theirs > mine:
                upward.append(f"{mod.name} ({STAGES[mine][0]}) imports {imported} ({STAGES[theirs][0]})")
            elif mine == theirs == SIDE_BY_SIDE_STAGE and wing_of(mod.name) != wing_of(imported):
                upward.append(f"{mod.name} imports {imported}: side-by-side wings do not import each other")
    assert not upward, "\n".join(upward)


def test_no_project_import_inside_a_function_except_the_documented_ones() -> None:
    hidden = [f"{mod.name} imports {imported} inside a function"
              for mod in MODULES.values() for imported in sorted(mod.deferred)
              if (mod.name, imported) not in DEFERRED]
    assert not hidden, "\n".join(hidden)


def test_no_import_cycle() -> None:
    graph = {name: {m for m in mod.imports | mod.deferred if m in MODULES and m != name}
             for name, mod in MODULES.items()}
    # A package's __init__ re-exporting its own submodules is not a cycle of design; the edges that matter
    # are between modules, so an import of a package counts as an import of its __init__ only.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "\n".join(cycles)


def test_no_module_reads_another_modules_private_members() -> None:
    reads = [f"{mod.name}:{where}" for mod in MODULES.values() for where in mod.private]
    assert not reads, "\n".join(reads)


@pytest.mark.parametrize("shim", ["train", "evaluate", "recipe", "search"])
def test_the_python_m_shims_define_nothing(shim: str) -> None:
    tree = ast.parse((PACKAGE / f"{shim}.py").read_text())
    defined = [node for node in tree.body if not isinstance(node, (ast.Expr, ast.If))]
    assert not defined, f"fewshot/{shim}.py should only run its command: it defines {[ast.dump(n)[:60] for n in defined]}"


def test_the_stage_checker_sees_an_upward_import() -> None:
    # The checker itself can fail: a data module importing training is reported as upward.
    assert stage_of("fewshot.data.folder") < stage_of("fewshot.training.loop")
    assert stage_of("fewshot.training.loop") == stage_of("fewshot.inference.index") == SIDE_BY_SIDE_STAGE
    assert stage_of("fewshot.zeroshot.__main__") == len(STAGES) - 1
    assert wing_of("fewshot.inference.index") != wing_of("fewshot.training.loop")
