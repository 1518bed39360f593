"""The package's structure: layers between packages, no import cycles, no private names across modules, lazy
top-level imports.

Read from the sources (AST), so that a function-level import counts as much as a
module-level one: importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py``
first, so those count as imported too; and a lazy package face (``lazy_loader.attach``'s
``submod_attrs``, the top-level ``_LAZY``) counts as importing the modules it names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "psic_adapter"


def _modules() -> Dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _with_parents(name: str, modules) -> Set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules}


def _lazy_names(node) -> List[str]:
    """The submodules a lazy face names: ``lazy_loader.attach(__name__, submod_attrs={...})`` keys, ``_LAZY`` values."""
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "attach":
        for kw in node.keywords:
            if kw.arg == "submod_attrs" and isinstance(kw.value, ast.Dict):
                return [k.value for k in kw.value.keys if isinstance(k, ast.Constant)]
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets) \
            and isinstance(node.value, ast.Dict):
        return [v.value for v in node.value.values if isinstance(v, ast.Constant)]
    return []


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rsplit(".", 1)[0]
        deps: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for sub in _lazy_names(node):  # a lazy face imports these when one of its names is asked for
                deps |= _with_parents(f"{package}.{sub.lstrip('.')}", modules)
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                if t.startswith("psic_adapter"):
                    deps |= _with_parents(t, modules)
        deps.discard(name)
        graph[name] = deps - _with_parents(name, modules)  # a module's own parents are imported before it
    return graph


#: the packages (and top-level modules) of psic_adapter, lowest first: each imports only from layers below its
#: own, never from its own layer or above (so no package-level cycle). The root's lazy face is above them all.
LAYERS = [
    ("errors", "types"),
    ("fileio", "weights", "options"),
    ("codec",),                            # CompressAI codecs, their checkpoints, their padding
    ("bitstream", "adapter", "targets"),   # files <-> tensors; the adapter on a codec; the frozen targets
    ("data", "perturbations"),
    ("training", "eval"),
    ("baselines", "hub"),                  # BAvAFT on the training loop and the evaluation; push and the model card
    ("workflows",),                        # the jobs, end to end
    ("demo",),
    ("cli",),
]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_packages_import_only_from_layers_below():
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    graph = _graph()
    units = {_unit(m) for m in graph} - {""}
    assert units <= set(layer), f"place these in LAYERS: {sorted(units - set(layer))}"
    problems = set()
    for module, deps in graph.items():
        a = _unit(module)
        for dep in deps:
            b = _unit(dep)
            if a and b and a != b and layer[b] >= layer[a]:
                problems.add(f"{a} (layer {layer[a]}) imports {b} (layer {layer[b]}): {module} -> {dep}")
    assert not problems, "imports against the layers:\n" + "\n".join(sorted(problems))


def test_no_import_cycles():
    graph = _graph()
    cycles = []
    state: Dict[str, int] = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles[:10])


def test_no_private_name_crosses_a_module():
    modules = _modules()
    private_attrs: Set[str] = set()  # attributes the package's own classes keep private
    trees = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        trees[name] = tree
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(getattr(node, "ctx", None), ast.Store)):
                private_attrs.add(node.attr)
    problems = []
    for name, tree in trees.items():
        module_aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("psic_adapter")):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        problems.append(f"{name}: imports the private {a.name} from {node.module}")
                    module_aliases.add(a.asname or a.name)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Name) and owner.id in module_aliases:
                problems.append(f"{name}: {owner.id}.{node.attr}")
            elif node.attr in private_attrs:
                problems.append(f"{name}: reaches into another object's {node.attr}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_import_and_help_stay_fast_and_light():
    """``import psic_adapter`` loads no torch; ``psic --help`` works (lazy imports)."""
    code = "import sys, psic_adapter; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
    res = subprocess.run([sys.executable, "-m", "psic_adapter.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "compress" in res.stdout and "info" in res.stdout
    # `psic --help` lists every command, train's line too, and loads no torch (train's options would)
    code = ("import sys\nfrom psic_adapter.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("TORCH False") and "fit an adapter" in out and "demo" in out
    train = subprocess.run([sys.executable, "-m", "psic_adapter.cli", "train", "--help"], capture_output=True,
                           text=True)
    assert train.returncode == 0 and "--budget-db" in train.stdout  # a command's own help has its options
