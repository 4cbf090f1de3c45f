"""The package layout (docs/api.md, "Layout"): no import cycles, imports at module top, the core depends on
nothing above it, no function over 80 lines, and the module paths from before the layout still import with
a DeprecationWarning."""

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

import diffusion_objectives

SRC = Path(diffusion_objectives.__file__).resolve().parent
PKG = "diffusion_objectives"
# optional extras, or imports that cost seconds and serve one feature: imported where they are used
LOCAL_OK = ("diffusers", "submitit", "torch.utils.tensorboard", "sklearn")


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for f in sorted(SRC.rglob("*.py")):
        parts = [PKG, *f.relative_to(SRC).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


MODULES = _modules()


def _resolve(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")[: None if is_pkg else -1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(modules imported at module level, [(line, module)] imported inside functions)."""
    path, is_pkg = MODULES[module]
    tree = ast.parse(path.read_text())
    top_level = {id(n) for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                       ast.ClassDef))
                 for n in ast.walk(stmt)}
    top, local = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, is_pkg)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        if id(node) in top_level:
            top |= set(names)
        else:
            local += [(node.lineno, n) for n in names]
    return top, local


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        deps = set()
        for name in _imports(module)[0]:
            parts = name.split(".")
            for k in range(2, len(parts) + 1):  # a module also depends on the packages above it
                dep = ".".join(parts[:k])
                if dep in MODULES and dep != module and not module.startswith(dep + "."):
                    deps.add(dep)
        graph[module] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_module_graph_has_no_cycles():
    assert _cycles(_graph()) == []


def test_imports_are_at_module_top():
    offenders = [f"{m}:{line} imports {name}" for m in MODULES for line, name in _imports(m)[1]
                 if not name.startswith(LOCAL_OK)]
    assert offenders == []


def test_core_depends_only_on_itself_and_the_shared_modules():
    allowed = (f"{PKG}.core", f"{PKG}.registry", f"{PKG}.errors", f"{PKG}._deprecation")
    offenders = {m: sorted(d for d in deps if d.startswith(PKG) and not d.startswith(allowed))
                 for m, deps in ((m, _imports(m)[0]) for m in MODULES if m.startswith(f"{PKG}.core"))}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_function_is_longer_than_80_lines():
    long = []
    for module, (path, _) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


@pytest.mark.parametrize("old, new", [("schedules", "core.schedules"), ("samplers", "sampling.samplers"),
                                      ("metrics.frechet", "evaluation.metrics.frechet"),
                                      ("adapters", "interop.adapters"), ("elbo", "likelihoods.vlb")])
def test_old_module_paths_import_the_new_module_with_a_warning(old, new):
    sys.modules.pop(f"{PKG}.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"{PKG}.{old} moved to {PKG}.{new}"):
        module = importlib.import_module(f"{PKG}.{old}")
    assert module is importlib.import_module(f"{PKG}.{new}")
    assert callable(diffusion_objectives.elbo) and callable(diffusion_objectives.likelihood)  # not shadowed


def test_names_of_modules_that_became_packages_forward_with_a_warning():
    from diffusion_objectives.core import objectives
    from diffusion_objectives.evaluation import protocol
    from diffusion_objectives.interop import translate
    from diffusion_objectives.study import runner

    with pytest.warns(DeprecationWarning, match="moved to diffusion_objectives.evaluation.protocol.evaluate"):
        assert diffusion_objectives.evaluation.evaluate is protocol.evaluate
    with pytest.warns(DeprecationWarning, match="moved to diffusion_objectives.study.runner.StudyConfig"):
        assert diffusion_objectives.study.StudyConfig is runner.StudyConfig
    with pytest.warns(DeprecationWarning, match="interop.translate.from_diffusers"):
        assert objectives.from_diffusers is translate.from_diffusers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from diffusion_objectives.evaluation import metrics  # a submodule: no warning
    assert metrics.frechet_distance is not None
    with pytest.raises(AttributeError):
        _ = objectives.no_such_name
