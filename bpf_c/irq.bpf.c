/* irq: hardirq handlers, softirq vectors and tasklets, timed entry to exit.
 *
 * Entry stashes the start per CPU and per kind: a handler of one kind runs
 * to its exit on the CPU it started on before another of that kind starts
 * there (hardirq handlers run with interrupts off; softirqs and tasklets do
 * not nest), while a hardirq may well interrupt a softirq, hence per kind.
 * Built with any of HARDIRQ_TP (irq:irq_handler_entry/exit, raw), HARDIRQ_KP
 * (kprobe/kretprobe on the driver's handler function, whose first argument
 * is the IRQ number), SOFTIRQ (irq:softirq_entry/exit, vectors in
 * the config's softirq_mask), TASKLET (irq:tasklet_entry/exit) and TASKLET_SCHED (a
 * kprobe on __tasklet_schedule; TASKLET_FUNC is tasklet_struct.func's
 * offset from BTF); with IRQ_HIST the times go to metrics.h's histograms, with
 * IRQ_FOLDED the calls are counted there by their stack (--folded).
 */
#include <uapi/linux/ptrace.h>
#include "irq.h"
#include "common.h"
#if defined(IRQ_HIST) || defined(IRQ_FOLDED)
#include "metrics.h"        /* --hist, --folded: counted in the kernel, no event sent */
#endif
#ifdef IRQ_FOLDED
#include "folded.h"         /* --folded: stacks kept by their content */
#endif

struct stash {
    struct irq_event e;
    u8 busy;
    s64 folded;                 /* --folded: the entry's stack (folded.h), or -errno */
};

BPF_PERCPU_ARRAY(stash, struct stash, IRQ_KINDS);
BPF_PERF_OUTPUT(events);
#ifdef STACKS
BPF_STACK_TRACE(stacks, STACKS);
#endif

/* The IRQ lines asked for (the config's irqs[]); all when irq_filter is 0. */
static __always_inline int irq_wanted(int irq)
{
    const struct irq_config *c = settings();
    if (!c)
        return 0;
    if (!c->irq_filter)
        return 1;
    /* a return on the first hit: paths grow linearly with the slots, not 2^slots */
#pragma unroll
    for (int i = 0; i < IRQ_SLOTS; i++)
        if (c->irqs[i] == irq)
            return 1;
    return 0;
}

static __always_inline int softirq_wanted(u32 vec)
{
    const struct irq_config *c = settings();
    return c && vec < 32 && ((c->softirq_mask >> vec) & 1);
}

static __always_inline int kstack(void *ctx)
{
#ifdef STACKS
    return stacks.get_stackid(ctx, 0);
#else
    return -1;
#endif
}

/* Entry: a fresh stashed event for this CPU and kind, or 0 (counted lost). */
static __always_inline struct irq_event *begin(u32 kind, int irq, void *ctx)
{
    struct stash *s = stash.lookup(&kind);
    if (!s)
        return 0;
    struct irq_event *e = &s->e;
    u64 id = bpf_get_current_pid_tgid();
    e->ts_ns = bpf_ktime_get_ns();
    e->duration_ns = 0;
    e->func = 0;
    e->irq = irq;
    e->ret = -1;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->kind = kind;
    /* a kprobe stashes every call of a shared handler: a stack only for wanted lines */
    e->kstack = (kind != IRQ_KIND_HARDIRQ || irq_wanted(irq)) ? kstack(ctx) : -1;
#ifdef IRQ_FOLDED
    s->folded = (kind != IRQ_KIND_HARDIRQ || irq_wanted(irq)) ? folded_stack(ctx, 0, kind) : -1;
#endif
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    s->busy = 1;
    return e;
}

/* Exit: the stashed event of this CPU and kind, timed and sent. An exit with
 * no entry (tracing began inside the handler) is not an event. */
static __always_inline int finish(void *ctx, u32 kind, int irq, int ret)
{
    struct stash *s = stash.lookup(&kind);
    if (!s || !s->busy || s->e.irq != irq)
        return 0;
    s->busy = 0;
#ifdef IRQ_HIST
    /* the histogram of its kind and line (the kind in the high half: one label) */
    struct metric_key mk = {.probe = kind, .err = METRIC_NO_ERRNO};
    mk.args[0] = ((u64)kind << 32) | (u32)irq;
    metric_add(&mk, bpf_ktime_get_ns() - s->e.ts_ns, 1, 0);
    return 0;
#endif
#ifdef IRQ_FOLDED
    /* --folded: handled calls of its kind and line by the stack at entry */
    struct metric_key fk = {.probe = kind, .err = METRIC_NO_ERRNO};
    fk.args[0] = ((u64)kind << 32) | (u32)irq;
    fk.args[1] = (u64)s->folded;
    metric_add(&fk, 0, 0, 0);
    return 0;
#endif
    const struct irq_config *c = settings();
    if (!c || throttle(RUN(c)))
        return 0;
    s->e.duration_ns = bpf_ktime_get_ns() - s->e.ts_ns;
    s->e.ret = ret;
    submitted(events.perf_submit(ctx, &s->e, sizeof(s->e)));
    return 0;
}

/* Tracepoint record fields at the offsets their format files give (TP_*_OFF,
 * from tpformat.py): the same program is right on every kernel's layout. */
#define TP_FIELD(ctx, type, off) (*(type *)((char *)(ctx) + (off)))

#ifdef HARDIRQ_TP
/* Raw tracepoints: the arguments as the kernel passes them (entry: irq, action;
 * exit: irq, action, ret). A perf-event tracepoint's program is skipped with no
 * counter anywhere when its buffer's recursion slot is taken (perf_trace_buf_alloc
 * returns before any BPF runs: measured, a few interrupts in a thousand on a task
 * in a perf section); a raw tracepoint's run is skipped only with the program's
 * recursion_misses counted, so every interrupt is an event or a counted loss. */
int raw_irq_entry(struct bpf_raw_tracepoint_args *ctx)
{
    int irq = (int)ctx->args[0];
    if (!irq_wanted(irq))
        return 0;
    struct irq_event *e = begin(IRQ_KIND_HARDIRQ, irq, ctx);
    if (e)
        ctx_fill(&e->ctx, CTX_HARDIRQ);
    return 0;
}

int raw_irq_exit(struct bpf_raw_tracepoint_args *ctx)
{
    int irq = (int)ctx->args[0];
    if (!irq_wanted(irq))
        return 0;
    return finish(ctx, IRQ_KIND_HARDIRQ, irq, (int)ctx->args[2]);
}
#endif

#ifdef HARDIRQ_KP
/* irqreturn_t handler(int irq, void *dev_id): the same shape for every driver.
 * Every call is stashed, wanted or not, and the return decides: a handler
 * such as vring_interrupt serves many devices, and its return cannot tell
 * which call it ends. Pairing every return with the last entry on its CPU is
 * exact (handlers do not nest); filtering at entry would leave a return of an
 * unwanted line to meet a wanted line's stale entry. */
int kp_handler(struct pt_regs *ctx)
{
    struct irq_event *e = begin(IRQ_KIND_HARDIRQ, (int)ctx->FUNC_ARG1, ctx);
    if (!e)
        return 0;
    e->func = PT_REGS_IP(ctx);
    ctx_fill(&e->ctx, CTX_HARDIRQ);
    return 0;
}

int kr_handler(struct pt_regs *ctx)
{
    u32 kind = IRQ_KIND_HARDIRQ;
    struct stash *s = stash.lookup(&kind);
    if (!s || !s->busy)
        return 0;
    if (!irq_wanted(s->e.irq)) {
        s->busy = 0;
        return 0;
    }
    return finish(ctx, kind, s->e.irq, (int)ctx->RET_REG);
}
#endif

#ifdef SOFTIRQ
int tp_softirq_entry(void *ctx)
{
    u32 vec = TP_FIELD(ctx, u32, TP_VEC_OFF);
    if (!softirq_wanted(vec))
        return 0;
    struct irq_event *e = begin(IRQ_KIND_SOFTIRQ, vec, ctx);
    if (e)
        ctx_fill(&e->ctx, CTX_SOFTIRQ);
    return 0;
}

int tp_softirq_exit(void *ctx)
{
    u32 vec = TP_FIELD(ctx, u32, TP_VEC_OFF);
    if (!softirq_wanted(vec))
        return 0;
    return finish(ctx, IRQ_KIND_SOFTIRQ, vec, -1);
}
#endif

#ifdef TASKLET
int tp_tasklet_entry(void *ctx)
{
    struct irq_event *e = begin(IRQ_KIND_TASKLET, -1, ctx);
    if (!e)
        return 0;
#ifdef TP_FUNC_OFF
    e->func = TP_FIELD(ctx, u64, TP_FUNC_OFF);
#endif
    ctx_fill(&e->ctx, CTX_SOFTIRQ);     /* tasklets run in the TASKLET/HI softirqs */
    return 0;
}

int tp_tasklet_exit(void *ctx)
{
    return finish(ctx, IRQ_KIND_TASKLET, -1, -1);
}
#endif

#ifdef TASKLET_SCHED
/* void __tasklet_schedule(struct tasklet_struct *t): who schedules which tasklet */
int kp_tasklet_schedule(struct pt_regs *ctx)
{
    struct irq_event *e = begin(IRQ_KIND_TASKLET_SCHED, -1, ctx);
    if (!e)
        return 0;
    void *t = (void *)ctx->FUNC_ARG1;
    bpf_probe_read_kernel(&e->func, sizeof(e->func), t + TASKLET_FUNC);
    ctx_fill(&e->ctx, CTX_UNKNOWN);     /* scheduled from anywhere */
    return finish(ctx, IRQ_KIND_TASKLET_SCHED, -1, -1);
}
#endif
