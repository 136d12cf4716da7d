/* Target of the USDT tests: probes built with <sys/sdt.h> (Debian's
 * systemtap-sdt-dev), fired a known number of times with known arguments.
 *
 * usage: usdt_target N TAG
 * Waits for a line on stdin (the tracer is live), then fires
 *   bpfp:tick(i, -i, TAG, 42)   N times: a register, a negative int, a string, a constant
 *   bpfp:twice(i)               N times from each of two sites (an inlined copy each)
 *   bpfp:guarded(i)             N times, but only while its semaphore is raised
 * and prints how many times it saw the semaphore raised. */
#define _SDT_HAS_SEMAPHORES 1
#include <stdio.h>
#include <stdlib.h>
#include <sys/sdt.h>

/* every probe has a semaphore (sdt.h's rule once _SDT_HAS_SEMAPHORES is set); only
 * `guarded` is tested before it fires */
#define SEMAPHORE(name) unsigned short bpfp_##name##_semaphore __attribute__((section(".probes"), used))
SEMAPHORE(tick);
SEMAPHORE(twice);
SEMAPHORE(guarded);

static inline __attribute__((always_inline)) void twice(long i)
{
    DTRACE_PROBE1(bpfp, twice, i);
}

__attribute__((noinline)) void first(long i) { twice(i); }
__attribute__((noinline)) void second(long i) { twice(i * 2); }

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    long n = atol(argv[1]);
    const char *tag = argv[2];
    if (getchar() == EOF)
        return 3;
    long raised = 0;
    for (long i = 0; i < n; i++) {
        int neg = (int)-i;
        DTRACE_PROBE4(bpfp, tick, i, neg, tag, 42);
        first(i);
        second(i);
        if (bpfp_guarded_semaphore) {
            raised++;
            DTRACE_PROBE1(bpfp, guarded, i);
        }
    }
    printf("%ld\n", raised);
    return 0;
}
