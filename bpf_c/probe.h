/* bpfprobes probe: the event every generated probe function sends, and the
 * helpers those functions are made of (codegen.py writes one short function
 * per spec that calls these; it never writes anything else).
 *
 * The event (probe_event.h) is a fixed header, mirrored once in decode.py
 * (PROBE_EVENT), then the probe's payload: one 8-byte slot per
 * scalar argument, then one fixed-size slot per string, laid out by
 * probelayout.py from the spec. The decoder computes the same layout, so no
 * per-spec struct exists. Only the used bytes of the last string are sent.
 *
 * Defines from codegen: PROBE_PAYLOAD_MAX (largest payload of any probe),
 * PROBE_STACKS (stack map size, when -s or -U), PROBE_PAIRS (entry
 * timestamps kept for latency), PROBE_METRICS (count in the kernel, send
 * nothing: metrics.h's METRIC_*), PROBE_FOLDED (metrics keyed by stack, stacks
 * kept by folded.h: each process's first sight is sent, PROBE_SEEN, with the
 * offsets of probe_space_of);
 * the run's filters are in its config (struct probe_config, probe_event.h).
 */
#ifndef BPFPROBES_PROBE_H
#define BPFPROBES_PROBE_H

#include "probe_event.h"

BPF_PERCPU_ARRAY(probe_scratch, struct probe_event, 1);
BPF_PERF_OUTPUT(events);

#ifdef PROBE_METRICS
/* metrics mode: each probe counts its call under its labels (metric_add) */
#include "metrics.h"
#endif

#ifdef PROBE_STACKS
BPF_STACK_TRACE(stacks, PROBE_STACKS);
#endif

#ifdef PROBE_PAIRS
/* entry timestamp per (thread, function): a return probe's latency. LRU: an
 * entry whose return never comes (a missed kretprobe, a thread that exited)
 * must not fill the map for good. */
struct pair_key {
    u32 tid;
    u32 pair;
};
BPF_TABLE("lru_hash", struct pair_key, u64, entry_ts, PROBE_PAIRS);

static __always_inline void pair_enter(u64 id, u32 pair)
{
    struct pair_key k = {.tid = (u32)id, .pair = pair};
    u64 now = bpf_ktime_get_ns();
    entry_ts.update(&k, &now);
}

static __always_inline u64 pair_leave(u64 id, u32 pair, u64 now)
{
    struct pair_key k = {.tid = (u32)id, .pair = pair};
    u64 *start = entry_ts.lookup(&k);
    if (!start)
        return 0;
    u64 lat = now - *start;
    entry_ts.delete(&k);
    return lat;
}
#endif

#define SLOT(e, off) (*(u64 *)((e)->payload + (off)))
#define BIT(i) (1ULL << (i))

/* --comm: the task's name byte for byte, its NUL included (the config's
 * name is NUL-padded). */
static __always_inline int comm_wanted(const char *comm, const struct probe_config *c)
{
    if (!c->comm_set)
        return 1;
    /* returns as soon as it knows: paths grow linearly with the bytes, not 2^bytes */
#pragma unroll
    for (int i = 0; i < PROBE_COMM_LEN; i++) {
        if (i > c->comm_len)
            return 1;
        if (comm[i] != c->comm[i])
            return 0;
    }
    return 1;
}

/* Whether this task is wanted (-p, -L, --comm, not our own pid): for a
 * latency's entry, which records no event. */
static __always_inline int probe_task_wanted(u64 id)
{
    const struct probe_config *c = settings();
    if (!c || task_filtered(id, RUN(c)))
        return 0;
    if (!c->comm_set)
        return 1;
    char comm[PROBE_COMM_LEN] = {};
    bpf_get_current_comm(&comm, sizeof(comm));
    return comm_wanted(comm, c);
}

/* The scratch event with its header filled, or NULL when this task is not
 * wanted (-p, -L, --comm, our own pid). `implied`: the context the attach
 * point implies (a uprobe: a task), for when preempt_count cannot be read. */
static __always_inline struct probe_event *probe_begin(u64 id, u32 probe, u8 implied)
{
    u32 zero = 0;
    const struct probe_config *c = settings();
    if (!c || task_filtered(id, RUN(c)))
        return 0;
    struct probe_event *e = probe_scratch.lookup(&zero);
    if (!e) {
        count_drop();
        return 0;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->latency_ns = 0;
    e->ret_ip = 0;
    e->faults = 0;
    e->truncated = 0;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->probe = probe;
    ctx_fill(&e->ctx, implied);
    e->kstack = -1;
    e->ustack = -1;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    return comm_wanted(e->comm, c) ? e : 0;
}

/* Memory a fetcharg reads: kernel, user, or either by address (the legacy
 * helpers, where the architecture keeps the two apart: what the kernel's own
 * kprobe fetchargs do, so `+0(%si):string` reads a user path in a kprobe). */
#define MEM_KERNEL 0
#define MEM_USER 1
#define MEM_EITHER 2

static __always_inline long probe_copy(void *dst, u32 size, u64 addr, int mode)
{
    if (mode == MEM_USER)
        return bpf_probe_read_user(dst, size, (void *)addr);
    if (mode == MEM_EITHER)
        return bpf_probe_read(dst, size, (void *)addr);
    return bpf_probe_read_kernel(dst, size, (void *)addr);
}

/* A value of `size` bytes (a constant once inlined); a failed read leaves 0
 * and sets the argument's fault bit. */
static __always_inline u64 probe_read(u64 addr, u32 size, int mode, u64 *faults, u64 bit)
{
    long rc;
    u64 v = 0;
    if (size == 1) {
        u8 t = 0;
        rc = probe_copy(&t, 1, addr, mode);
        v = t;
    } else if (size == 2) {
        u16 t = 0;
        rc = probe_copy(&t, 2, addr, mode);
        v = t;
    } else if (size == 4) {
        u32 t = 0;
        rc = probe_copy(&t, 4, addr, mode);
        v = t;
    } else {
        rc = probe_copy(&v, 8, addr, mode);
    }
    if (rc < 0) {
        *faults |= bit;
        v = 0;
    }
    return v;
}

/* A NUL-terminated string into a payload slot; returns the bytes used (NUL
 * included). A failed read leaves an empty string and sets the fault bit. */
static __always_inline u32 probe_str(struct probe_event *e, u32 off, u32 size, u64 addr,
                                     int mode, u64 bit)
{
    long n;
    if (off + size > PROBE_PAYLOAD_MAX)     /* never true: keeps the verifier sure */
        return 0;
    if (mode == MEM_USER)
        n = bpf_probe_read_user_str(e->payload + off, size, (void *)addr);
    else if (mode == MEM_EITHER)
        n = bpf_probe_read_str(e->payload + off, size, (void *)addr);
    else
        n = bpf_probe_read_kernel_str(e->payload + off, size, (void *)addr);
    if (n <= 0) {
        e->faults |= bit;
        e->payload[off] = 0;
        return 1;
    }
    if (n >= size)
        e->truncated |= bit;
    return n;
}

static __always_inline void probe_stacks(void *ctx, struct probe_event *e, int kernel, int user)
{
#ifdef PROBE_STACKS
    if (kernel)
        e->kstack = stacks.get_stackid(ctx, BPF_F_REUSE_STACKID);
    if (user)
        e->ustack = stacks.get_stackid(ctx, BPF_F_USER_STACK | BPF_F_REUSE_STACKID);
#endif
}

#ifdef PROBE_FOLDED
#include "folded.h"

/* Which program image a user stack was taken in: the pid alone is not it (an exec
 * keeps the pid and changes the maps; a pid is reused). A process is seen as its
 * incarnation: its mm, its start time (task_struct.start_boottime of its leader)
 * and where its exec put code and stack (mm->start_code, start_stack: new at every
 * exec, with ASLR), the last two also in /proc/PID/stat, where the reader checks
 * them around its read of the maps. Offsets from BTF (TASK_MM, TASK_GROUP_LEADER,
 * TASK_START_BOOTTIME, MM_START_CODE, MM_START_STACK); 0 where one is missing. */
struct probe_space {
    u64 mm;
    u64 start_boottime;
    u64 start_code;
    u64 start_stack;
};

#define KERNEL_READ(dst, base, off) \
    bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(base) + (off))

static __always_inline void probe_space_of(struct probe_space *sp)
{
#if defined(TASK_MM) && defined(TASK_GROUP_LEADER) && defined(TASK_START_BOOTTIME) \
    && defined(MM_START_CODE) && defined(MM_START_STACK)
    void *task = (void *)bpf_get_current_task(), *leader = 0;
    KERNEL_READ(sp->mm, task, TASK_MM);
    KERNEL_READ(leader, task, TASK_GROUP_LEADER);
    if (leader)
        KERNEL_READ(sp->start_boottime, leader, TASK_START_BOOTTIME);
    if (sp->mm) {
        KERNEL_READ(sp->start_code, sp->mm, MM_START_CODE);
        KERNEL_READ(sp->start_stack, sp->mm, MM_START_STACK);
    }
#endif
}

/* The incarnation as one number, for the rows' key and the seen table: a freed mm
 * reused by the next process still changes it through the start time. */
static __always_inline u64 probe_space_id(const struct probe_space *sp)
{
    return sp->mm ^ (sp->start_boottime * 0x9e3779b97f4a7c15ULL) ^ sp->start_stack;
}

struct seen_key {
    u32 pid;
    u32 reserved;
    u64 space;
};
BPF_TABLE("lru_hash", struct seen_key, u8, seen, 10240);

/* Stacks are counted here and named at the end of the run, when a short-lived
 * process is long gone: its first sight is sent at once (the payload: struct
 * probe_space), and the reader keeps its maps (and files) from then on. */
static __always_inline void probe_seen(void *ctx, struct probe_event *e, u64 id_of_space,
                                       const struct probe_space *sp)
{
    struct seen_key k = {.pid = e->pid, .space = id_of_space};
    u8 one = 1;
    if (seen.lookup(&k))
        return;
    seen.update(&k, &one);
    e->probe = PROBE_SEEN;
    SLOT(e, 0) = id_of_space;
    SLOT(e, 8) = sp->start_boottime;
    SLOT(e, 16) = sp->start_code;
    SLOT(e, 24) = sp->start_stack;
    submitted(events.perf_submit(ctx, e, offsetof(struct probe_event, payload) + 32));
}
#endif

static __always_inline void probe_submit(void *ctx, struct probe_event *e, u64 size)
{
    const struct probe_config *c = settings();
    if (!c || throttle(RUN(c)))
        return;
    submitted(events.perf_submit(ctx, e, bounded(size, sizeof(*e))));
}

#endif
