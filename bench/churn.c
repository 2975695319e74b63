// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * churn: a loopback TCP connect/close generator for jalki's benchmarks.
 *
 * A server thread accepts on 127.0.0.1:PORT, reads each connection to EOF and
 * closes it. The main thread loops: socket -> connect -> write N bytes ->
 * close, for a fixed time or a fixed count. The client stays at most WINDOW
 * connections ahead of the server so the accept queue never overflows (an
 * overflow drops SYNs and turns into 1 s retransmit stalls, which would
 * measure the backlog, not the tracer). Before it reports, it waits until the
 * server has closed every accepted connection, so both sides' close
 * transitions have happened when the process exits.
 *
 * With -L every client socket gets SO_LINGER {on, 0 s} before close(), so
 * close() aborts the connection: the client goes ESTABLISHED -> CLOSE and
 * sends a RST instead of a FIN (no FIN_WAIT/TIME_WAIT), and the server
 * receives that RST (its read() ends with ECONNRESET). Many real clients and
 * load balancers close this way.
 *
 * With -a N (N > 1) the client spreads its connections over the destination
 * addresses 127.0.0.1 .. 127.0.0.N and the server listens on 0.0.0.0 (use it
 * inside a private network namespace). Each destination has its own 4-tuple
 * space, so the client is not capped by ephemeral-port reuse: on loopback a
 * port whose previous connection is in TIME_WAIT is reused only after
 * tcp_tw_reuse's 1 s delay, which caps one destination at roughly
 * (ports in ip_local_port_range / 2) connections/s (~14 k/s by default).
 *
 * Prints one JSON object on stdout:
 *   {"connections", "failed", "first_errno", "accepted", "seconds", "rate",
 *    "client_pid", "port", "bytes", "addrs", "linger_rst"}
 * connections = completed connect+write+close cycles; rate = connections/s.
 *
 * Build: gcc -O2 -pthread -o churn churn.c
 * Usage: churn [-s SECONDS | -n COUNT] [-b BYTES] [-p PORT] [-w WINDOW] [-a ADDRS] [-L]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int listen_fd = -1;
static atomic_long accepted;
static atomic_long server_closed;
static atomic_int stopping;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *serve(void *arg)
{
	char buf[4096];

	(void)arg;
	for (;;) {
		int fd = accept(listen_fd, NULL, NULL);

		if (fd < 0) {
			if (atomic_load(&stopping))
				return NULL;
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("churn: accept");
			return NULL;
		}
		atomic_fetch_add(&accepted, 1);
		while (read(fd, buf, sizeof(buf)) > 0)
			;
		close(fd);
		atomic_fetch_add(&server_closed, 1);
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: churn [-s SECONDS | -n COUNT] [-b BYTES] [-p PORT] [-w WINDOW] [-a ADDRS] [-L]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	double seconds = 5.0, start, end;
	long count = 0, connections = 0, failed = 0, window = 256;
	int bytes = 64, port = 0, addrs = 1, first_errno = 0, opt, one = 1, linger_rst = 0;
	struct linger abort_close = { .l_onoff = 1, .l_linger = 0 };
	struct sockaddr_in addr, dests[255];
	socklen_t addr_len = sizeof(addr);
	pthread_t server;
	char *payload;

	while ((opt = getopt(argc, argv, "s:n:b:p:w:a:L")) != -1) {
		switch (opt) {
		case 's': seconds = atof(optarg); break;
		case 'n': count = atol(optarg); break;
		case 'b': bytes = atoi(optarg); break;
		case 'p': port = atoi(optarg); break;
		case 'w': window = atol(optarg); break;
		case 'a': addrs = atoi(optarg); break;
		case 'L': linger_rst = 1; break;
		default: usage();
		}
	}
	if (seconds <= 0 || count < 0 || bytes < 0 || window < 1 || addrs < 1 || addrs > 255)
		usage();
	payload = calloc(1, bytes ? bytes : 1);

	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(addrs > 1 ? INADDR_ANY : INADDR_LOOPBACK);
	addr.sin_port = htons(port);
	listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	if (listen_fd < 0 || setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(listen_fd, (struct sockaddr *)&addr, sizeof(addr)) || listen(listen_fd, 4096) ||
	    getsockname(listen_fd, (struct sockaddr *)&addr, &addr_len)) {
		perror("churn: listen");
		return 1;
	}
	port = ntohs(addr.sin_port);
	for (int i = 0; i < addrs; i++) {
		dests[i] = addr;
		dests[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK + i);
	}
	if (pthread_create(&server, NULL, serve, NULL)) {
		fprintf(stderr, "churn: pthread_create failed\n");
		return 1;
	}

	start = now_s();
	end = start + seconds;
	for (;;) {
		struct sockaddr_in *dest;
		int fd;

		if (count ? connections + failed >= count : now_s() >= end)
			break;
		while (connections - atomic_load(&server_closed) >= window)
			sched_yield();
		dest = &dests[(connections + failed) % addrs];
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 ||
		    (linger_rst && setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_close, sizeof(abort_close))) ||
		    connect(fd, (struct sockaddr *)dest, sizeof(*dest)) ||
		    (bytes && write(fd, payload, bytes) != bytes)) {
			if (!first_errno)
				first_errno = errno;
			failed++;
			if (fd >= 0)
				close(fd);
			continue;
		}
		close(fd);
		connections++;
	}
	end = now_s();

	/* Let the server close everything it accepted (bounded wait). */
	for (int i = 0; i < 5000 && atomic_load(&server_closed) < connections; i++)
		usleep(1000);
	atomic_store(&stopping, 1);
	shutdown(listen_fd, SHUT_RDWR);
	close(listen_fd);

	printf("{\"connections\": %ld, \"failed\": %ld, \"first_errno\": %d, \"accepted\": %ld, "
	       "\"server_closed\": %ld, \"seconds\": %.6f, \"rate\": %.1f, \"client_pid\": %d, "
	       "\"port\": %d, \"bytes\": %d, \"addrs\": %d, \"linger_rst\": %d}\n",
	       connections, failed, first_errno, atomic_load(&accepted), atomic_load(&server_closed),
	       end - start, connections / (end - start), (int)getpid(), port, bytes, addrs, linger_rst);
	free(payload);
	return 0;
}
