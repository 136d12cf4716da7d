"""Which kernel functions handle an IRQ line, by the driver and the line's name.

/proc and sysfs do not say which function a driver registered with
request_irq(); the irq_handler_entry tracepoint does not either. What is
known is written down here as data: (driver, pattern of the action's name,
handler functions), first match wins, kept only if kallsyms has the symbol.
A driver not in the table gets its module's handler-like symbols listed as
candidates for --handler, never attached on a guess.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from bpfprobes.kernel.kallsyms import Kallsyms

# driver (None: any), action-name regex, handler functions in the order tried
KNOWN = (
    # virtio over PCI: one MSI-X vector per virtqueue, one for config changes,
    # or a single shared vector / legacy INTx line for everything
    (None, r"^virtio\d+-config$", ("vp_config_changed",)),
    (None, r"^virtio\d+-virtqueues$", ("vp_vring_interrupt",)),
    (None, r"^virtio\d+-", ("vring_interrupt",)),
    (None, r"^virtio\d+$", ("vp_interrupt", "vm_interrupt")),
    ("e1000", r"", ("e1000_intr",)),
    ("e1000e", r"-rx-", ("e1000_intr_msix_rx",)),
    ("e1000e", r"-tx-", ("e1000_intr_msix_tx",)),
    ("e1000e", r"", ("e1000_msix_other", "e1000_intr_msi", "e1000_intr")),
    ("igb", r"-(rx|tx|TxRx)-", ("igb_msix_ring",)),
    ("igb", r"", ("igb_msix_other", "igb_intr_msi", "igb_intr")),
    ("ixgbe", r"-(rx|tx|TxRx)-", ("ixgbe_msix_clean_rings",)),
    ("ixgbe", r"", ("ixgbe_msix_other", "ixgbe_intr")),
    ("nvme", r"", ("nvme_irq",)),
    ("ahci", r"", ("ahci_multi_irqs_intr_hard", "ahci_single_level_irq_intr")),
)
_HANDLER_LIKE = re.compile(r"(_intr|_interrupt|_isr|_irq|_irq_handler|_msix_\w+)$")


@dataclass(frozen=True)
class Handlers:
    by_irq: dict[int, str]           # IRQ line -> the handler function found for it
    candidates: list[str]            # handler-like symbols of the driver's module

    @property
    def symbols(self) -> list[str]:
        return sorted(set(self.by_irq.values()))


def find(kallsyms: Kallsyms, driver: str | None, module: str | None,
         names: dict[int, str]) -> Handlers:
    """Handlers of the lines `names` (IRQ -> action name) of `driver`."""
    by_irq = {}
    for irq, name in names.items():
        for drv, pattern, funcs in KNOWN:
            if drv not in (None, driver) or not re.search(pattern, name):
                continue
            found = next((f for f in funcs if kallsyms.exists(f)), None)
            if found:
                by_irq[irq] = found
                break
    candidates = []
    if module and len(by_irq) < len(names):
        candidates = [s for s in kallsyms.module_symbols(module) if _HANDLER_LIKE.search(s)]
    return Handlers(by_irq, candidates)
