/* A boot storm on libiscsi (Debian libiscsi-dev): N PCs boot at once, each a thread with its
 * own session to its own target, replaying the same synthetic boot:
 *   - reads: the first READ_MIB MiB of the disk in 1 MiB runs, the runs in one fixed shuffled
 *     order (the same for every PC: they boot the same image), each run read as sixteen
 *     64 KiB commands one after another, as a loader and an OS read their files;
 *   - writes (unless WRITE_MIB is 0): WRITE_MIB MiB as 64 KiB writes at offsets of the PC's
 *     own over the whole disk, one after every few reads, and a SYNCHRONIZE CACHE at the end.
 * One command at a time per PC (a booting OS waits for most of its reads). Every PC logs in
 * first; then the file READY is made and the storm waits for GO to exist, so a caller can
 * measure the server with every PC connected. Prints "last_seconds read_bytes write_bytes".
 *
 *   boot-storm URL_PREFIX FIRST N LUN READ_MIB WRITE_MIB READY GO
 *
 * PC i (FIRST <= i < FIRST + N) logs in to URL_PREFIX%03d/LUN, e.g.
 * iscsi://127.0.0.1:3260/iqn.2024-01.lan.storm:pc-%03d gives ...:pc-001/0, from a loopback
 * address of its own, 127.0.<i / 250 + 1>.<i % 250 + 1>, as the PCs of a room each have theirs
 * (a target may cap the sessions of one address). */
#include "pcs.h"
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK (64 * 1024)
#define RUN (1024 * 1024)

static const char *prefix;
static int lun, read_mib, write_mib;
static const char *ready_file, *go_file;
static int logged_in, failed;
static double last_done, start_time;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static uint32_t *order; /* the runs, in boot order */

struct pc {
	int n;
	pthread_t thread;
};

static void fail(int n, const char *what, struct iscsi_context *c) {
	fprintf(stderr, "boot-storm: pc-%03d: %s: %s\n", n, what, c ? iscsi_get_error(c) : "");
	pthread_mutex_lock(&lock);
	failed = 1;
	pthread_cond_broadcast(&changed);
	pthread_mutex_unlock(&lock);
}

static void *boot(void *arg) {
	struct pc *pc = arg;
	char initiator[128], url_text[512];
	snprintf(initiator, sizeof initiator, "iqn.2024-01.lan.storm:init-%03d", pc->n);
	snprintf(url_text, sizeof url_text, "%s%03d/%d", prefix, pc->n, lun);
	use_pc_source(pc->n);
	struct iscsi_context *c = iscsi_create_context(initiator);
	struct iscsi_url *url = c ? iscsi_parse_full_url(c, url_text) : NULL;
	if (url == NULL) {
		fail(pc->n, "bad URL", c);
		return NULL;
	}
	iscsi_set_session_type(c, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(c, ISCSI_HEADER_DIGEST_NONE);
	if (iscsi_full_connect_sync(c, url->portal, url->lun) != 0) {
		fail(pc->n, "login", c);
		return NULL;
	}
	struct scsi_task *cap = iscsi_readcapacity16_sync(c, lun);
	struct scsi_readcapacity16 *rc = cap ? scsi_datain_unmarshall(cap) : NULL;
	if (rc == NULL) {
		fail(pc->n, "READ CAPACITY(16)", c);
		return NULL;
	}
	uint64_t sectors = rc->returned_lba + 1;
	scsi_free_scsi_task(cap);
	unsigned char *data = malloc(BLOCK);
	memset(data, pc->n & 0xff, BLOCK);

	pthread_mutex_lock(&lock);
	logged_in++;
	pthread_cond_broadcast(&changed);
	while (start_time == 0 && !failed)
		pthread_cond_wait(&changed, &lock);
	pthread_mutex_unlock(&lock);

	uint64_t rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)pc->n << 32);
	int reads = read_mib * (RUN / BLOCK);
	int writes = write_mib * (1024 * 1024 / BLOCK);
	int every = writes ? (reads / writes > 0 ? reads / writes : 1) : 0;
	int written = 0;
	for (int r = 0; r < reads && !failed; r++) {
		uint64_t lba = ((uint64_t)order[r / (RUN / BLOCK)] * RUN + (uint64_t)(r % (RUN / BLOCK)) * BLOCK) / 512;
		struct scsi_task *t = iscsi_read16_sync(c, lun, lba, BLOCK, 512, 0, 0, 0, 0, 0);
		if (t == NULL || t->status != SCSI_STATUS_GOOD) {
			fail(pc->n, "READ(16)", c);
			return NULL;
		}
		scsi_free_scsi_task(t);
		if (every && written < writes && r % every == every - 1) {
			uint64_t at = xorshift(&rng) % (sectors / (BLOCK / 512)) * (BLOCK / 512);
			t = iscsi_write16_sync(c, lun, at, data, BLOCK, 512, 0, 0, 0, 0, 0);
			if (t == NULL || t->status != SCSI_STATUS_GOOD) {
				fail(pc->n, "WRITE(16)", c);
				return NULL;
			}
			scsi_free_scsi_task(t);
			written++;
		}
	}
	if (writes) {
		struct scsi_task *t = iscsi_synchronizecache10_sync(c, lun, 0, 0, 0, 0);
		if (t == NULL || t->status != SCSI_STATUS_GOOD) {
			fail(pc->n, "SYNCHRONIZE CACHE", c);
			return NULL;
		}
		scsi_free_scsi_task(t);
	}
	double done = now();
	pthread_mutex_lock(&lock);
	if (done > last_done)
		last_done = done;
	pthread_mutex_unlock(&lock);
	iscsi_logout_sync(c);
	iscsi_destroy_url(url);
	iscsi_destroy_context(c);
	free(data);
	return NULL;
}

int main(int argc, char **argv) {
	if (argc != 9) {
		fprintf(stderr, "usage: boot-storm URL_PREFIX FIRST N LUN READ_MIB WRITE_MIB READY GO\n");
		return 2;
	}
	prefix = argv[1];
	int first = atoi(argv[2]), n = atoi(argv[3]);
	lun = atoi(argv[4]);
	read_mib = atoi(argv[5]);
	write_mib = atoi(argv[6]);
	ready_file = argv[7];
	go_file = argv[8];
	order = malloc(sizeof *order * read_mib);
	for (int i = 0; i < read_mib; i++)
		order[i] = i;
	uint64_t s = 42;
	for (int i = read_mib - 1; i > 0; i--) {
		int j = xorshift(&s) % (i + 1);
		uint32_t x = order[i];
		order[i] = order[j];
		order[j] = x;
	}
	struct pc *pcs = calloc(n, sizeof *pcs);
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	for (int i = 0; i < n; i++) {
		pcs[i].n = first + i;
		pthread_create(&pcs[i].thread, &attr, boot, &pcs[i]);
	}
	pthread_mutex_lock(&lock);
	while (logged_in < n && !failed)
		pthread_cond_wait(&changed, &lock);
	pthread_mutex_unlock(&lock);
	if (!failed) {
		FILE *f = fopen(ready_file, "w");
		if (f)
			fclose(f);
		while (access(go_file, F_OK) != 0)
			usleep(20000);
	}
	pthread_mutex_lock(&lock);
	start_time = now();
	pthread_cond_broadcast(&changed);
	pthread_mutex_unlock(&lock);
	for (int i = 0; i < n; i++)
		pthread_join(pcs[i].thread, NULL);
	if (failed)
		return 1;
	uint64_t read_bytes = (uint64_t)n * read_mib * RUN;
	uint64_t write_bytes = (uint64_t)n * write_mib * 1024 * 1024;
	printf("%.3f %llu %llu\n", last_done - start_time, (unsigned long long)read_bytes,
	       (unsigned long long)write_bytes);
	return 0;
}
