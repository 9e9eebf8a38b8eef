/* conf: the configuration language (OpenSMTPD style, see conf/README).
 *
 * A parsed config is an immutable snapshot: the daemon builds a new one on
 * reload and swaps a pointer, sessions keep the one they started with. */
#ifndef MXD_CONF_H
#define MXD_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"
#include "relay_url.h"

enum conf_listener_flag {
	CONF_LISTEN_TLS = 1 << 0,         /* offer STARTTLS */
	CONF_LISTEN_TLS_REQUIRE = 1 << 1, /* STARTTLS offered and required */
	CONF_LISTEN_SMTPS = 1 << 2,       /* implicit TLS (RFC 8314) */
	CONF_LISTEN_AUTH = 1 << 3,        /* AUTH offered inside TLS */
	CONF_LISTEN_VERIFY = 1 << 4,      /* request a client certificate */
	CONF_LISTEN_PROXY_V1 = 1 << 5,    /* a PROXY protocol v1 header comes first */
	CONF_LISTEN_PROXY_V2 = 1 << 6,    /* a PROXY protocol v2 header comes first */
};

/* "proxy-from": which peers a proxy-v1/v2 listener takes a PROXY header
 * from. Anyone else could claim any client address (and the accept rules
 * "from" it), so the default is the loopback: a balancer on this host. */
enum conf_proxy_from {
	CONF_PROXY_FROM_LOCAL,            /* 127.0.0.0/8, ::1 (the default) */
	CONF_PROXY_FROM_ANY,              /* every peer: only behind a firewall */
	CONF_PROXY_FROM_TABLE,            /* the addresses/CIDRs of a table */
};

struct conf_listener {
	char *addr_text;                  /* as written: "127.0.0.1", "::1" */
	struct sockaddr_storage addr;     /* with the port set */
	socklen_t addr_len;
	uint16_t port;
	unsigned flags;                   /* CONF_LISTEN_* */
	char *pki;                        /* pki name or NULL */
	char *auth_table;                 /* table name for auth <t>, or NULL */
	char *hostname;                   /* "hostname NAME" option, or NULL */
	enum conf_proxy_from proxy_from;  /* meaningful with CONF_LISTEN_PROXY_V1/V2 */
	char *proxy_from_table;           /* CONF_PROXY_FROM_TABLE: its name; a literal
	                                     list is a table named "proxy-from:LINE:COL" */
	int line, col;
};

struct conf_pki {
	char *name;
	char *cert;                       /* paths, or NULL when not given */
	char *key;
	char *ca;
	int line, col;
};

enum conf_table_kind { CONF_TABLE_LIST, CONF_TABLE_FILE };

struct conf_table {
	char *name;
	enum conf_table_kind kind;
	char *path;                       /* CONF_TABLE_FILE: as written */
	/* Entries: for a list, the items; for a file, each non-empty,
	 * non-comment line's first field is the key and the rest (trimmed)
	 * the value (e.g. "user $6$hash"). Files are read at parse time. */
	char **keys;
	char **values;                    /* NULL entry when no value */
	/* Where each entry was written, for error messages: a list's items
	 * are positions in the config; a file's are (line, column) in PATH. */
	int *entry_line;
	int *entry_col;
	size_t n;
	int line, col;
};

/* Where a rule's mail goes: "relay via URL[, URL...] [ca "FILE" | noverify]".
 * The hops are tried in order (fail-over). No hops: the message stays in
 * the spool for external consumers, never delivered, never deleted. */
struct conf_route {
	struct relay_url *hops;
	size_t nhops;
	char *ca;                         /* "ca FILE" on the rule, else NULL */
	bool noverify;                    /* do not check the next hop's certificate */
	int line, col;                    /* of "relay" */
};

/* The relay's global settings ("relay ..." and "bounce relay via"). */
struct conf_relay {
	struct conf_route bounce;         /* "bounce relay via": where DSNs go; nhops 0:
	                                     DSNs are routed by the rules */
	uint32_t lifetime;                /* ms a message may be retried, default 5d */
	uint32_t retry_first;             /* ms before the first retry, default 1m */
	uint32_t retry_max;               /* ms, backoff cap, default 4h */
	uint32_t connections;             /* per next hop per core, default 4 */
	uint64_t chunk_size;              /* BDAT chunk bytes, default 1M */
	char *helo;                       /* "relay helo NAME"; default: hostname */
	char *ca;                         /* "relay ca FILE": default CA for TLS hops */
	/* timeouts, ms */
	uint32_t timeout_connect;         /* TCP (and TLS) connect: 30s */
	uint32_t timeout_greeting;        /* waiting for the 220: 2m */
	uint32_t timeout_command;         /* each command's reply: 2m */
	uint32_t timeout_data_end;        /* the reply after the end of data: 5m */
};

enum conf_from { CONF_FROM_ANY, CONF_FROM_LOCAL, CONF_FROM_AUTHENTICATED, CONF_FROM_TABLE };
enum conf_for { CONF_FOR_ANY, CONF_FOR_DOMAIN };

struct conf_rule {
	enum conf_from from;
	char *from_table;                 /* CONF_FROM_TABLE: table of addresses/CIDRs */
	enum conf_for for_what;
	char *domain_table;               /* CONF_FOR_DOMAIN */
	char *recipient_table;            /* "recipient <t>", or NULL */
	struct conf_route relay;          /* "relay via ...": nhops 0 keeps the mail */
	int line, col;
};

/* RFC 5321 4.5.3.2 timeouts, in milliseconds. */
struct conf_timeouts {
	uint32_t greeting;                /* "timeout greeting": not used by the server side */
	uint32_t command;                 /* waiting for a command: 5 min */
	uint32_t data_init;               /* after 354, first content: 2 min */
	uint32_t data_block;              /* between content reads: 3 min */
	uint32_t data_term;               /* not waiting on the client (commit): 10 min */
	uint32_t drain;                   /* SIGTERM: finish transactions up to this */
	uint32_t upgrade;                 /* binary upgrade: the new process is ready
	                                     within this, or the old one keeps serving */
};

/* "ktls auto|on|off": hand TLS records to the kernel after the handshake.
 * auto uses kTLS when the kernel accepts TCP_ULP "tls" and the session's
 * version and cipher allow it, else BoringSSL keeps the records; on
 * insists (start-up fails without kernel support); off never uses it. */
enum conf_ktls { CONF_KTLS_AUTO, CONF_KTLS_ON, CONF_KTLS_OFF };

struct conf_control {
	char *path;                       /* default "SPOOL/mxd.sock" */
	bool path_default;                /* not given: derived from the spool */
	uint32_t max_clients;             /* control clients at once, default 4 */
	uint32_t timeout;                 /* ms a client may sit idle, default 10s */
	int line, col;                    /* of the directive; 0 when absent */
};

struct conf {
	char *path;                       /* file it came from */
	char *hostname;                   /* "hostname NAME"; default gethostname() at load */
	struct conf_listener *listeners;
	size_t nlisteners;
	struct conf_pki *pkis;
	size_t npkis;
	struct conf_table *tables;
	size_t ntables;
	struct conf_rule *rules;
	size_t nrules;

	uint64_t max_message_size;        /* default 35M */
	uint32_t max_recipients;          /* default 1000 */
	uint32_t max_connections;         /* default 10000 */
	uint32_t max_connections_per_client; /* default 100 */
	uint32_t max_errors;              /* default 10 */
	uint32_t max_line_length;         /* default 2048 */
	uint32_t greeting_delay;          /* ms before the 220; a client that talks
	                                     first is refused (early talker). 0: off */
	uint32_t min_data_rate;           /* bytes/s a client must keep up inside
	                                     DATA/BDAT content; 0: off. default 500 */
	bool accept_bare_newlines;        /* "bare-newlines accept|reject", default reject */
	struct conf_timeouts timeouts;
	char *spool_dir;                  /* default "var/spool" */
	uint32_t cores;                   /* 0 = auto */
	uint64_t segment_size;            /* "segment-size", default 256M */
	enum conf_ktls ktls;              /* default auto */
	/* "metrics listen on ADDR port N": Prometheus text format over HTTP
	 * (addr_text NULL when not configured). Only addr_text, addr,
	 * addr_len, port, line and col are used. */
	struct conf_listener metrics;
	/* "control socket PATH [max-clients N] [timeout DURATION]": the Unix
	 * socket mxctl talks to (engine/control.h). */
	struct conf_control control;
	struct conf_relay relay;
};

/* Parse text (name is used in error messages). Table files and relative
 * paths are resolved against the current directory. On error returns NULL
 * and appends "NAME:LINE:COL: message\n" for each error to errs. */
struct conf *conf_parse(const char *name, const char *text, size_t len, struct buf *errs);
struct conf *conf_load(const char *path, struct buf *errs);
void conf_free(struct conf *c);

const struct conf_table *conf_table_find(const struct conf *c, const char *name);
const struct conf_pki *conf_pki_find(const struct conf *c, const char *name);

/* Where the built-in defaults live, for the daemon and the tests. */
#define CONF_DEFAULT_MAX_MESSAGE_SIZE (35ull << 20)
#define CONF_DEFAULT_MAX_RECIPIENTS 1000u
#define CONF_DEFAULT_MAX_CONNECTIONS 10000u
#define CONF_DEFAULT_MAX_CONNECTIONS_PER_CLIENT 100u
#define CONF_DEFAULT_MAX_ERRORS 10u
#define CONF_DEFAULT_MAX_LINE_LENGTH 2048u
#define CONF_DEFAULT_MIN_DATA_RATE 500u
#define CONF_MIN_LINE_LENGTH 512u         /* RFC 5321 4.5.3.1.4 */
#define CONF_MAX_LINE_LENGTH (1u << 20)
#define CONF_DEFAULT_SEGMENT_SIZE (256ull << 20)
#define CONF_MAX_CORES 256u
#define CONF_DEFAULT_RELAY_LIFETIME (5u * 24 * 3600 * 1000)
#define CONF_DEFAULT_RELAY_RETRY_FIRST (60u * 1000)
#define CONF_DEFAULT_RELAY_RETRY_MAX (4u * 3600 * 1000)
#define CONF_DEFAULT_RELAY_CONNECTIONS 4u
#define CONF_DEFAULT_RELAY_CHUNK_SIZE (1ull << 20)
#define CONF_DEFAULT_RELAY_TIMEOUT_CONNECT (30u * 1000)
#define CONF_DEFAULT_RELAY_TIMEOUT_GREETING (2u * 60 * 1000)
#define CONF_DEFAULT_RELAY_TIMEOUT_COMMAND (2u * 60 * 1000)
#define CONF_DEFAULT_RELAY_TIMEOUT_DATA_END (5u * 60 * 1000)
#define CONF_RELAY_MAX_HOPS 16u
#define CONF_DEFAULT_CONTROL_MAX_CLIENTS 4u
#define CONF_DEFAULT_CONTROL_TIMEOUT (10u * 1000u)
#define CONF_CONTROL_SOCKET_NAME "mxd.sock" /* in the spool directory by default */
#define CONF_CONTROL_PATH_MAX 107u        /* sun_path holds 108 bytes with the NUL */

/* Who may send listener l's PROXY headers, for the start-up log:
 * "the loopback only (...)", "any peer (...)", "<t> (a, b, ...)". */
void conf_proxy_from_describe(const struct conf *c, const struct conf_listener *l,
			      struct buf *out);

/* "35M" "1G" "512k" "1000" → bytes; -1 on syntax error or overflow. */
int conf_parse_size(const char *s, uint64_t *out);
/* "5m" "30s" "2h" "1500ms" → milliseconds; -1 on error. */
int conf_parse_duration(const char *s, uint32_t *out_ms);

#endif
