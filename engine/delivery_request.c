/* delivery_request: request files for operator actions (delivery_request.h). */
#include "delivery_request.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_HEAD "mxd-request 1\n"

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool dlv_id_parse(const char *s, size_t len, struct dlv_request *out)
{
	if (len != SPOOL_ID_LEN)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < SPOOL_ID_LEN; i++) {
		int h = hexval(s[i]);
		if (h < 0)
			return false;
		v = v << 4 | (uint64_t)h;
		out->id[i] = "0123456789ABCDEF"[h];
	}
	out->id[SPOOL_ID_LEN] = '\0';
	out->core = (unsigned)(v >> 56);
	out->seq24 = (uint32_t)(v >> 32) & 0xffffffu;
	out->offset = (uint32_t)v;
	return true;
}

static int fail(const char **why, const char *w)
{
	*why = w;
	return -1;
}

int dlv_request_parse(const char *text, size_t len, struct dlv_request *out, const char **why)
{
	memset(out, 0, sizeof *out);
	size_t hl = strlen(REQUEST_HEAD);
	if (len > DLV_REQUEST_MAX)
		return fail(why, "request file too long");
	if (len < hl || memcmp(text, REQUEST_HEAD, hl) != 0)
		return fail(why, "not a request file (expected \"mxd-request 1\")");
	const char *p = text + hl, *end = text + len;
	size_t vl;
	if ((size_t)(end - p) > 6 && memcmp(p, "retry ", 6) == 0) {
		out->kind = DLV_REQ_RETRY;
		vl = 6;
	} else if ((size_t)(end - p) > 5 && memcmp(p, "drop ", 5) == 0) {
		out->kind = DLV_REQ_DROP;
		vl = 5;
	} else {
		return fail(why, "unknown request (expected retry or drop)");
	}
	p += vl;
	if ((size_t)(end - p) != SPOOL_ID_LEN + 1 || p[SPOOL_ID_LEN] != '\n')
		return fail(why, "expected a message id and a line end");
	if (!dlv_id_parse(p, SPOOL_ID_LEN, out))
		return fail(why, "bad message id");
	return 0;
}

size_t dlv_request_format(char *out, size_t cap, const struct dlv_request *q)
{
	int n = snprintf(out, cap, REQUEST_HEAD "%s %s\n", q->kind == DLV_REQ_DROP ? "drop" : "retry",
			 q->id);
	return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

size_t dlv_request_records(const struct dlv_replay *r, const struct dlv_message *m,
			   const struct dlv_request *q, uint64_t now, struct dlv_record *out,
			   size_t cap)
{
	static const char retry_text[] = "retry requested by the operator";
	static const char drop_text[] = "dropped by the operator";
	size_t n = 0;
	for (uint32_t i = 0; i < m->nrcpt && n < cap; i++) {
		const struct dlv_rcpt *rc = &r->rcpts[m->first + i];
		if (dlv_rcpt_finished(m, rc))
			continue;
		bool waiting = rc->outcome == DLV_QUEUED || rc->outcome == DLV_DEFERRED;
		if (q->kind == DLV_REQ_RETRY && !waiting)
			continue; /* failed, its DSN still due: nothing to retry */
		struct dlv_record *d = &out[n++];
		memset(d, 0, sizeof *d);
		d->msg_offset = m->offset;
		d->rcpt = i;
		d->attempts = rc->attempts;
		d->at = now;
		if (q->kind == DLV_REQ_RETRY) {
			d->outcome = DLV_DEFERRED;
			d->next_try = now;
			d->text = retry_text;
			d->text_len = sizeof retry_text - 1;
		} else {
			d->outcome = DLV_DROPPED;
			d->text = drop_text;
			d->text_len = sizeof drop_text - 1;
		}
	}
	return n;
}

/* ---- files ---- */

static int fsync_path(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = fsync(fd);
	int saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

static int ensure_dir(const char *path, const char *parent)
{
	if (mkdir(path, 0700) == 0)
		return fsync_path(parent, O_RDONLY | O_DIRECTORY);
	return errno == EEXIST ? 0 : -1;
}

int dlv_request_write(const char *spool_dir, const struct dlv_request *q, const char **what)
{
	char core_dir[PATH_MAX], dir[PATH_MAX], tmp[PATH_MAX], final[PATH_MAX];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	static unsigned counter;
	unsigned long long ns = (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
	if ((size_t)snprintf(core_dir, sizeof core_dir, "%s/%02u", spool_dir, q->core) >= sizeof core_dir ||
	    (size_t)snprintf(dir, sizeof dir, "%s/" DLV_REQUEST_DIR, core_dir) >= sizeof dir ||
	    (size_t)snprintf(tmp, sizeof tmp, "%s/.%020llu.%ld.%u.tmp", dir, ns, (long)getpid(),
			     counter) >= sizeof tmp ||
	    (size_t)snprintf(final, sizeof final, "%s/%020llu.%ld.%u.req", dir, ns, (long)getpid(),
			     counter) >= sizeof final) {
		*what = "path too long";
		errno = ENAMETOOLONG;
		return -1;
	}
	counter++;
	char text[DLV_REQUEST_MAX];
	size_t n = dlv_request_format(text, sizeof text, q);
	struct stat st;
	if (stat(core_dir, &st) < 0) {
		*what = "the core's spool directory";
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		*what = "the core's spool directory";
		errno = ENOTDIR;
		return -1;
	}
	if (ensure_dir(dir, core_dir) < 0) {
		*what = "creating the requests directory";
		return -1;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		*what = "writing the request file";
		return -1;
	}
	ssize_t w = write(fd, text, n);
	if (w != (ssize_t)n || fsync(fd) < 0) {
		int saved = w >= 0 && w != (ssize_t)n ? EIO : errno;
		close(fd);
		unlink(tmp);
		errno = saved;
		*what = "writing the request file";
		return -1;
	}
	close(fd);
	if (rename(tmp, final) < 0) {
		int saved = errno;
		unlink(tmp);
		errno = saved;
		*what = "renaming the request file";
		return -1;
	}
	if (fsync_path(dir, O_RDONLY | O_DIRECTORY) < 0) {
		*what = "fsyncing the requests directory";
		return -1;
	}
	return 0;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_request_name(const char *name)
{
	size_t n = strlen(name);
	return name[0] != '.' && n > 4 && strcmp(name + n - 4, ".req") == 0;
}

/* The names of the request files in dir, sorted; NULL-free array. */
static int list_requests(const char *dir, char ***names, size_t *n)
{
	*names = NULL;
	*n = 0;
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -1;
	size_t cap = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (!is_request_name(de->d_name))
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 16;
			char **p = realloc(*names, cap * sizeof *p);
			if (!p)
				goto oom;
			*names = p;
		}
		if (!((*names)[*n] = strdup(de->d_name)))
			goto oom;
		(*n)++;
	}
	closedir(d);
	if (*n)
		qsort(*names, *n, sizeof **names, cmp_names);
	return 0;
oom:
	closedir(d);
	for (size_t i = 0; i < *n; i++)
		free((*names)[i]);
	free(*names);
	*names = NULL;
	*n = 0;
	errno = ENOMEM;
	return -1;
}

/* Read a request file (at most DLV_REQUEST_MAX + 1 bytes). */
static ssize_t read_request(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return -1;
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		errno = EINVAL;
		return -1;
	}
	size_t got = 0;
	while (got < cap) {
		ssize_t k = read(fd, buf + got, cap - got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		got += (size_t)k;
	}
	close(fd);
	return (ssize_t)got;
}

long dlv_requests_take(const char *core_dir, dlv_request_fn fn, void *ctx, struct buf *log)
{
	char dir[PATH_MAX];
	if ((size_t)snprintf(dir, sizeof dir, "%s/" DLV_REQUEST_DIR, core_dir) >= sizeof dir) {
		errno = ENAMETOOLONG;
		return -1;
	}
	char **names;
	size_t n;
	if (list_requests(dir, &names, &n) < 0)
		return -1;
	long done = 0;
	bool changed = false;
	for (size_t i = 0; i < n; i++) {
		char path[PATH_MAX], buf[DLV_REQUEST_MAX + 1];
		if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= sizeof path)
			continue;
		ssize_t len = read_request(path, buf, sizeof buf);
		if (len < 0) {
			buf_printf(log, "delivery: request %s: %s\n", path, strerror(errno));
			continue;
		}
		struct dlv_request q;
		const char *why;
		if (dlv_request_parse(buf, (size_t)len, &q, &why) < 0) {
			char bad[PATH_MAX + 8];
			snprintf(bad, sizeof bad, "%s.bad", path);
			buf_printf(log, "delivery: request %s: %s; renamed to %s.bad\n", path, why,
				   names[i]);
			if (rename(path, bad) == 0)
				changed = true;
			continue;
		}
		if (fn(ctx, &q) != 0)
			continue;
		if (unlink(path) == 0) {
			changed = true;
			done++;
		}
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	if (changed)
		fsync_path(dir, O_RDONLY | O_DIRECTORY);
	return done;
}
