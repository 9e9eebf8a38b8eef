/* tls: BoringSSL server contexts, one per pki, built from a config snapshot.
 *
 * Decisions worth knowing (see also tls.h):
 *
 * - One SSL_CTX per pki, shared by every core. BoringSSL keeps the session
 *   ticket keys inside the SSL_CTX and rotates them itself (every 48 hours,
 *   SSL_DEFAULT_TICKET_KEY_ROTATION_INTERVAL), so all cores encrypt and
 *   decrypt tickets with the same, rotating keys without any code here.
 *   Setting keys explicitly would switch that rotation off, so we do not.
 *   Tickets are issued and checked by the context a session *started* on
 *   (the listener's pki; BoringSSL keeps session settings on the initial
 *   SSL_CTX even after SNI switches certificates), so a ticket is good on
 *   every listener whose default pki is the same. A reload builds new
 *   contexts and therefore new keys: older tickets then cost one full
 *   handshake, nothing worse.
 *
 * - SNI: every context has the same servername callback. It keeps the
 *   listener's pki when that one matches the name, else picks the first pki
 *   whose name equals the server name, else one whose certificate names
 *   (DNS SANs and the subject CN) equal it, else one with a wildcard name
 *   ("*.example.com" covers exactly one more label). No match keeps the
 *   listener's pki: a mail client usually does not check the name anyway.
 *
 * - Client certificates: the CA goes into the pki context's own trust store,
 *   which BoringSSL consults on the SSL's *current* context, so after an SNI
 *   switch the certificate is checked against the chosen pki's ca. The
 *   verify callback never fails the handshake: an unverified certificate
 *   only means "not authenticated", which is what the SMTP layer decides
 *   on, through tls_client_verified(). */
#include "tls.h"
#include "ktls.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* TLS 1.2 suites: forward-secret AEADs only, all of them kTLS-capable.
 * AES-128-GCM and ChaCha20 are one equal-preference group, so a client
 * without AES instructions gets ChaCha20 (TLS 1.3 suites are fixed by
 * BoringSSL and are the same three AEADs). */
#define TLS12_CIPHERS                                                           \
	"[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]:"       \
	"[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]:"           \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"

#define TLS_NAME_MAX 255 /* a DNS name */

struct tls_pki {
	char *name;               /* the pki's name in the config */
	SSL_CTX *ctx;
	bool has_ca;
	char **names;             /* certificate DNS SANs and CN, lower case */
	size_t nnames;
};

struct tls_server {
	struct tls_pki *pkis;
	size_t npkis;
};

/* Per-SSL: did the listener ask for a client certificate? The SNI
 * callback needs it to set the verify mode for the pki it switches to. */
static int verify_flag_index = -1;
static pthread_once_t verify_flag_once = PTHREAD_ONCE_INIT;

static void verify_flag_init(void)
{
	verify_flag_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* ------------------------------------------------------------ errors */

static void err_pki(struct buf *errs, const struct conf *c, const struct conf_pki *k,
		    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void err_pki(struct buf *errs, const struct conf *c, const struct conf_pki *k,
		    const char *fmt, ...)
{
	if (!errs)
		return;
	buf_printf(errs, "%s:%d:%d: ", c->path ? c->path : "(config)", k->line, k->col);
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(errs, fmt, ap);
	va_end(ap);
	buf_append(errs, "\n", 1);
}

void tls_last_error(char *out, size_t out_len)
{
	if (!out || out_len == 0)
		return;
	uint32_t e = ERR_get_error();
	if (e == 0)
		snprintf(out, out_len, "no TLS error recorded");
	else
		ERR_error_string_n(e, out, out_len);
	ERR_clear_error();
}

/* BoringSSL's reason for the last failure, for "cannot load ..." lines. */
static const char *ssl_reason(char *tmp, size_t len)
{
	uint32_t e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;
	if (r)
		snprintf(tmp, len, "%s", r);
	else if (e)
		ERR_error_string_n(e, tmp, len);
	else
		snprintf(tmp, len, "unknown error");
	ERR_clear_error();
	return tmp;
}

/* ------------------------------------------------------ name matching */

static bool name_ok(const char *s, size_t n)
{
	if (n == 0 || n > TLS_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch <= 0x20 || ch >= 0x7f)
			return false;
	}
	return true;
}

/* "*.example.com" matches "a.example.com": the star stands for exactly
 * one whole, non-empty label. Otherwise names are equal ignoring case. */
static bool name_matches(const char *pattern, const char *host, bool wildcard)
{
	if (!wildcard)
		return strcasecmp(pattern, host) == 0;
	if (pattern[0] != '*' || pattern[1] != '.' || pattern[2] == '\0')
		return false;
	const char *dot = strchr(host, '.');
	if (!dot || dot == host)
		return false;
	return strcasecmp(pattern + 1, dot) == 0;
}

static int add_name(struct tls_pki *p, const char *s, size_t n)
{
	if (!name_ok(s, n))
		return 0; /* not a host name: never matched, not an error */
	char **a = reallocarray(p->names, p->nnames + 1, sizeof *a);
	if (!a)
		return -1;
	p->names = a;
	char *d = strndup(s, n);
	if (!d)
		return -1;
	for (char *q = d; *q; q++)
		if (*q >= 'A' && *q <= 'Z')
			*q = (char)(*q - 'A' + 'a');
	p->names[p->nnames++] = d;
	return 0;
}

/* The names a certificate answers to: its DNS SANs, then its CN. */
static int collect_names(struct tls_pki *p, X509 *x)
{
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	int rc = 0;
	for (size_t i = 0; gens && i < sk_GENERAL_NAME_num(gens) && rc == 0; i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		if (g->type != GEN_DNS)
			continue;
		const ASN1_STRING *s = g->d.dNSName;
		rc = add_name(p, (const char *)ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
	}
	GENERAL_NAMES_free(gens);
	if (rc < 0)
		return -1;
	X509_NAME *subj = X509_get_subject_name(x);
	int idx = subj ? X509_NAME_get_index_by_NID(subj, NID_commonName, -1) : -1;
	if (idx >= 0) {
		const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
		if (s && ASN1_STRING_type(s) != V_ASN1_BMPSTRING &&
		    ASN1_STRING_type(s) != V_ASN1_UNIVERSALSTRING)
			rc = add_name(p, (const char *)ASN1_STRING_get0_data(s),
				      (size_t)ASN1_STRING_length(s));
	}
	return rc;
}

static bool pki_matches(const struct tls_pki *p, const char *host, int how)
{
	if (how == 0)
		return strcasecmp(p->name, host) == 0;
	for (size_t i = 0; i < p->nnames; i++)
		if (name_matches(p->names[i], host, how == 2))
			return true;
	return false;
}

static const struct tls_pki *pki_by_ctx(const struct tls_server *t, const SSL_CTX *ctx)
{
	for (size_t i = 0; i < t->npkis; i++)
		if (t->pkis[i].ctx == ctx)
			return &t->pkis[i];
	return NULL;
}

/* Which pki serves host: the current one if it matches at all, else by
 * pki name, exact certificate name, wildcard certificate name. */
static const struct tls_pki *pki_for_host(const struct tls_server *t, const struct tls_pki *cur,
					  const char *host)
{
	for (int how = 0; how < 3; how++)
		if (cur && pki_matches(cur, host, how))
			return cur;
	for (int how = 0; how < 3; how++)
		for (size_t i = 0; i < t->npkis; i++)
			if (pki_matches(&t->pkis[i], host, how))
				return &t->pkis[i];
	return NULL;
}

/* Never fails the handshake; SSL_get_verify_result keeps the outcome. */
static int verify_keep_going(int ok, X509_STORE_CTX *store)
{
	(void)ok;
	(void)store;
	return 1;
}

static void set_verify(SSL *ssl, const struct tls_pki *p)
{
	bool requested = SSL_get_ex_data(ssl, verify_flag_index) != NULL;
	if (requested && p->has_ca)
		SSL_set_verify(ssl, SSL_VERIFY_PEER, verify_keep_going);
	else
		SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
}

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
	(void)alert;
	const struct tls_server *t = arg;
	const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	if (!sni)
		return SSL_TLSEXT_ERR_OK;
	char host[TLS_NAME_MAX + 2];
	size_t n = strlen(sni);
	if (n > 0 && sni[n - 1] == '.')
		n--; /* "example.com." is the same name */
	if (!name_ok(sni, n))
		return SSL_TLSEXT_ERR_OK;
	memcpy(host, sni, n);
	host[n] = '\0';
	const struct tls_pki *cur = pki_by_ctx(t, SSL_get_SSL_CTX(ssl));
	const struct tls_pki *p = pki_for_host(t, cur, host);
	if (!p || p == cur)
		return SSL_TLSEXT_ERR_OK;
	if (SSL_set_SSL_CTX(ssl, p->ctx) != p->ctx)
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	set_verify(ssl, p);
	return SSL_TLSEXT_ERR_OK;
}

/* ---------------------------------------------------------- loading */

/* Encrypted keys are not supported: no one is there to type a passphrase. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return 0;
}

static int load_key(SSL_CTX *ctx, const struct conf *c, const struct conf_pki *k,
		    struct buf *errs)
{
	/* Open first, then check the mode of what was opened: no window
	 * between the check and the read. */
	FILE *f = fopen(k->key, "re");
	if (!f) {
		err_pki(errs, c, k, "cannot open private key file %s: %s", k->key, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fileno(f), &st) < 0) {
		err_pki(errs, c, k, "cannot stat private key file %s: %s", k->key, strerror(errno));
		fclose(f);
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		err_pki(errs, c, k, "private key file %s is not a regular file", k->key);
		fclose(f);
		return -1;
	}
	if (st.st_mode & 077) {
		err_pki(errs, c, k, "%s: private key is readable by group or others; run chmod 600 %s",
			k->key, k->key);
		fclose(f);
		return -1;
	}
	EVP_PKEY *pkey = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
	fclose(f);
	char why[256];
	if (!pkey) {
		err_pki(errs, c, k, "cannot load private key %s: %s", k->key,
			ssl_reason(why, sizeof why));
		return -1;
	}
	/* Compare with the certificate first: SSL_CTX_use_PrivateKey would
	 * refuse a key of another type with a less helpful reason. */
	X509 *leaf = SSL_CTX_get0_certificate(ctx);
	if (!leaf || !X509_check_private_key(leaf, pkey)) {
		EVP_PKEY_free(pkey);
		ERR_clear_error();
		err_pki(errs, c, k, "private key %s does not match certificate %s", k->key, k->cert);
		return -1;
	}
	int ok = SSL_CTX_use_PrivateKey(ctx, pkey);
	EVP_PKEY_free(pkey);
	if (!ok || !SSL_CTX_check_private_key(ctx)) {
		err_pki(errs, c, k, "cannot use private key %s: %s", k->key,
			ssl_reason(why, sizeof why));
		return -1;
	}
	return 0;
}

static int load_cert(SSL_CTX *ctx, struct tls_pki *p, const struct conf *c,
		     const struct conf_pki *k, struct buf *errs)
{
	FILE *f = fopen(k->cert, "re");
	if (!f) {
		err_pki(errs, c, k, "cannot open certificate file %s: %s", k->cert, strerror(errno));
		return -1;
	}
	fclose(f);
	char why[256];
	if (!SSL_CTX_use_certificate_chain_file(ctx, k->cert)) {
		err_pki(errs, c, k, "cannot load certificate %s: %s", k->cert,
			ssl_reason(why, sizeof why));
		return -1;
	}
	X509 *leaf = SSL_CTX_get0_certificate(ctx);
	if (!leaf || collect_names(p, leaf) < 0) {
		err_pki(errs, c, k, "out of memory");
		return -1;
	}
	return 0;
}

static int load_ca(SSL_CTX *ctx, const struct conf *c, const struct conf_pki *k, struct buf *errs)
{
	FILE *f = fopen(k->ca, "re");
	if (!f) {
		err_pki(errs, c, k, "cannot open ca file %s: %s", k->ca, strerror(errno));
		return -1;
	}
	fclose(f);
	char why[256];
	if (!SSL_CTX_load_verify_locations(ctx, k->ca, NULL)) {
		err_pki(errs, c, k, "cannot load ca %s: %s", k->ca, ssl_reason(why, sizeof why));
		return -1;
	}
	/* The CA names go into CertificateRequest so a client with several
	 * certificates can pick the right one. */
	STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(k->ca);
	if (!names) {
		err_pki(errs, c, k, "ca %s holds no certificate", k->ca);
		ERR_clear_error();
		return -1;
	}
	SSL_CTX_set_client_CA_list(ctx, names);
	return 0;
}

static SSL_CTX *new_ctx(struct tls_server *t, bool keylog)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx)
		return NULL;
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set_strict_cipher_list(ctx, TLS12_CIPHERS)) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
	SSL_CTX_set_tlsext_servername_arg(ctx, t);
	if (keylog)
		ktls_enable_keylog(ctx);
	return ctx;
}

static int build_pki(struct tls_server *t, struct tls_pki *p, const struct conf *c,
		     const struct conf_pki *k, bool keylog, struct buf *errs)
{
	p->name = strdup(k->name);
	p->ctx = new_ctx(t, keylog);
	if (!p->name || !p->ctx) {
		err_pki(errs, c, k, "cannot set up TLS context for pki \"%s\"", k->name);
		ERR_clear_error();
		return -1;
	}
	/* Sessions (tickets) are only resumed on a context with the same id:
	 * the pki's name, hashed to the 32 bytes BoringSSL allows. */
	uint8_t sid[32];
	unsigned sid_len = 0;
	if (!EVP_Digest(k->name, strlen(k->name), sid, &sid_len, EVP_sha256(), NULL) ||
	    !SSL_CTX_set_session_id_context(p->ctx, sid, sid_len)) {
		err_pki(errs, c, k, "cannot set up TLS context for pki \"%s\"", k->name);
		ERR_clear_error();
		return -1;
	}
	if (!k->cert || !k->key) {
		err_pki(errs, c, k, "pki \"%s\" needs both cert and key", k->name);
		return -1;
	}
	if (load_cert(p->ctx, p, c, k, errs) < 0)
		return -1;
	if (load_key(p->ctx, c, k, errs) < 0)
		return -1;
	if (k->ca) {
		if (load_ca(p->ctx, c, k, errs) < 0)
			return -1;
		p->has_ca = true;
	}
	return 0;
}

struct tls_server *tls_server_build(const struct conf *c, bool keylog, struct buf *errs)
{
	assert(c);
	pthread_once(&verify_flag_once, verify_flag_init);
	if (verify_flag_index < 0) {
		if (errs)
			buf_printf(errs, "%s: cannot set up TLS\n", c->path ? c->path : "(config)");
		return NULL;
	}
	struct tls_server *t = calloc(1, sizeof *t);
	if (!t || (c->npkis && !(t->pkis = calloc(c->npkis, sizeof *t->pkis)))) {
		if (errs)
			buf_printf(errs, "%s: out of memory\n", c->path ? c->path : "(config)");
		free(t);
		return NULL;
	}
	t->npkis = c->npkis;
	/* Every pki is tried, so one start-up shows every broken one. */
	bool ok = true;
	for (size_t i = 0; i < c->npkis; i++)
		if (build_pki(t, &t->pkis[i], c, &c->pkis[i], keylog, errs) < 0)
			ok = false;
	if (!ok) {
		tls_server_free(t);
		return NULL;
	}
	return t;
}

void tls_server_free(struct tls_server *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->npkis; i++) {
		struct tls_pki *p = &t->pkis[i];
		SSL_CTX_free(p->ctx);
		free(p->name);
		for (size_t j = 0; j < p->nnames; j++)
			free(p->names[j]);
		free(p->names);
	}
	free(t->pkis);
	free(t);
}

SSL *tls_server_session(const struct tls_server *t, const char *pki_name, bool verify_client)
{
	if (!t || !pki_name)
		return NULL;
	const struct tls_pki *p = NULL;
	for (size_t i = 0; i < t->npkis && !p; i++)
		if (strcmp(t->pkis[i].name, pki_name) == 0)
			p = &t->pkis[i];
	if (!p)
		return NULL;
	SSL *ssl = SSL_new(p->ctx);
	if (!ssl)
		return NULL;
	/* Any non-NULL pointer marks "requested"; the SSL owns nothing. */
	static const char requested = 1;
	if (verify_client && !SSL_set_ex_data(ssl, verify_flag_index, (void *)&requested)) {
		SSL_free(ssl);
		return NULL;
	}
	set_verify(ssl, p);
	SSL_set_accept_state(ssl);
	return ssl;
}

/* ----------------------------------------------------- after the handshake */

/* A printable, non-empty name that fits, or false. */
static bool copy_name(const ASN1_STRING *s, char *out, size_t out_len)
{
	if (!s || ASN1_STRING_type(s) == V_ASN1_BMPSTRING ||
	    ASN1_STRING_type(s) == V_ASN1_UNIVERSALSTRING)
		return false;
	const unsigned char *d = ASN1_STRING_get0_data(s);
	int n = ASN1_STRING_length(s);
	if (n <= 0 || (size_t)n >= out_len)
		return false;
	for (int i = 0; i < n; i++)
		if (d[i] < 0x20 || d[i] >= 0x7f)
			return false;
	memcpy(out, d, (size_t)n);
	out[n] = '\0';
	return true;
}

bool tls_client_verified(SSL *ssl, char *name, size_t name_len)
{
	if (name && name_len)
		name[0] = '\0';
	if (!ssl)
		return false;
	X509 *peer = SSL_get_peer_certificate(ssl);
	if (!peer)
		return false;
	if (SSL_get_verify_result(ssl) != X509_V_OK) {
		X509_free(peer);
		return false;
	}
	if (name && name_len) {
		X509_NAME *subj = X509_get_subject_name(peer);
		int idx = subj ? X509_NAME_get_index_by_NID(subj, NID_commonName, -1) : -1;
		bool got = idx >= 0 &&
			   copy_name(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx)), name,
				     name_len);
		GENERAL_NAMES *gens =
			got ? NULL : X509_get_ext_d2i(peer, NID_subject_alt_name, NULL, NULL);
		for (size_t i = 0; gens && !got && i < sk_GENERAL_NAME_num(gens); i++) {
			const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
			if (g->type == GEN_DNS)
				got = copy_name(g->d.dNSName, name, name_len);
		}
		GENERAL_NAMES_free(gens);
		if (!got)
			name[0] = '\0';
	}
	X509_free(peer);
	return true;
}

const char *tls_version_name(const SSL *ssl)
{
	return ssl ? SSL_get_version(ssl) : "none";
}

const char *tls_cipher_name(const SSL *ssl)
{
	const SSL_CIPHER *c = ssl ? SSL_get_current_cipher(ssl) : NULL;
	const char *n = c ? SSL_CIPHER_standard_name(c) : NULL;
	return n ? n : "none";
}
