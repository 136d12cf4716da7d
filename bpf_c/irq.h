/* The irq tool's event: defined here once, mirrored once in decode.py.
 *
 * One event per handler run (hardirq handler, softirq vector, tasklet) with
 * its time from entry to exit, or one per tasklet schedule. pid/tid/comm are
 * the task that was running when the interrupt came (current).
 */
#ifndef BPFPROBES_IRQ_H
#define BPFPROBES_IRQ_H

#include "context.h"
#include "config.h"

#define IRQ_SLOTS 16            /* lines filtered in the kernel; more: in userspace */

/* The run's settings (config.h), mirrored once in runconfig.py. */
struct irq_config {
    RUN_CONFIG_FIELDS
    u32 softirq_mask;   /* the softirq vectors traced (bit per vector) */
    u32 irq_filter;     /* 1: only the lines in irqs[] (unused slots hold no line's number) */
    s32 irqs[IRQ_SLOTS];
};
#define CONFIG_STRUCT irq_config

enum irq_kind {
    IRQ_KIND_HARDIRQ = 0,       /* a hardirq handler: irq = IRQ number, ret = irqreturn_t */
    IRQ_KIND_SOFTIRQ = 1,       /* a softirq vector's run: irq = the vector */
    IRQ_KIND_TASKLET = 2,       /* a tasklet's run: func = its function */
    IRQ_KIND_TASKLET_SCHED = 3, /* a tasklet scheduled: func = its function; no duration */
    IRQ_KINDS = 4,
};

struct irq_event {
    u64 ts_ns;          /* bpf_ktime_get_ns() at entry */
    u64 duration_ns;    /* entry to exit; 0 for a schedule */
    u64 func;           /* handler or tasklet function, when this mechanism sees it; else 0 */
    s32 irq;            /* IRQ number, softirq vector, or -1 */
    s32 ret;            /* a hardirq handler's irqreturn_t; else -1 */
    u32 pid;            /* the interrupted task: tgid */
    u32 tid;
    s32 kstack;         /* stack id at entry (-s), else -1 */
    u8 kind;            /* enum irq_kind */
    u8 reserved[3];
    struct exec_ctx ctx;
    char comm[16];
};

#endif
