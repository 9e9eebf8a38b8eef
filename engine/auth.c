/* auth: checking SMTP AUTH credentials against a password table.
 *
 * The whole cost of a check is the hash, so every call pays exactly one,
 * with the same kind of setting, whether the user exists or not; only the
 * comparison of the result decides. Nothing here logs: the password never
 * leaves this file except through crypt(3), and the work area that held it
 * is wiped before returning. */
#include "auth.h"

#include <crypt.h>
#include <stdlib.h>
#include <string.h>

/* Hashed against when the user is unknown (or has no usable entry) and
 * the table offers no setting to imitate: a yescrypt setting with the
 * cost Debian's passwd uses by default. Its salt is fixed on purpose;
 * the result is never compared with anything that could match. */
static const char auth_dummy_setting[] = "$y$j9T$Vq9gOHM2D3B0mX2oHbQDP.";

/* Does this look like a hash crypt(3) could check? Locked ("!..."),
 * disabled ("*") and empty entries are refused before hashing. */
static bool setting_usable(const char *hash)
{
	return hash && hash[0] && hash[0] != '!' && hash[0] != '*' &&
	       crypt_checksalt(hash) == CRYPT_SALT_OK;
}

/* Equal strings, in time that depends only on their lengths. */
static bool equal_constant_time(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b);
	size_t n = na < nb ? na : nb;
	unsigned char diff = na != nb;
	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char)(a[i] ^ b[i]);
	return diff == 0;
}

/* The entry of user, scanning every entry so the time spent does not say
 * where (or whether) it was found. */
static const char *table_lookup(const struct conf_table *table, const char *user)
{
	const char *found = NULL;
	for (size_t i = 0; i < table->n; i++) {
		bool match = table->keys[i] && strcmp(table->keys[i], user) == 0;
		if (match && !found)
			found = table->values ? table->values[i] : NULL;
	}
	return found;
}

/* The setting an unknown user's password is hashed with: the first usable
 * hash of the table, so the cost matches what a real user's check costs. */
static const char *dummy_setting(const struct conf_table *table)
{
	for (size_t i = 0; table->values && i < table->n; i++)
		if (setting_usable(table->values[i]))
			return table->values[i];
	return auth_dummy_setting;
}

bool auth_check_password(const struct conf_table *table, const char *user, const char *password)
{
	if (!table || !user || !password)
		return false;
	const char *stored = table_lookup(table, user);
	bool usable = setting_usable(stored);
	const char *setting = usable ? stored : dummy_setting(table);

	struct crypt_data *work = calloc(1, sizeof *work);
	if (!work)
		return false;
	const char *hashed = crypt_rn(password, setting, work, (int)sizeof *work);
	bool ok = usable && password[0] != '\0' && hashed && hashed[0] != '*' &&
		  equal_constant_time(hashed, stored);
	explicit_bzero(work, sizeof *work);
	free(work);
	return ok;
}
