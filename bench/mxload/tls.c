/* tls: BoringSSL on the client side, over memory BIOs.
 *
 * As in mxd's conn_tls.c the socket never meets BoringSSL: ciphertext from
 * the ring is written into the read BIO, and whatever BoringSSL writes to
 * the write BIO is moved into the connection's wire buffer and sent by the
 * ring. Plaintext to send is taken from the session's output queue one
 * record (16 KiB) at a time, and only while the wire buffer has room for
 * the record, so a large message never piles up as ciphertext in memory.
 *
 * One SSL_CTX per worker. With --resume on, the newest session a worker
 * was given (a TLS 1.3 ticket or a TLS 1.2 session) is offered by its next
 * connection; SSL_session_reused() tells whether the server took it. The
 * server's certificate is not verified: this is a load generator. */
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "worker.h"

#define RECORD_PLAIN 16384

static _Thread_local char plain_in[RECORD_PLAIN];
static _Thread_local char staging[RECORD_PLAIN];

static int new_session(SSL *ssl, SSL_SESSION *sess)
{
	struct conn *c = SSL_get_app_data(ssl);
	struct worker *w = c->w;
	if (w->session)
		SSL_SESSION_free(w->session);
	w->session = sess; /* returning 1: the reference is ours */
	return 1;
}

SSL_CTX *tls_client_ctx(const struct mxl_options *o, struct worker *w, char *err, size_t errlen)
{
	(void)w;
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx) {
		snprintf(err, errlen, "SSL_CTX_new failed");
		return NULL;
	}
	uint16_t lo = TLS1_2_VERSION, hi = TLS1_3_VERSION;
	if (o->tls_version == 12)
		hi = TLS1_2_VERSION;
	else if (o->tls_version == 13)
		lo = TLS1_3_VERSION;
	SSL_CTX_set_min_proto_version(ctx, lo);
	SSL_CTX_set_max_proto_version(ctx, hi);
	if (o->cipher && !SSL_CTX_set_strict_cipher_list(ctx, o->cipher)) {
		snprintf(err, errlen, "--cipher %s: BoringSSL does not know this cipher list",
			 o->cipher);
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	if (o->resume) {
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
		SSL_CTX_sess_set_new_cb(ctx, new_session);
	} else {
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	}
	return ctx;
}

static void tls_error(struct conn *c, const char *what)
{
	char why[200];
	uint32_t e = ERR_get_error();
	if (e)
		ERR_error_string_n(e, why, sizeof why);
	else
		snprintf(why, sizeof why, "no BoringSSL error recorded");
	ERR_clear_error();
	conn_error(c, ERR_TLS, "TLS %s failed: %s", what, why);
	conn_abort(c);
}

int tls_begin(struct conn *c)
{
	struct worker *w = c->w;
	c->ssl = SSL_new(w->ssl_ctx);
	BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
	if (!c->ssl || !rbio || !wbio) {
		BIO_free(rbio);
		BIO_free(wbio);
		tls_error(c, "set-up");
		return -1;
	}
	SSL_set_bio(c->ssl, rbio, wbio);
	SSL_set_app_data(c->ssl, c);
	SSL_set_connect_state(c->ssl);
	if (w->o->sni)
		SSL_set_tlsext_host_name(c->ssl, w->o->sni);
	if (w->o->resume && w->session)
		SSL_set_session(c->ssl, w->session);
	c->tls_on = true;
	c->tls_handshaking = true;
	c->t_tls = mono_ns();
	c->deadline = w->now + (uint64_t)(w->o->timeout * 1e9);
	int rc = SSL_do_handshake(c->ssl); /* writes the ClientHello */
	if (rc != 1) {
		int e = SSL_get_error(c->ssl, rc);
		if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
			tls_error(c, "handshake");
			return -1;
		}
	}
	return 0;
}

static void handshake_done(struct conn *c)
{
	struct worker *w = c->w;
	c->tls_handshaking = false;
	w->st.handshakes++;
	if (SSL_session_reused(c->ssl))
		w->st.resumed++;
	hist_record(&w->st.h_handshake, w->now > c->t_tls ? w->now - c->t_tls : 0);
	if (!w->st.tls_version[0]) {
		snprintf(w->st.tls_version, sizeof w->st.tls_version, "%s", SSL_get_version(c->ssl));
		const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
		snprintf(w->st.tls_cipher, sizeof w->st.tls_cipher, "%s",
			 ci ? SSL_CIPHER_standard_name(ci) : "?");
	}
	session_tls_up(c);
}

void tls_input(struct conn *c, const char *data, size_t len)
{
	if (BIO_write(SSL_get_rbio(c->ssl), data, (int)len) != (int)len) {
		tls_error(c, "input");
		return;
	}
	if (c->tls_handshaking) {
		int rc = SSL_do_handshake(c->ssl);
		if (rc != 1) {
			int e = SSL_get_error(c->ssl, rc);
			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
				tls_error(c, "handshake");
			else
				session_pump(c); /* the next flight, if any */
			return;
		}
		handshake_done(c);
	}
	while (c->state == CS_OPEN || c->state == CS_QUITTING) {
		int n = SSL_read(c->ssl, plain_in, sizeof plain_in);
		if (n > 0) {
			session_input(c, plain_in, (size_t)n);
			continue;
		}
		int e = SSL_get_error(c->ssl, n);
		if (e == SSL_ERROR_WANT_READ)
			break;
		if (e == SSL_ERROR_ZERO_RETURN) {
			if (c->state != CS_QUITTING) {
				conn_error(c, ERR_CLOSED, "server sent close_notify before the 221 to QUIT");
				conn_abort(c);
			}
			return; /* after QUIT: the close comes next */
		}
		tls_error(c, "read");
		return;
	}
	session_pump(c);
}

static void drain_bio(struct conn *c)
{
	BIO *wbio = SSL_get_wbio(c->ssl);
	size_t pending = BIO_pending(wbio);
	size_t room = WIRE_CAP - c->wire_len;
	if (pending == 0 || room == 0)
		return;
	int n = BIO_read(wbio, c->wire + c->wire_len, (int)(pending < room ? pending : room));
	if (n > 0)
		c->wire_len += (size_t)n;
}

void tls_fill_wire(struct conn *c)
{
	BIO *wbio = SSL_get_wbio(c->ssl);
	while (!c->tls_handshaking && c->out.head < c->out.n &&
	       WIRE_CAP - c->wire_len >= WIRE_RECORD + BIO_pending(wbio)) {
		size_t n = session_take_plain(c, staging, sizeof staging);
		if (SSL_write(c->ssl, staging, (int)n) != (int)n) {
			tls_error(c, "write");
			return;
		}
		/* ciphertext made so far, whether moved to the wire yet or not */
		uint64_t cipher_end =
			c->wire_total_out + (c->wire_len - c->wire_off) + BIO_pending(wbio);
		session_stamps_to_cipher(c, c->out.taken, cipher_end);
		drain_bio(c);
	}
	drain_bio(c);
}

void tls_reset(struct conn *c)
{
	SSL_free(c->ssl);
	c->ssl = NULL;
	c->tls_on = false;
	c->tls_handshaking = false;
	c->tls_start_pending = false;
	c->wire_off = c->wire_len = c->wire_sub = 0;
	c->wire_total_out = 0;
}
