/* The execution context of an event, as ftrace's latency format shows it:
 * the CPU, and whether it ran in NMI, hardirq or softirq context, with
 * bottom halves off, a reschedule pending, at what preempt depth. Mirrored
 * once in tracectx.py, which turns it into fields and text.
 *
 * The whole of it is in the preempt_count, which a probe reads where codegen
 * could locate it: x86 keeps it per CPU (PERCPU_OFFSETS: the address of
 * __per_cpu_offset[]; PREEMPT_COUNT_VAR: the per-CPU offset of the counter;
 * both from kallsyms, which lists data symbols only with CONFIG_KALLSYMS_ALL),
 * arm64 and others in the task's thread_info (TASK_PREEMPT_COUNT: its offset
 * in task_struct, from BTF; `current` is the interrupted task in an interrupt,
 * and its count has the hardirq bits then; the low 32 bits are the count
 * where the member is 64 bits wide, little-endian). Elsewhere an event
 * carries what its attach point implies (a hardirq handler runs in hardirq
 * context) or nothing. A tracepoint record's own flags are no help: for a
 * BPF program the kernel overwrites them with a pt_regs pointer.
 */
#ifndef BPFPROBES_CONTEXT_H
#define BPFPROBES_CONTEXT_H

#define CTX_SOURCE_NONE 0       /* only the CPU is known */
#define CTX_SOURCE_IMPLIED 1    /* `implied`, from where the probe sits */
#define CTX_SOURCE_PREEMPT 2    /* `preempt`: the CPU's preempt_count, read */

#define CTX_TASK 0
#define CTX_SOFTIRQ 1
#define CTX_HARDIRQ 2
#define CTX_NMI 3
#define CTX_UNKNOWN 255

struct exec_ctx {
    u32 cpu;
    u32 preempt;        /* CTX_SOURCE_PREEMPT: the whole preempt_count */
    u8 source;          /* CTX_SOURCE_* */
    u8 implied;         /* CTX_SOURCE_IMPLIED: CTX_TASK .. CTX_NMI */
    u16 reserved;
};

static __always_inline void ctx_fill(struct exec_ctx *c, u8 implied)
{
    c->cpu = bpf_get_smp_processor_id();
    c->implied = implied;
#if defined(PERCPU_OFFSETS) && defined(PREEMPT_COUNT_VAR)
    u64 base = 0;
    u32 pc = 0;
    if (bpf_probe_read_kernel(&base, sizeof(base),
                              (void *)(PERCPU_OFFSETS + 8ULL * c->cpu)) == 0 &&
        bpf_probe_read_kernel(&pc, sizeof(pc), (void *)(base + PREEMPT_COUNT_VAR)) == 0) {
        c->source = CTX_SOURCE_PREEMPT;
        c->preempt = pc;
        return;
    }
#elif defined(TASK_PREEMPT_COUNT)
    u32 pc = 0;
    u64 task = bpf_get_current_task();
    if (bpf_probe_read_kernel(&pc, sizeof(pc), (void *)(task + TASK_PREEMPT_COUNT)) == 0) {
        c->source = CTX_SOURCE_PREEMPT;
        c->preempt = pc;
        return;
    }
#endif
    c->source = implied == CTX_UNKNOWN ? CTX_SOURCE_NONE : CTX_SOURCE_IMPLIED;
    c->preempt = 0;
}

#endif
