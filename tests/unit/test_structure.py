"""The data path reads left to right: modules import only from their left, and
only loader.py imports bcc."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "bpfprobes"
# DESIGN.md's order; a module may import those before it (and helpers it names)
ORDER = ["errors", "safetext", "cstruct", "runconfig", "safefs", "arch", "btf", "kallsyms",
         "elfsym", "errnos", "openflags", "headers", "bpfsys", "kernel", "features", "policy",
         "spec", "tpformat", "probefilter", "probelayout", "probeplan", "interrupts",
         "irqhandlers", "tracectx", "latency", "codegen", "runtoken", "dynevents", "loader",
         "perfring", "progcache", "countplan", "tracepipe", "ftracetask", "stream", "bpfbackend",
         "tracefsbackend", "decode", "output", "probefmt", "session"]
PURE = {"spec", "arch", "codegen", "decode", "output", "errors", "btf", "kallsyms", "openflags",
        "elfsym", "errnos", "tpformat", "probefilter", "probelayout", "probefmt", "latency",
        "tracectx", "irqhandlers", "tracepipe", "safetext", "cstruct", "runconfig"}


def test_every_module_has_a_place():
    modules = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    assert modules <= set(ORDER), modules - set(ORDER)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(a.name for a in node.names)
            elif node.module:
                out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
    return out


def test_only_loader_imports_bcc():
    offenders = [p.name for p in PKG.rglob("*.py") if "bcc" in imports(p) and p.name != "loader.py"]
    assert offenders == []


def test_pure_modules_need_no_bcc_and_no_root():
    for name in PURE:
        path = PKG / f"{name}.py"
        if path.exists():
            assert "bcc" not in imports(path)


def test_imports_point_left():
    rank = {m: i for i, m in enumerate(ORDER)}
    for name in ORDER:
        path = PKG / f"{name}.py"
        if not path.exists():
            continue
        for dep in imports(path) & set(ORDER):
            assert rank[dep] < rank[name], f"{name} imports {dep}, which is to its right"
