/* A fixed C loop for the suite's CPU calibration: prints the CPU seconds it took.
 * usage: calibrate [ITERATIONS] (default 200000000) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000000L;
    struct timespec a, b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    volatile unsigned long long sink;
    unsigned long long x = 88172645463325252ULL, acc = 0;
    for (long i = 0; i < n; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; acc += x & 0xff; }
    sink = acc;
    (void)sink;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    printf("%.4f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
