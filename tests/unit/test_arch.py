"""Every architecture's ABI table, on any host."""
import pytest

from bpfprobes.base.errors import UsageError
from bpfprobes.kernel import arch

# (arch, function args, syscall args, retval, a register -> member pair)
EXPECTED = {
    "x86_64": (("di", "si", "dx", "cx", "r8", "r9"), ("di", "si", "dx", "r10", "r8", "r9"), "ax",
               ("si", "si")),
    "aarch64": (tuple(f"x{i}" for i in range(8)), ("orig_x0", "x1", "x2", "x3", "x4", "x5"), "x0",
                ("x1", "regs[1]")),
    "arm": (("r0", "r1", "r2", "r3"), ("r0", "r1", "r2", "r3", "r4", "r5"), "r0",
            ("r1", "uregs[1]")),
    "riscv64": (tuple(f"a{i}" for i in range(8)), ("orig_a0", "a1", "a2", "a3", "a4", "a5"), "a0",
                ("a1", "a1")),
    "ppc64le": (tuple(f"r{i}" for i in range(3, 11)), ("orig_gpr3", "r4", "r5", "r6", "r7", "r8"),
                "r3", ("r4", "gpr[4]")),
    "s390x": (("r2", "r3", "r4", "r5", "r6"), ("orig_gpr2", "r3", "r4", "r5", "r6", "r7"), "r2",
              ("r3", "gprs[3]")),
}


def test_every_required_arch_has_a_table():
    assert {a.name for a in arch.ALL} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_table(name):
    abi = arch.get(name)
    func, sc, ret, (reg, member) = EXPECTED[name]
    assert abi.func_args == func
    assert abi.syscall_args == sc
    assert abi.retval == ret
    assert abi.member(reg) == member
    assert abi.member("%" + reg) == member


@pytest.mark.parametrize("abi", arch.ALL, ids=lambda a: a.name)
def test_every_named_register_has_a_member(abi):
    for reg in (*abi.func_args, *abi.syscall_args, abi.retval, abi.stack_pointer):
        assert abi.member(reg), reg
    for alias, target in abi.register_aliases.items():
        assert abi.member(alias) == abi.members[target]


@pytest.mark.parametrize("abi", arch.ALL, ids=lambda a: a.name)
def test_arg_registers_and_macros(abi):
    for i, reg in enumerate(abi.func_args, 1):
        assert abi.arg_register(i) == reg
        assert abi.parm_macro(i) == f"PT_REGS_PARM{i}"
        assert abi.arg_index(reg) == i
    with pytest.raises(UsageError, match="on the stack"):
        abi.arg_register(len(abi.func_args) + 1)


def test_x86_64_fourth_syscall_argument_is_r10_not_cx():
    assert arch.X86_64.arg_register(4, syscall=True) == "r10"
    assert arch.X86_64.arg_register(4) == "cx"


def test_aliases_resolve():
    assert arch.get("amd64") is arch.X86_64
    assert arch.get("arm64") is arch.AARCH64
    assert arch.X86_64.member("%rdi") == "di"
    assert arch.AARCH64.member("lr") == "regs[30]"


@pytest.mark.parametrize("abi,reg,message", [
    (arch.ARM, "%si", "%si is not an arm register; argument 2 is %r1"),
    (arch.X86_64, "%r1", "%r1 is not an x86_64 register; argument 2 is %si"),
    (arch.X86_64, "%x1", "%x1 is not an x86_64 register; argument 2 is %si"),
    (arch.AARCH64, "%di", "%di is not an aarch64 register; argument 1 is %x0"),
    (arch.S390X, "%a0", "%a0 is not an s390x register; argument 1 is %r2"),
])
def test_wrong_arch_register_names_the_right_one(abi, reg, message):
    with pytest.raises(UsageError) as e:
        abi.member(reg)
    assert str(e.value).startswith(message)


def test_unknown_register_lists_registers():
    with pytest.raises(UsageError) as e:
        arch.X86_64.member("%zz")
    assert "not an x86_64 register" in e.value.what and "%di" in e.value.hint


def test_unknown_arch():
    with pytest.raises(UsageError):
        arch.get("vax")


@pytest.mark.parametrize("abi", arch.ALL, ids=lambda a: a.name)
def test_every_arch_has_its_syscall_numbers_and_facts(abi):
    assert abi.nr_bpf > 0 and abi.nr_perf_event_open > 0
    assert abi.link_register is None or abi.canonical(abi.link_register) is not None
    if abi.raw_syscalls is not None:
        assert abi.canonical(abi.raw_syscalls["SYSCALL_NR"]) is not None


def test_arch_facts_that_differ():
    x86, arm64 = arch.get("x86_64"), arch.get("aarch64")
    assert (x86.nr_bpf, x86.nr_perf_event_open) == (321, 298)
    assert (arm64.nr_bpf, arm64.nr_perf_event_open) == (280, 241)
    assert [a.name for a in arch.ALL if a.tso] == ["x86_64"]   # the direct reader's memory model
    assert x86.link_register is None and arm64.link_register == "lr"
    assert not arch.get("ppc64le").non_overlapping and x86.non_overlapping
