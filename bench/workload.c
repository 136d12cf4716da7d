/* The bench's workload: open+close of one unique path N times, as fast as it can.
 *
 * usage: workload N PATH [MARKER]
 * The path need not exist: open() fails with ENOENT, which is what a storm of
 * probing opens looks like and keeps the filesystem out of the measurement; the
 * tracers see every attempt (opensnoop reports failures too). MARKER, if given,
 * is opened once first and then the program waits for a line on stdin, so the
 * bench can tell when a tracer is live before the storm starts.
 * Prints the elapsed nanoseconds of the N opens on stdout.
 *
 * usage: workload getppid N
 * N getppid() calls instead: a syscall no tracer here traces, to measure what a
 * tracer costs the rest of the system (a program on every syscall's exit runs
 * for these too).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s N PATH\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "getppid") == 0) {
        long n = atol(argv[2]);
        long long t0 = now_ns();
        for (long i = 0; i < n; i++)
            syscall(SYS_getppid);       /* not glibc's wrapper: never cached */
        printf("%lld\n", now_ns() - t0);
        return 0;
    }
    long n = atol(argv[1]);
    const char *path = argv[2];
    long long t0 = now_ns();
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0)
            close(fd);
    }
    long long t1 = now_ns();
    printf("%lld\n", t1 - t0);
    return 0;
}
