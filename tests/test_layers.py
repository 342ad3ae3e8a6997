"""The package's layers import only downward, and there is no import cycle.

Layers, bottom to top (a module may import its own layer and the layers below):
  0 ground    utils, _version, config, params, metrics, data, models, corruptions, variational, permute
  1 engine    lowloss.engine.*
  2 subspaces lowloss.subspaces.*
  3 rundir    lowloss.rundir
  4 methods   lowloss.methods.*
  5 plots     lowloss.plots.*  (leaves: never import methods)
  6 top       api, cli, study, claims, report, and the package __init__
Every import counts, including the ones inside functions.
"""

import ast
import subprocess
import sys
from pathlib import Path

import lowloss

ROOT = Path(lowloss.__file__).parent
GROUND = {"errors", "utils", "_version", "config", "params", "metrics", "data", "models", "corruptions", "variational",
          "permute"}
TOP = {"api", "cli", "study", "claims", "report", "__init__"}


def layer(module: str) -> int:
    parts = module.split(".")[1:]  # drop "lowloss"
    if not parts:
        return 6
    head = parts[0]
    if head in GROUND:
        return 0
    return {"engine": 1, "subspaces": 2, "rundir": 3, "methods": 4, "plots": 5}.get(head, 6 if head in TOP else -1)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every lowloss module that `path` imports (absolute names), anywhere in the file."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "lowloss"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "lowloss":
                continue
            for a in node.names:  # `from . import metrics` imports the module lowloss.metrics
                cand = f"{target}.{a.name}"
                out.add(cand if (ROOT.parent / cand.replace(".", "/")).with_suffix(".py").exists()
                        or (ROOT.parent / cand.replace(".", "/")).is_dir() else target)
    out.discard(mod)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


def test_every_module_has_a_layer():
    assert [m for m in graph() if layer(m) < 0] == []


def test_imports_point_down():
    upward = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
              for m, targets in graph().items() for t in targets
              if layer(t) > layer(m) and not (m == "lowloss" and layer(t) == 6)]
    assert upward == []


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(g.get(m, ())):
            if t not in g:
                continue
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    # a package importing its own submodules (lowloss.plots -> lowloss.plots.x -> lowloss.plots) is not a cycle
    # of modules that run each other; every other one is
    real = [c for c in cycles if not all(p.startswith(c.split(" -> ")[0]) for p in c.split(" -> ")[1:-1])]
    assert real == []


def test_help_imports_no_method_and_no_torch_func():
    code = ("import sys\nfrom lowloss.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "bad = sorted(m for m in sys.modules if m.startswith('lowloss.methods') or m.startswith('torch')"
            ")\nprint('LOADED', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out, out
    assert "connect" in out and "study" in out


def test_importing_plots_keeps_the_matplotlib_backend():
    code = ("import matplotlib\nmatplotlib.use('svg')\nimport lowloss.plots.curves, lowloss.plots.plane\n"
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg"
