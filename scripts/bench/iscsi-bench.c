/* A small iSCSI benchmark client on libiscsi (Debian libiscsi-dev): keeps DEPTH commands in
 * flight on one session for SECONDS and prints "iops mbps". libiscsi's own iscsi-perf only
 * reads; this drives reads and writes the same way, so both targets meet the same client.
 *
 *   iscsi-bench URL randread|randwrite|seqread BLOCK_BYTES DEPTH SECONDS [SPAN_MIB]
 *
 * Random jobs pick block-aligned offsets over the first 1 GiB of the LUN (or all of it when
 * smaller, or the first SPAN_MIB MiB); sequential reads wrap around at the end. Any failed command aborts the run. */
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum job { RANDREAD, RANDWRITE, SEQREAD };

struct bench {
	struct iscsi_context *iscsi;
	int lun;
	enum job job;
	uint32_t block;      /* bytes per command */
	uint64_t span;       /* blocks of 512 bytes commands may touch */
	uint64_t next_lba;   /* sequential position */
	unsigned char *data; /* what writes send */
	uint64_t done, inflight;
	int stop, failed;
	uint64_t rng;
};

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t next_random(struct bench *b) {
	b->rng ^= b->rng << 13;
	b->rng ^= b->rng >> 7;
	b->rng ^= b->rng << 17;
	return b->rng;
}

static void issue(struct bench *b);

static void done_cb(struct iscsi_context *iscsi, int status, void *command_data, void *private_data) {
	struct bench *b = private_data;
	struct scsi_task *task = command_data;
	(void)iscsi;
	if (status != SCSI_STATUS_GOOD) {
		fprintf(stderr, "iscsi-bench: a command failed: %s\n", iscsi_get_error(b->iscsi));
		b->failed = 1;
	}
	scsi_free_scsi_task(task);
	b->inflight--;
	b->done++;
	if (!b->stop && !b->failed)
		issue(b);
}

static void issue(struct bench *b) {
	uint32_t blocks = b->block / 512;
	uint64_t lba;
	if (b->job == SEQREAD) {
		if (b->next_lba + blocks > b->span)
			b->next_lba = 0;
		lba = b->next_lba;
		b->next_lba += blocks;
	} else {
		lba = next_random(b) % (b->span / blocks) * blocks;
	}
	struct scsi_task *t;
	if (b->job == RANDWRITE)
		t = iscsi_write16_task(b->iscsi, b->lun, lba, b->data, b->block, 512, 0, 0, 0, 0, 0, done_cb, b);
	else
		t = iscsi_read16_task(b->iscsi, b->lun, lba, b->block, 512, 0, 0, 0, 0, 0, done_cb, b);
	if (t == NULL) {
		fprintf(stderr, "iscsi-bench: cannot queue a command: %s\n", iscsi_get_error(b->iscsi));
		b->failed = 1;
		return;
	}
	b->inflight++;
}

int main(int argc, char **argv) {
	if (argc != 6 && argc != 7) {
		fprintf(stderr, "usage: iscsi-bench URL randread|randwrite|seqread BLOCK_BYTES DEPTH SECONDS [SPAN_MIB]\n");
		return 2;
	}
	struct bench b = {0};
	b.job = !strcmp(argv[2], "randwrite") ? RANDWRITE : !strcmp(argv[2], "seqread") ? SEQREAD : RANDREAD;
	b.block = (uint32_t)atoi(argv[3]);
	int depth = atoi(argv[4]);
	double seconds = atof(argv[5]);
	b.rng = 0x9e3779b97f4a7c15ull;
	b.iscsi = iscsi_create_context("iqn.2024-01.lan.bench:client");
	struct iscsi_url *url = iscsi_parse_full_url(b.iscsi, argv[1]);
	if (url == NULL) {
		fprintf(stderr, "iscsi-bench: %s\n", iscsi_get_error(b.iscsi));
		return 1;
	}
	iscsi_set_session_type(b.iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(b.iscsi, ISCSI_HEADER_DIGEST_NONE);
	if (iscsi_full_connect_sync(b.iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "iscsi-bench: login failed: %s\n", iscsi_get_error(b.iscsi));
		return 1;
	}
	b.lun = url->lun;
	struct scsi_task *cap = iscsi_readcapacity16_sync(b.iscsi, b.lun);
	struct scsi_readcapacity16 *rc = cap ? scsi_datain_unmarshall(cap) : NULL;
	if (rc == NULL) {
		fprintf(stderr, "iscsi-bench: READ CAPACITY(16) failed\n");
		return 1;
	}
	b.span = rc->returned_lba + 1;
	if (b.span > (1ull << 21))
		b.span = 1ull << 21; /* 1 GiB */
	if (argc == 7 && (uint64_t)atoll(argv[6]) * 2048 < b.span)
		b.span = (uint64_t)atoll(argv[6]) * 2048;
	scsi_free_scsi_task(cap);
	b.data = malloc(b.block);
	for (uint32_t i = 0; i < b.block; i++)
		b.data[i] = (unsigned char)(i * 31 + 7);

	for (int i = 0; i < depth; i++)
		issue(&b);
	double start = now(), end = start + seconds;
	while (!b.failed && (b.inflight > 0)) {
		if (!b.stop && now() >= end)
			b.stop = 1;
		struct pollfd pfd = {.fd = iscsi_get_fd(b.iscsi), .events = iscsi_which_events(b.iscsi)};
		if (poll(&pfd, 1, 1000) < 0 || iscsi_service(b.iscsi, pfd.revents) < 0) {
			fprintf(stderr, "iscsi-bench: %s\n", iscsi_get_error(b.iscsi));
			return 1;
		}
	}
	double elapsed = now() - start;
	if (b.failed)
		return 1;
	printf("%.0f %.1f\n", b.done / elapsed, b.done * (double)b.block / elapsed / 1e6);
	iscsi_logout_sync(b.iscsi);
	iscsi_destroy_context(b.iscsi);
	return 0;
}
