/* conn_tls: the TLS layer under a connection.
 *
 * The session never sees TLS. Until the handshake ends, ciphertext from the
 * ring goes into BoringSSL through a memory BIO and whatever BoringSSL
 * writes is sent as is. After it, either BoringSSL keeps doing the records
 * (the userspace path), or the keys and sequence numbers go to the kernel
 * (kTLS) and the ring reads and writes plaintext.
 *
 * Only whole records are handed to BoringSSL: it reads exactly one record
 * at a time from its BIO, so this way a partial record is always in
 * c->tls_in, where the switch to kTLS can complete it before the kernel
 * takes over the receive side. */
#include <assert.h>
#include <errno.h>
#include <linux/tls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>

#include "conn.h"
#include "core.h"
#include "ktls.h"
#include "log.h"
#include "tls.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

#define TLS_RECORD_HEADER 5
/* Largest TLS 1.2 ciphertext record (RFC 5246 6.2.3) plus its header. */
#define TLS_RECORD_MAX (TLS_RECORD_HEADER + 16384 + 2048)
#define TLS_CONTENT_ALERT 21
#define TLS_CONTENT_HANDSHAKE 22
#define TLS_HANDSHAKE_KEY_UPDATE 24
#define TLS_ALERT_CLOSE_NOTIFY 0

static _Thread_local char plaintext[16384];

static const struct snapshot *conn_snapshot(const struct conn *c)
{
	return c->view->snap;
}

const char *conn_tls_path(const struct conn *c)
{
	if (c->tls_used_ktls)
		return "ktls";
	return c->peer.tls ? "userspace" : "none";
}

void conn_tls_free(struct conn *c)
{
	SSL_free(c->ssl);
	c->ssl = NULL;
	buf_free(&c->tls_in);
	free(c->ktls_fill);
	c->ktls_fill = NULL;
}

static void tls_fail(struct conn *c, const char *what)
{
	char why[256];
	tls_last_error(why, sizeof why);
	log_info("session=%s client=%s TLS %s failed: %s", c->sid, c->peer.addr_str, what, why);
	conn_close_after_flush(c, "tls error"); /* an alert BoringSSL queued still goes out */
}

/* Watches for TLS 1.3 KeyUpdate messages. The traffic secrets handed to
 * the kernel are the first ones (keylog's *_TRAFFIC_SECRET_0): once
 * BoringSSL has moved to a later generation in either direction, the
 * session must stay on the userspace path. */
static void watch_key_updates(int write_p, int version, int content_type, const void *buf,
			      size_t len, SSL *ssl, void *arg)
{
	(void)write_p;
	(void)version;
	(void)ssl;
	struct conn *c = arg;
	if (content_type == TLS_CONTENT_HANDSHAKE && len > 0 &&
	    ((const unsigned char *)buf)[0] == TLS_HANDSHAKE_KEY_UPDATE)
		c->tls_key_updated = true;
}

int conn_tls_start(struct conn *c, bool implicit)
{
	const struct snapshot *snap = conn_snapshot(c);
	const struct conf_listener *l = &snap->conf->listeners[c->listener];
	c->ssl = tls_server_session(snap->tls, l->pki, (l->flags & CONF_LISTEN_VERIFY) != 0);
	BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
	if (!c->ssl || !rbio || !wbio) {
		BIO_free(rbio);
		BIO_free(wbio);
		tls_fail(c, "set-up");
		conn_abort(c, "tls set-up failed");
		return -1;
	}
	SSL_set_bio(c->ssl, rbio, wbio);
	SSL_set_accept_state(c->ssl);
	if (snap->ktls) {
		SSL_set_msg_callback(c->ssl, watch_key_updates);
		SSL_set_msg_callback_arg(c->ssl, c);
	}
	buf_init(&c->tls_in, 0);
	c->tls_implicit = implicit;
	c->tls_mode = CONN_TLS_HANDSHAKE;
	/* The 220 for STARTTLS (and any reply before it) is still plaintext:
	 * it leads the wire, ahead of everything BoringSSL will write. */
	if (c->out.len > 0) {
		metrics_count_replies(&c->core->metrics, c->out.data, c->out.len);
		BIO_write(wbio, c->out.data, (int)c->out.len);
		buf_reset(&c->out);
	}
	return 0;
}

/* ---- after the handshake ---- */

static void record_peer_facts(struct conn *c)
{
	struct smtp_peer *p = &c->peer;
	p->tls = true;
	snprintf(p->tls_version, sizeof p->tls_version, "%s", tls_version_name(c->ssl));
	snprintf(p->tls_cipher, sizeof p->tls_cipher, "%s", tls_cipher_name(c->ssl));
	char name[sizeof p->auth_user];
	/* Only a listener that asks for certificates trusts them: a session
	 * resumed from a "verify" listener's ticket carries the old peer
	 * certificate, which must not authenticate anywhere else. */
	bool trusts_certificates = conn_snapshot(c)->conf->listeners[c->listener].flags &
				   CONF_LISTEN_VERIFY;
	if (trusts_certificates && tls_client_verified(c->ssl, name, sizeof name)) {
		/* a verified client certificate may relay (the seed's
		 * certificate-based relaying), as AUTH would allow */
		p->authenticated = true;
		snprintf(p->auth_user, sizeof p->auth_user, "%s", name);
	}
	log_info("session=%s tls established client=%s version=%s cipher=%s%s%s%s", c->sid,
		 p->addr_str, p->tls_version, p->tls_cipher, SSL_session_reused(c->ssl) ? " resumed" : "",
		 p->authenticated ? " client_cert=" : "", p->authenticated ? p->auth_user : "");
}

static void decrypt_records(struct conn *c)
{
	while (!c->closing) {
		int n = SSL_read(c->ssl, plaintext, sizeof plaintext);
		if (n > 0) {
			conn_input(c, plaintext, (size_t)n);
			continue;
		}
		int err = SSL_get_error(c->ssl, n);
		if (err == SSL_ERROR_WANT_READ)
			return;
		if (err == SSL_ERROR_ZERO_RETURN) {
			log_info("session=%s client sent close_notify", c->sid);
			conn_close_after_flush(c, "tls close");
			return;
		}
		tls_fail(c, "read");
		return;
	}
}

static void handshake_done(struct conn *c)
{
	record_peer_facts(c);
	METRICS_INC(c->core->metrics.tls_ok[metrics_tls_version(c->peer.tls_version)]);
	/* BoringSSL queues TLS 1.3 NewSessionTickets with the handshake; a
	 * zero-length write makes sure they are in the BIO before the write
	 * sequence number is read for the kernel. */
	SSL_write(c->ssl, "", 0);
	if (conn_snapshot(c)->ktls && ktls_cipher_supported(c->ssl))
		c->tls_mode = CONN_TLS_KTLS_SWITCH;
	else
		c->tls_mode = CONN_TLS_USERSPACE;
	if (c->tls_implicit)
		smtp_greeting(&c->smtp, &c->out);
	else
		smtp_tls_established(&c->smtp);
	decrypt_records(c); /* anything the client sent right behind Finished */
	if (c->tls_mode == CONN_TLS_KTLS_SWITCH)
		conn_tls_progress(c);
}

static void advance(struct conn *c)
{
	if (c->tls_mode == CONN_TLS_HANDSHAKE) {
		int rc = SSL_do_handshake(c->ssl);
		if (rc != 1) {
			int err = SSL_get_error(c->ssl, rc);
			if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
				METRICS_INC(c->core->metrics.tls_failed);
				tls_fail(c, "handshake");
			}
			return;
		}
		handshake_done(c);
		return;
	}
	decrypt_records(c);
}

/* Length of the first record in p, or 0 when its header is incomplete. */
static size_t record_length(const unsigned char *p, size_t len)
{
	if (len < TLS_RECORD_HEADER)
		return 0;
	return TLS_RECORD_HEADER + ((size_t)p[3] << 8 | p[4]);
}

/* Could these 5 bytes start a TLS record? (content type 20..24, version
 * 3.x, length within the limit) Anything else — plaintext SMTP after
 * STARTTLS, an HTTP request — must fail now, not wait for a "record" that
 * never completes. */
static bool plausible_record_header(const unsigned char *p)
{
	return p[0] >= 20 && p[0] <= 24 && p[1] == 3 &&
	       TLS_RECORD_HEADER + ((size_t)p[3] << 8 | p[4]) <= TLS_RECORD_MAX;
}

/* Give BoringSSL every whole record at the front of tls_in. */
static void feed_whole_records(struct conn *c)
{
	const unsigned char *p = (const unsigned char *)c->tls_in.data;
	size_t whole = 0;
	for (;;) {
		size_t n = record_length(p + whole, c->tls_in.len - whole);
		if (n == 0 || n > c->tls_in.len - whole)
			break;
		whole += n;
	}
	if (c->tls_in.len - whole >= TLS_RECORD_HEADER && !plausible_record_header(p + whole))
		whole = c->tls_in.len; /* not TLS: let BoringSSL say so at once */
	if (whole == 0)
		return;
	BIO_write(SSL_get_rbio(c->ssl), p, (int)whole);
	buf_consume(&c->tls_in, whole);
}

void conn_tls_input(struct conn *c, const char *data, size_t len)
{
	if (c->closing)
		return;
	if (buf_append(&c->tls_in, data, len) < 0) {
		log_error("session=%s out of memory for TLS input", c->sid);
		conn_abort(c, "out of memory");
		return;
	}
	feed_whole_records(c);
	advance(c);
}

void conn_tls_fill_wire(struct conn *c)
{
	assert(c->sending.len == 0 && !c->send_busy);
	if (c->tls_mode == CONN_TLS_USERSPACE) {
		if (c->out.len > 0) {
			metrics_count_replies(&c->core->metrics, c->out.data, c->out.len);
			if (SSL_write(c->ssl, c->out.data, (int)c->out.len) != (int)c->out.len) {
				tls_fail(c, "write");
				buf_reset(&c->out);
			}
			buf_shrink(&c->out, 4096);
		}
		if (c->closing && !c->tls_close_notify_sent && c->out.len == 0) {
			c->tls_close_notify_sent = true;
			SSL_shutdown(c->ssl);
		}
	}
	BIO *wbio = SSL_get_wbio(c->ssl);
	size_t pending = BIO_pending(wbio);
	if (pending == 0 || buf_reserve(&c->sending, pending) < 0)
		return;
	int n = BIO_read(wbio, c->sending.data, (int)pending);
	if (n > 0)
		c->sending.len = (size_t)n;
}

/* ---- the switch to kTLS ---- */

static void ktls_give_up(struct conn *c, const char *why)
{
	log_warn("session=%s kTLS not used: %s; staying on the userspace path", c->sid, why);
	c->tls_mode = CONN_TLS_USERSPACE;
	if (!c->closing && !c->recv_armed)
		conn_arm_recv(c);
	conn_flush(c);
}

#ifdef MXD_TEST_HOOKS
/* The kTLS VM test's negative control: with wrong keys nothing may pass. */
static void maybe_corrupt_keys(struct ktls_crypto *tx, struct ktls_crypto *rx)
{
	if (!getenv("MXD_KTLS_CORRUPT_KEYS"))
		return;
	/* the key follows the 4-byte crypto_info header and the 8-byte iv */
	tx->bytes[12] ^= 0x5a;
	rx->bytes[12] ^= 0x5a;
}
#endif

static void ktls_install_now(struct conn *c)
{
	struct ktls_crypto tx, rx;
	char why[160];
	if (c->tls_key_updated) {
		ktls_give_up(c, "a KeyUpdate arrived with the handshake");
		return;
	}
	if (ktls_derive(c->ssl, &tx, &rx, why, sizeof why) < 0) {
		ktls_give_up(c, why);
		return;
	}
#ifdef MXD_TEST_HOOKS
	maybe_corrupt_keys(&tx, &rx);
#endif
	int rc = ktls_install(c->fd, &tx, &rx);
	explicit_bzero(&tx, sizeof tx);
	explicit_bzero(&rx, sizeof rx);
	if (rc < 0) {
		/* TCP_ULP may be in place with only one direction installed:
		 * the socket is no longer usable for userspace records. */
		log_error("session=%s kTLS install failed: %s", c->sid, strerror(-rc));
		conn_abort(c, "ktls install failed");
		return;
	}
	c->tls_mode = CONN_TLS_KTLS;
	c->tls_used_ktls = true;
	log_info("session=%s tls_path=ktls version=%s cipher=%s", c->sid, c->peer.tls_version,
		 c->peer.tls_cipher);
	conn_arm_recv(c);
	conn_flush(c); /* replies queued during the switch, now as plaintext */
}

static void ktls_fill_partial_record(struct conn *c)
{
	size_t need = record_length((const unsigned char *)c->tls_in.data, c->tls_in.len);
	need = need ? need - c->tls_in.len : TLS_RECORD_HEADER - c->tls_in.len;
	char *p = realloc(c->ktls_fill, need);
	if (!p) {
		ktls_give_up(c, "out of memory");
		return;
	}
	c->ktls_fill = p;
	c->ktls_fill_len = (uint32_t)need;
	struct io_uring_sqe *sqe = core_sqe(c->core);
	io_uring_prep_recv(sqe, c->fd, p, need, MSG_WAITALL);
	io_uring_sqe_set_data64(sqe, op_data(c, OP_RECV));
	c->ktls_filling = true;
	c->recv_armed = true;
}

void conn_tls_progress(struct conn *c)
{
	if (c->tls_mode != CONN_TLS_KTLS_SWITCH || c->closing)
		return;
	if (c->recv_armed) { /* stop the ring reading ciphertext first */
		if (!c->ktls_cancel_sent && !c->ktls_filling) {
			c->ktls_cancel_sent = true;
			conn_cancel_recv(c);
		}
		return;
	}
	if (c->tls_in.len > 0) {
		ktls_fill_partial_record(c);
		return;
	}
	if (c->send_busy || c->sending.len > 0 || BIO_pending(SSL_get_wbio(c->ssl)) > 0) {
		conn_flush(c); /* the handshake's last flight goes out first */
		return;
	}
	if (SSL_pending(c->ssl) > 0) {
		decrypt_records(c);
		return;
	}
	ktls_install_now(c);
}

void conn_tls_fill_done(struct conn *c, int res)
{
	c->ktls_filling = false;
	if (res <= 0) {
		conn_abort(c, res == 0 ? "disconnect" : "receive error");
		return;
	}
	conn_tls_input(c, c->ktls_fill, (size_t)res);
	conn_tls_progress(c);
}

/* A non-data record on a kTLS socket: read it with its record type. A
 * close_notify alert is a clean end; anything else closes the session. */
void conn_ktls_read_error(struct conn *c, int res)
{
	if (res == -EKEYEXPIRED) {
		log_info("session=%s client sent a TLS KeyUpdate, which kTLS cannot follow; closing",
			 c->sid);
		conn_abort(c, "tls keyupdate");
		return;
	}
	char data[64];
	char control[CMSG_SPACE(sizeof(unsigned char))];
	struct iovec iov = {data, sizeof data};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			     .msg_controllen = sizeof control};
	ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT);
	struct cmsghdr *cm = n >= 0 ? CMSG_FIRSTHDR(&msg) : NULL;
	if (cm && cm->cmsg_level == SOL_TLS && cm->cmsg_type == TLS_GET_RECORD_TYPE &&
	    *CMSG_DATA(cm) == TLS_CONTENT_ALERT && n >= 2 && data[1] == TLS_ALERT_CLOSE_NOTIFY) {
		log_info("session=%s client sent close_notify", c->sid);
		conn_abort(c, "tls close");
		return;
	}
	int type = cm ? *CMSG_DATA(cm) : -1;
	if (type == TLS_CONTENT_HANDSHAKE) {
		/* post-handshake messages (KeyUpdate, tickets) cannot be
		 * followed once the kernel holds the keys */
		log_info("session=%s client sent a TLS handshake message (KeyUpdate?) that kTLS "
			 "cannot follow; closing",
			 c->sid);
		conn_abort(c, "tls keyupdate");
		return;
	}
	log_info("session=%s kTLS read failed (%s), record type %d; closing", c->sid,
		 strerror(-res), type);
	conn_abort(c, "tls error");
}
