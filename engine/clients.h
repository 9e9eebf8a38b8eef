/* clients: connection accounting for max-connections and
 * max-connections-per-client.
 *
 * Both limits are for the whole daemon, not one core, so the counts are
 * shared: a total in an atomic and a small table of per-address counts
 * under a mutex. They are touched once when a connection opens and once
 * when it closes, never per command or per message. */
#ifndef MXD_CLIENTS_H
#define MXD_CLIENTS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

enum clients_refusal {
	CLIENTS_ADMITTED = 0,
	CLIENTS_TOO_MANY_TOTAL,
	CLIENTS_TOO_MANY_FROM_ADDRESS,
};

/* Count one connection from addr unless a limit (0 = none) is reached. */
enum clients_refusal clients_admit(const struct sockaddr_storage *addr, uint32_t max_total,
				   uint32_t max_per_address);
void clients_release(const struct sockaddr_storage *addr);
uint32_t clients_total(void);

#endif
