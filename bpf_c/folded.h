/* --folded: stacks kept by their content. A stack trace map (BPF_STACK_TRACE)
 * hashes a stack into one of its buckets, and without BPF_F_REUSE_STACKID a
 * second stack landing in a taken bucket is refused (EEXIST): with a thousand
 * distinct stacks dozens would be lost, and with the flag, counted under another
 * stack's frames. Here a stack is copied (bpf_get_stack), named by a 63-bit hash of
 * its frames, and stored under that name once; a count keyed by the name is then
 * the count of those very frames (two stacks sharing a 63-bit name: ~2^-63 a pair).
 *
 * Defines: FOLDED_STACKS (stacks kept; past them a stack is ENOSPC), FOLDED_SEED (a
 * random value per run: the names of stacks a traced program shapes cannot be chosen
 * to collide with another stack's), FOLDED_SCRATCH (scratch copies: one per context
 * that can interrupt another's program on a CPU, e.g. irq's kinds).
 */
#ifndef BPFPROBES_FOLDED_H
#define BPFPROBES_FOLDED_H

#define FOLDED_DEPTH 127            /* the kernel's PERF_MAX_STACK_DEPTH */
#ifndef FOLDED_SEED
#define FOLDED_SEED 0
#endif
#ifndef FOLDED_SCRATCH
#define FOLDED_SCRATCH 1
#endif
#define FOLDED_ENOSPC 28

struct folded_stack {
    u64 ip[FOLDED_DEPTH];           /* innermost first; 0 after the last frame */
};

BPF_PERCPU_ARRAY(folded_scratch, struct folded_stack, FOLDED_SCRATCH);
BPF_HASH(folded_stacks, u64, struct folded_stack, FOLDED_STACKS);

/* The stack's name (>= 0), or -errno where none could be taken or kept. `flags`:
 * 0 for the kernel stack, BPF_F_USER_STACK for the user one; `slot`: this
 * context's scratch copy (a raw tracepoint's program may run in an interrupt while
 * another program is between its copy and its store on that CPU). */
static __always_inline s64 folded_stack(void *ctx, u64 flags, u32 slot)
{
    struct folded_stack *s = folded_scratch.lookup(&slot);
    if (!s)
        return -FOLDED_ENOSPC;
    long n = bpf_get_stack(ctx, s->ip, sizeof(s->ip), flags);
    if (n < 0)
        return n;
    u32 frames = (u32)n / sizeof(u64);
    /* FNV-1a's basis (and the run's seed) and prime, a word at a time */
    u64 h = 0xcbf29ce484222325ULL ^ (u64)FOLDED_SEED;
    for (u32 i = 0; i < FOLDED_DEPTH; i++) {
        if (i >= frames)
            s->ip[i] = 0;                   /* the rest of the copy is the last stack's */
        h = (h ^ s->ip[i]) * 0x100000001b3ULL;
    }
    h >>= 1;                                /* >= 0 as s64: apart from -errno */
    if (!folded_stacks.lookup(&h) && folded_stacks.insert(&h, s) < 0 && !folded_stacks.lookup(&h))
        return -FOLDED_ENOSPC;              /* full (another CPU may have stored it meanwhile) */
    return (s64)h;
}

#endif
