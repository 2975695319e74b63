// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * syscall_gen: the producer of the drain benchmark. Calls getppid() in a
 * tight loop for a fixed time and counts the calls, so the benchmark knows
 * exactly how many records bench/bpf/drain.bpf.c was asked to produce.
 *
 * It prints its pid as {"pid": N} and then waits for one line on stdin, so the
 * consumer can load the probe with this pid as its filter and attach it before
 * the first counted call. It then loops for SECONDS and prints
 *   {"calls": N, "seconds": S, "rate": R}
 * The clock is read every 256 calls (vDSO, no syscall); the loop makes no
 * other syscall, so every getppid call is one traced event.
 *
 * Build: gcc -O2 -o syscall_gen syscall_gen.c
 * Usage: syscall_gen SECONDS
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double seconds, start, end, stop;
	unsigned long calls = 0;
	char line[64];

	if (argc != 2 || (seconds = atof(argv[1])) <= 0) {
		fprintf(stderr, "usage: syscall_gen SECONDS\n");
		return 2;
	}
	printf("{\"pid\": %d}\n", (int)getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;

	start = now_s();
	stop = start + seconds;
	do {
		for (int i = 0; i < 256; i++)
			syscall(SYS_getppid);
		calls += 256;
	} while (now_s() < stop);
	end = now_s();

	printf("{\"calls\": %lu, \"seconds\": %.6f, \"rate\": %.1f}\n", calls, end - start,
	       calls / (end - start));
	return 0;
}
