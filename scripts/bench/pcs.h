/* What the libiscsi benchmark clients (boot-storm.c, hold.c) share: each PC's own loopback
 * source address, a monotonic clock and a small random generator. Included once, by the
 * one .c file of each client. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* The calling PC's source address: libiscsi opens its sockets itself, so connect() is
 * wrapped here to bind them first. */
static __thread in_addr_t source;

int connect(int fd, const struct sockaddr *to, socklen_t len) {
	if (source && to->sa_family == AF_INET) {
		struct sockaddr_in from = {.sin_family = AF_INET, .sin_addr.s_addr = source};
		if (bind(fd, (const struct sockaddr *)&from, sizeof from) != 0)
			return -1;
	}
	return (int)syscall(SYS_connect, fd, to, len);
}

/* PC n's connections leave from 127.0.<n / 250 + 1>.<n % 250 + 1>, as the PCs of a room
 * each have their address (a target may cap the sessions of one address). */
static void use_pc_source(int n) {
	source = htonl((127u << 24) | ((uint32_t)(n / 250 + 1) << 8) | (uint32_t)(n % 250 + 1));
}

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t xorshift(uint64_t *s) {
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}
