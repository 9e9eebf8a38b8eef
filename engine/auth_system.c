#include <crypt.h>
#include <shadow.h>
#include <string.h>

#include "auth.h"

/* Compare without an early exit, so the time taken does not tell how much
 * of a hash matched. */
static bool same_string(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char diff = (unsigned char)(la != lb);
	size_t n = la < lb ? la : lb;
	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char)(a[i] ^ b[i]);
	return diff == 0;
}

bool auth_check_system(const char *user, const char *password)
{
	struct spwd entry, *found = NULL;
	char scratch[4096];
	if (getspnam_r(user, &entry, scratch, sizeof scratch, &found) != 0 || !found)
		return false;
	const char *setting = found->sp_pwdp;
	/* locked ("!..."), disabled ("*") or empty: no password login */
	if (!setting || setting[0] == '\0' || setting[0] == '!' || setting[0] == '*')
		return false;
	struct crypt_data data;
	memset(&data, 0, sizeof data);
	const char *hash = crypt_r(password, setting, &data);
	bool ok = hash && hash[0] != '*' && same_string(hash, setting);
	explicit_bzero(&data, sizeof data);
	explicit_bzero(scratch, sizeof scratch);
	return ok;
}
