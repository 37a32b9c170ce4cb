/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * The ipcache (kino_ipcache, an LPM trie written by the agent): the security identity of a
 * packet's peer, its address's longest prefix's, world when no prefix covers it; and, between
 * nodes (overlay.h), the node hosting a prefix (its tunnel endpoint) and whether an underlay
 * address is a known node's.
 */
#ifndef KINO_LIB_IPCACHE_H
#define KINO_LIB_IPCACHE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "kino_maps.h"
#include "maps.h"
#include "parse.h"

/*
 * The ipcache entry of the peer of a packet (either family: parse.h) at a point of
 * `direction`: its destination at egress, its source at ingress — the peer's longest prefix;
 * NULL when none covers it (world).
 */
static __always_inline struct ipcache_entry *ipcache_peer(__u8 family, const struct flow4 *f,
							  __u8 direction)
{
	struct ipcache_key key = {};

	key.family = family;
	if (family == KINO_FAMILY_IPV4) {
		key.prefixlen = KINO_IPCACHE_PREFIX_STATIC + 32;
		key.addr.ip4 = direction == KINO_DIR_EGRESS ? f->daddr : f->saddr;
	} else {
		const struct flow6 *f6 = flow6_of(f);
		const union kino_addr *addr = direction == KINO_DIR_EGRESS ? &f6->daddr : &f6->saddr;

		key.prefixlen = KINO_IPCACHE_PREFIX_STATIC + 128;
		__builtin_memcpy(key.addr.ip6, addr->ip6, sizeof(key.addr.ip6));
	}
	return bpf_map_lookup_elem(&kino_ipcache, &key);
}

/* The identity of the peer of a packet at a point of `direction` (ipcache_peer): world when
 * no prefix covers it. */
static __always_inline __u32 ipcache_peer_identity(__u8 family, const struct flow4 *f,
						   __u8 direction)
{
	struct ipcache_entry *e = ipcache_peer(family, f, direction);

	return e ? e->identity : KINO_IDENTITY_WORLD;
}

/* The ipcache entry of one address: IPv4 (network order, in the first 4 bytes) or the 16
 * IPv6 bytes of `addr`. NULL when no prefix covers it. */
static __always_inline struct ipcache_entry *ipcache_of(__u8 family, const union kino_addr *addr)
{
	struct ipcache_key key = {};

	key.family = family;
	if (family == KINO_FAMILY_IPV4) {
		key.prefixlen = KINO_IPCACHE_PREFIX_STATIC + 32;
		key.addr.ip4 = addr->ip4;
	} else {
		key.prefixlen = KINO_IPCACHE_PREFIX_STATIC + 128;
		__builtin_memcpy(key.addr.ip6, addr->ip6, sizeof(key.addr.ip6));
	}
	return bpf_map_lookup_elem(&kino_ipcache, &key);
}

#endif /* KINO_LIB_IPCACHE_H */
