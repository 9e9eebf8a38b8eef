#include "clients.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define CLIENT_BUCKETS 4096

struct client_count {
	uint8_t key[16];
	uint32_t count;
	struct client_count *next;
};

static pthread_mutex_t clients_lock = PTHREAD_MUTEX_INITIALIZER;
static struct client_count *buckets[CLIENT_BUCKETS];
static atomic_uint total_connections;

/* IPv4 addresses are keyed as v4-mapped IPv6 so both spellings count alike. */
static void address_key(const struct sockaddr_storage *ss, uint8_t key[16])
{
	memset(key, 0, 16);
	if (ss->ss_family == AF_INET6) {
		memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
	} else if (ss->ss_family == AF_INET) {
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
	}
}

static unsigned bucket_of(const uint8_t key[16])
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (int i = 0; i < 16; i++)
		h = (h ^ key[i]) * 16777619u;
	return h & (CLIENT_BUCKETS - 1);
}

static struct client_count **find_slot(const uint8_t key[16])
{
	struct client_count **p = &buckets[bucket_of(key)];
	while (*p && memcmp((*p)->key, key, 16) != 0)
		p = &(*p)->next;
	return p;
}

enum clients_refusal clients_admit(const struct sockaddr_storage *addr, uint32_t max_total,
				   uint32_t max_per_address)
{
	unsigned now = atomic_fetch_add(&total_connections, 1) + 1;
	if (max_total && now > max_total) {
		atomic_fetch_sub(&total_connections, 1);
		return CLIENTS_TOO_MANY_TOTAL;
	}
	uint8_t key[16];
	address_key(addr, key);
	enum clients_refusal verdict = CLIENTS_ADMITTED;
	pthread_mutex_lock(&clients_lock);
	struct client_count **slot = find_slot(key);
	if (*slot && max_per_address && (*slot)->count >= max_per_address) {
		verdict = CLIENTS_TOO_MANY_FROM_ADDRESS;
	} else if (*slot) {
		(*slot)->count++;
	} else {
		struct client_count *c = calloc(1, sizeof *c);
		if (c) {
			memcpy(c->key, key, 16);
			c->count = 1;
			*slot = c;
		} else {
			verdict = CLIENTS_TOO_MANY_TOTAL; /* no memory to count it: refuse */
		}
	}
	pthread_mutex_unlock(&clients_lock);
	if (verdict != CLIENTS_ADMITTED)
		atomic_fetch_sub(&total_connections, 1);
	return verdict;
}

void clients_release(const struct sockaddr_storage *addr)
{
	uint8_t key[16];
	address_key(addr, key);
	pthread_mutex_lock(&clients_lock);
	struct client_count **slot = find_slot(key);
	if (*slot && --(*slot)->count == 0) {
		struct client_count *gone = *slot;
		*slot = gone->next;
		free(gone);
	}
	pthread_mutex_unlock(&clients_lock);
	atomic_fetch_sub(&total_connections, 1);
}

uint32_t clients_total(void)
{
	return atomic_load(&total_connections);
}
