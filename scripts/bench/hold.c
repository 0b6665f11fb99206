/* Initiators that keep working through a restart of the target, on libiscsi (Debian
 * libiscsi-dev): N PCs, each a thread with its own session to its own target, write 4 KiB
 * at a random place in the first 64 MiB, SYNCHRONIZE CACHE, and read it back, over and over
 * (or the whole disk, if smaller) for SECONDS. libiscsi's own reconnect is turned off: a connection that breaks fails its
 * command and counts as an error, as it would show in an OS's log. Every PC logs in first;
 * then the file READY is made. Prints "rounds errors mismatches longest_ms": the rounds done,
 * the commands that failed, the read-backs that differed from what was written, and the
 * longest round (write + sync + read) any PC saw: the pause a restart costs.
 *
 *   hold URL_PREFIX FIRST N LUN SECONDS READY
 *
 * PC i (FIRST <= i < FIRST + N) logs in to URL_PREFIX%03d/LUN, e.g.
 * iscsi://127.0.0.1:3260/iqn.2024-01.lan.hold:pc-%03d gives ...:pc-001/0, from a loopback
 * address of its own, 127.0.<i / 250 + 1>.<i % 250 + 1>, as the PCs of a room each have theirs
 * (a target caps the sessions of one address). */
#include "pcs.h"
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 4096
#define SPAN_BLOCKS (1024 * 1024 * 1024 / BLOCK)

static const char *prefix;
static int lun;
static double seconds;
static int logged_in, total;
static long rounds, errors, mismatches;
static double longest;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;

static int ok(struct scsi_task *t) {
	int good = t && t->status == SCSI_STATUS_GOOD;
	if (t)
		scsi_free_scsi_task(t);
	return good;
}

static void *pc(void *arg) {
	int n = (int)(intptr_t)arg;
	use_pc_source(n);
	char url[512], initiator[128];
	snprintf(url, sizeof url, "%s%03d/%d", prefix, n, lun);
	snprintf(initiator, sizeof initiator, "iqn.2024-01.lan.hold:init-%03d", n);
	struct iscsi_context *c = iscsi_create_context(initiator);
	struct iscsi_url *u = c ? iscsi_parse_full_url(c, url) : NULL;
	int up = 0;
	if (u) {
		iscsi_set_targetname(c, u->target);
		iscsi_set_session_type(c, ISCSI_SESSION_NORMAL);
		iscsi_set_header_digest(c, ISCSI_HEADER_DIGEST_NONE);
		iscsi_set_noautoreconnect(c, 1);
		up = iscsi_full_connect_sync(c, u->portal, u->lun) == 0;
	}
	if (!up)
		fprintf(stderr, "hold: pc-%03d: no login: %s\n", n, c ? iscsi_get_error(c) : "");
	pthread_mutex_lock(&lock);
	logged_in++;
	if (!up)
		errors++;
	pthread_cond_broadcast(&changed);
	while (logged_in < total)
		pthread_cond_wait(&changed, &lock);
	pthread_mutex_unlock(&lock);
	if (!up)
		return NULL;
	uint64_t span = SPAN_BLOCKS;
	struct scsi_task *cap = iscsi_readcapacity16_sync(c, u->lun);
	struct scsi_readcapacity16 *rc = cap && cap->status == SCSI_STATUS_GOOD ? scsi_datain_unmarshall(cap) : NULL;
	if (rc && (rc->returned_lba + 1) * rc->block_length / BLOCK < span)
		span = (rc->returned_lba + 1) * rc->block_length / BLOCK;
	if (cap)
		scsi_free_scsi_task(cap);
	uint64_t seed = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n;
	unsigned char out[BLOCK], in[BLOCK];
	long mine = 0, bad = 0, differ = 0;
	double worst = 0, end = now() + seconds;
	while (now() < end && bad == 0) {
		uint64_t lba = xorshift(&seed) % span * (BLOCK / 512);
		for (int i = 0; i < BLOCK; i += 8) {
			uint64_t v = xorshift(&seed);
			memcpy(out + i, &v, 8);
		}
		double t0 = now();
		int wrote = ok(iscsi_write16_sync(c, u->lun, lba, out, BLOCK, 512, 0, 0, 0, 0, 0));
		double t1 = now();
		if (!wrote || !ok(iscsi_synchronizecache10_sync(c, u->lun, 0, 0, 0, 0))) {
			fprintf(stderr, "hold: pc-%03d: write: %s\n", n, iscsi_get_error(c));
			bad++;
			break;
		}
		double t2 = now();
		struct scsi_task *r = iscsi_read16_sync(c, u->lun, lba, BLOCK, 512, 0, 0, 0, 0, 0);
		if (!r || r->status != SCSI_STATUS_GOOD || r->datain.size != BLOCK) {
			fprintf(stderr, "hold: pc-%03d: read: %s\n", n, iscsi_get_error(c));
			bad++;
			if (r)
				scsi_free_scsi_task(r);
			break;
		}
		memcpy(in, r->datain.data, BLOCK);
		scsi_free_scsi_task(r);
		if (memcmp(in, out, BLOCK) != 0) {
			int first_bad = 0;
			while (first_bad < BLOCK && in[first_bad] == out[first_bad])
				first_bad++;
			int zero = 1;
			for (int i = 0; i < BLOCK; i++)
				zero &= in[i] == 0;
			fprintf(stderr, "hold: pc-%03d: what was read back at LBA %llu differs from what was written from byte %d on (%s; write %.1f ms, sync %.1f ms, read %.1f ms)\n",
				n, (unsigned long long)lba, first_bad, zero ? "zeros" : "other data", (t1 - t0) * 1000, (t2 - t1) * 1000, (now() - t2) * 1000);
			differ++;
		}
		double took = now() - t0;
		if (took > worst)
			worst = took;
		mine++;
	}
	iscsi_logout_sync(c);
	iscsi_destroy_url(u);
	iscsi_destroy_context(c);
	pthread_mutex_lock(&lock);
	rounds += mine;
	errors += bad;
	mismatches += differ;
	if (worst > longest)
		longest = worst;
	pthread_mutex_unlock(&lock);
	return NULL;
}

int main(int argc, char **argv) {
	if (argc != 7) {
		fprintf(stderr, "usage: hold URL_PREFIX FIRST N LUN SECONDS READY\n");
		return 2;
	}
	prefix = argv[1];
	int first = atoi(argv[2]);
	total = atoi(argv[3]);
	lun = atoi(argv[4]);
	seconds = atof(argv[5]);
	if (total < 1 || total > 1000 || seconds <= 0) {
		fprintf(stderr, "hold: N must be 1..1000 and SECONDS above 0\n");
		return 2;
	}
	pthread_t *threads = calloc((size_t)total, sizeof *threads);
	if (!threads)
		return 1;
	for (int i = 0; i < total; i++)
		pthread_create(&threads[i], NULL, pc, (void *)(intptr_t)(first + i));
	pthread_mutex_lock(&lock);
	while (logged_in < total)
		pthread_cond_wait(&changed, &lock);
	pthread_mutex_unlock(&lock);
	FILE *f = fopen(argv[6], "w");
	if (f)
		fclose(f);
	for (int i = 0; i < total; i++)
		pthread_join(threads[i], NULL);
	printf("%ld %ld %ld %.1f\n", rounds, errors, mismatches, longest * 1000);
	return errors || mismatches ? 1 : 0;
}
