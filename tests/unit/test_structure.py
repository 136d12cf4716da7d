"""The tree shows the data path: packages are layers, and a module imports only
from its own layer or the layers to its left (README's picture); only the BPF
backend's loader imports bcc; nothing reads another module's private names."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "bpfprobes"
# left to right; within a layer, modules import one another freely (no cycles: Python says)
LAYERS = ["base", "kernel", "plan", "gen", "backends.tracefs", "backends.bpf", "present",
          "session", "tools", "cli"]
# layers a module may not import although they are to its left: the backends are each
# other's peers, except that BCC's attaches record their events as this run's (dynevents)
PEERS_ALLOWED = {("backends.bpf", "backends.tracefs.dynevents")}
PURE = ["base", "kernel.arch", "kernel.btf", "kernel.kallsyms", "kernel.elfsym",
        "kernel.errnos", "kernel.openflags", "kernel.irqhandlers",
        "kernel.tracectx", "plan", "gen", "backends.tracefs.tracepipe", "present"]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PKG).with_suffix("").parts)


def layer_of(module: str) -> str:
    """The layer a module (dotted under bpfprobes) belongs to."""
    return next(layer for layer in sorted(LAYERS, key=len, reverse=True)
                if module == layer or module.startswith(layer + "."))


MODULES = {module_name(p): p for p in PKG.rglob("*.py") if p.name != "__init__.py"}


def imports(path: Path) -> set[str]:
    """Modules imported, dotted: bpfprobes' own without the prefix."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                base = module_name(path).split(".")[:-node.level]
                mod = ".".join([*base, node.module])
            else:
                mod = node.module
            mod = mod.removeprefix("bpfprobes.")
            # `from bpfprobes.kernel import arch`: the module is kernel.arch
            out.update(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod
                       for a in node.names)
        elif isinstance(node, ast.ImportFrom):          # from . import x
            base = module_name(path).split(".")[:-node.level]
            out.update(".".join([*base, a.name]) for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("bpfprobes.") for a in node.names)
    return out


def test_every_module_is_in_a_layer():
    assert all(layer_of(m) for m in MODULES)
    assert not list(PKG.glob("*.py"))[1:], "the package root holds __init__.py only"


def test_imports_point_left():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    bad = []
    for name, path in MODULES.items():
        mine = layer_of(name)
        for dep in imports(path):
            if dep not in MODULES:
                continue
            theirs = layer_of(dep)
            allowed = rank[theirs] < rank[mine] and not (
                theirs.startswith("backends") and mine.startswith("backends")
                and (mine, dep) not in PEERS_ALLOWED) or theirs == mine
            if not allowed:
                bad.append(f"{name} imports {dep}")
    assert bad == []


def test_only_the_loader_imports_bcc():
    offenders = [m for m, p in MODULES.items() if "bcc" in imports(p)]
    assert offenders == ["backends.bpf.loader"]


def test_pure_modules_need_no_bcc_and_no_backend():
    for name, path in MODULES.items():
        if any(name == p or name.startswith(p + ".") for p in PURE):
            deps = imports(path)
            assert "bcc" not in deps and not any(d.startswith("backends.bpf") for d in deps), name


def test_no_module_reads_another_modules_private_names():
    """`other._name`: a module's private names are its own (tests may look)."""
    bad = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        imported = {a.asname or a.name for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name) \
                    and node.value.id in imported:
                bad.append(f"{name}: {node.value.id}.{node.attr}")
    assert bad == []


def test_the_command_line_is_thin():
    """cli/ turns argv into a tool's options and nothing else: small, no cli
    module imports another tool's cli module, no Namespace past it."""
    cli = {m: p for m, p in MODULES.items() if m.startswith("cli.")}
    # about a hundred lines a tool (argparse declarations, examples): seven tools
    assert sum(len(p.read_text().splitlines()) for p in cli.values()) < 900
    shared = {"cli.common", "cli.main"}
    for name, path in cli.items():
        assert not (imports(path) & set(cli)) - shared, name
    for name, path in MODULES.items():
        if not name.startswith("cli."):
            assert "argparse" not in imports(path), f"{name} knows argparse"


def test_test_modules_have_one_basename_each():
    """pytest imports test modules by basename (the tiers are not packages): two of a
    name stop the whole run at collection."""
    names = [p.name for p in (PKG.parent / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
