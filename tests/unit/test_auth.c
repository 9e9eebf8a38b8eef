/* test_auth: AUTH credentials against a password table, with hashes of
 * each kind libcrypt makes (sha512-crypt, yescrypt, bcrypt) generated here
 * with fresh salts, so no test depends on a hash typed into the source. */
#include <crypt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "check.h"
#include "conf.h"

/* A hash of password made with a new salt of the given kind ("$6$", ...);
 * rounds 0 is the method's default, kept low for bcrypt to stay fast. */
static char *make_hash(const char *prefix, unsigned long rounds, const char *password)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	if (!crypt_gensalt_rn(prefix, rounds, NULL, 0, salt, sizeof salt)) {
		fprintf(stderr, "crypt_gensalt_rn(%s) failed\n", prefix);
		exit(2);
	}
	struct crypt_data *work = calloc(1, sizeof *work);
	const char *h = work ? crypt_r(password, salt, work) : NULL;
	if (!h || h[0] == '*') {
		fprintf(stderr, "crypt_r(%s) failed\n", salt);
		exit(2);
	}
	char *copy = strdup(h);
	free(work);
	return copy;
}

enum {
	U_SHA512,
	U_YESCRYPT,
	U_BCRYPT,
	U_EMPTY_PW,    /* a real hash of the empty password */
	U_NULL,        /* no value at all */
	U_MALFORMED,   /* not a crypt(3) hash */
	U_LOCKED,      /* "!" + a valid hash, as passwd -l leaves it */
	U_LEGACY_DES,  /* traditional DES: refused as too weak */
	U_TRUNCATED,   /* a yescrypt setting with no hash part */
	U_DUP,         /* the same name twice: the first entry counts */
	U_DUP2,
	U_COUNT
};

static char *keys[U_COUNT];
static char *values[U_COUNT];
static struct conf_table table = { .name = "passwd", .kind = CONF_TABLE_FILE, .path = "test",
				   .keys = keys, .values = values, .n = U_COUNT };

static void build_table(void)
{
	keys[U_SHA512] = "sha";
	values[U_SHA512] = make_hash("$6$", 0, "sha-secret");
	keys[U_YESCRYPT] = "yes@example.com";
	values[U_YESCRYPT] = make_hash("$y$", 0, "yes secret with spaces");
	keys[U_BCRYPT] = "bcrypt";
	values[U_BCRYPT] = make_hash("$2b$", 5, "bcrypt-secret");
	keys[U_EMPTY_PW] = "empty";
	values[U_EMPTY_PW] = make_hash("$6$", 0, "");
	keys[U_NULL] = "novalue";
	values[U_NULL] = NULL;
	keys[U_MALFORMED] = "malformed";
	values[U_MALFORMED] = strdup("$6$abc");
	keys[U_LOCKED] = "locked";
	char *h = make_hash("$6$", 0, "locked-secret");
	if (asprintf(&values[U_LOCKED], "!%s", h) < 0)
		exit(2);
	free(h);
	keys[U_LEGACY_DES] = "des";
	struct crypt_data *work = calloc(1, sizeof *work);
	const char *des = work ? crypt_r("des-secret", "ab", work) : NULL;
	if (!des || des[0] == '*' || strlen(des) != 13)
		exit(2);
	values[U_LEGACY_DES] = strdup(des); /* a real DES hash: refused as too weak */
	free(work);
	keys[U_TRUNCATED] = "truncated";
	values[U_TRUNCATED] = make_hash("$y$", 0, "x");
	*strrchr(values[U_TRUNCATED], '$') = '\0';
	keys[U_DUP] = "dup";
	values[U_DUP] = make_hash("$6$", 0, "first");
	keys[U_DUP2] = "dup";
	values[U_DUP2] = make_hash("$6$", 0, "second");
}

static void free_table(void)
{
	for (size_t i = 0; i < U_COUNT; i++)
		free(values[i]);
}

static void test_kinds(void)
{
	CHECK(strncmp(values[U_SHA512], "$6$", 3) == 0);
	CHECK(strncmp(values[U_YESCRYPT], "$y$", 3) == 0);
	CHECK(strncmp(values[U_BCRYPT], "$2b$", 4) == 0);

	/* Right password: true. */
	CHECK(auth_check_password(&table, "sha", "sha-secret"));
	CHECK(auth_check_password(&table, "yes@example.com", "yes secret with spaces"));
	CHECK(auth_check_password(&table, "bcrypt", "bcrypt-secret"));

	/* Wrong passwords: another user's, a prefix, an extension, case. */
	CHECK(!auth_check_password(&table, "sha", "bcrypt-secret"));
	CHECK(!auth_check_password(&table, "sha", "sha-secre"));
	CHECK(!auth_check_password(&table, "sha", "sha-secret "));
	CHECK(!auth_check_password(&table, "sha", "SHA-SECRET"));
	CHECK(!auth_check_password(&table, "yes@example.com", "yes secret"));
	CHECK(!auth_check_password(&table, "bcrypt", "bcrypt-secreT"));
	CHECK(!auth_check_password(&table, "bcrypt", ""));
	CHECK(!auth_check_password(&table, "sha", ""));
}

static void test_users(void)
{
	/* Unknown users, including near misses of real names and the right
	 * password of another user. */
	CHECK(!auth_check_password(&table, "nobody", "sha-secret"));
	CHECK(!auth_check_password(&table, "Sha", "sha-secret"));
	CHECK(!auth_check_password(&table, "sha ", "sha-secret"));
	CHECK(!auth_check_password(&table, "sh", "sha-secret"));
	CHECK(!auth_check_password(&table, "", "sha-secret"));
	CHECK(!auth_check_password(&table, "yes", "yes secret with spaces"));

	/* An entry whose hash is of the empty password still never lets an
	 * empty password in. */
	CHECK(!auth_check_password(&table, "empty", ""));
	CHECK(!auth_check_password(&table, "empty", "x"));

	/* Entries that are not usable hashes. */
	CHECK(!auth_check_password(&table, "novalue", ""));
	CHECK(!auth_check_password(&table, "novalue", "anything"));
	CHECK(!auth_check_password(&table, "malformed", "anything"));
	CHECK(!auth_check_password(&table, "locked", "locked-secret"));
	CHECK(!auth_check_password(&table, "des", "des-secret"));
	CHECK(!auth_check_password(&table, "truncated", "x"));

	/* Duplicate names: the first entry is the one that counts. */
	CHECK(auth_check_password(&table, "dup", "first"));
	CHECK(!auth_check_password(&table, "dup", "second"));

	/* NULL arguments. */
	CHECK(!auth_check_password(NULL, "sha", "sha-secret"));
	CHECK(!auth_check_password(&table, NULL, "sha-secret"));
	CHECK(!auth_check_password(&table, "sha", NULL));
}

/* A table with no usable hash at all still answers (with the built-in
 * dummy setting), and a table of list kind without values is just empty. */
static void test_degenerate_tables(void)
{
	static char *k[] = { "a", "b" };
	static char *v[] = { NULL, "*" };
	struct conf_table t = { .name = "t", .kind = CONF_TABLE_FILE, .keys = k, .values = v, .n = 2 };
	CHECK(!auth_check_password(&t, "a", ""));
	CHECK(!auth_check_password(&t, "b", "*"));
	CHECK(!auth_check_password(&t, "c", "x"));
	struct conf_table novalues = { .name = "n", .kind = CONF_TABLE_LIST, .keys = k, .n = 2 };
	CHECK(!auth_check_password(&novalues, "a", "x"));
	struct conf_table empty = { .name = "e", .kind = CONF_TABLE_FILE };
	CHECK(!auth_check_password(&empty, "a", "x"));
}

/* Long passwords: every byte counts, up to libcrypt's limit; past it
 * crypt(3) refuses to hash at all, which must read as "no". */
static void test_long_password(void)
{
	char pw[1024];
	memset(pw, 'p', sizeof pw - 1);
	pw[CRYPT_MAX_PASSPHRASE_SIZE - 1] = '\0';
	char *k[] = { "long" };
	char *v[] = { make_hash("$y$", 0, pw) };
	struct conf_table t = { .name = "t", .kind = CONF_TABLE_FILE, .keys = k, .values = v, .n = 1 };
	CHECK(auth_check_password(&t, "long", pw));
	pw[CRYPT_MAX_PASSPHRASE_SIZE - 2] = 'q';
	CHECK(!auth_check_password(&t, "long", pw));
	pw[CRYPT_MAX_PASSPHRASE_SIZE - 2] = 'p';
	pw[CRYPT_MAX_PASSPHRASE_SIZE - 1] = 'p';
	pw[sizeof pw - 1] = '\0';
	CHECK(!auth_check_password(&t, "long", pw));
	free(v[0]);
}

int main(void)
{
	build_table();
	test_kinds();
	test_users();
	test_degenerate_tables();
	test_long_password();
	free_table();
	return check_report("test_auth");
}
