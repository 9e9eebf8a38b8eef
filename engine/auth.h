/* auth: checking SMTP AUTH credentials against a password table.
 *
 * The table is a `table NAME file:PATH` of "user crypt-hash" lines; hashes
 * are whatever libcrypt's crypt_r understands (sha512-crypt "$6$",
 * yescrypt "$y$", bcrypt "$2b$"). */
#ifndef MXD_AUTH_H
#define MXD_AUTH_H

#include <stdbool.h>

#include "conf.h"

/* True when user is in the table and password hashes to its entry.
 * Unknown users cost a hash too, so timing does not reveal which users
 * exist. */
bool auth_check_password(const struct conf_table *table, const char *user, const char *password);

/* `auth` without a table (the seed's "listen on ... tls pki NAME auth"):
 * the system's accounts, checked against their shadow password hashes as
 * the OS login would. Needs read access to the shadow database (root). */
bool auth_check_system(const char *user, const char *password);

#endif
