/* Target of tests/host/test_probe.py: functions with known arguments and
 * results, probed by uprobes. Built by the tests with gcc into tmp_path.
 *
 * usage: probe_target TAG ITERATIONS NAP_US MISSING_PATH
 * Waits for a line on stdin (so the tracer is live first), then calls every
 * function ITERATIONS times, and stays alive a little so that user addresses
 * can still be symbolized. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROBED __attribute__((noinline, noipa, used))

volatile long sink;

PROBED long f6(long a, int b, short c, char d, long e, int f) { return a + b + c + d + e + f; }
PROBED long three(long a, long b, const char *s) { return a + b + (long)strlen(s); }
PROBED int g(const char *s) { return (int)strlen(s); }
PROBED int caller_of_g(const char *s) { return g(s) + 1; }
PROBED long fails(void) { return -2; }                  /* like a kernel -ENOENT */
PROBED int fails_int(void) { return -13; }              /* an int: -EACCES */
PROBED long echo(long x) { return x; }
PROBED void nap(int us) { usleep(us); }

int main(int argc, char **argv)
{
    char tag[128], other[128];
    if (argc != 5)
        return 2;
    /* on the stack, so the pages are present when a probe reads them */
    snprintf(tag, sizeof tag, "%s", argv[1]);
    snprintf(other, sizeof other, "other-%s", argv[1]);
    int n = atoi(argv[2]), us = atoi(argv[3]);
    if (getchar() == EOF)
        return 3;
    for (int i = 0; i < n; i++) {
        sink = f6(-1, -2, -3, -4, -5, -6);
        sink = three(-7, 8, tag);
        sink = caller_of_g(tag);
        sink = g(other);
        sink = fails();
        sink = fails_int();
        sink = echo(-5);
        sink = echo(5);
        int fd = open(argv[4], O_RDONLY);
        if (fd >= 0)
            close(fd);
        nap(us);
    }
    usleep(400000);
    return 0;
}
