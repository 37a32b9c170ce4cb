/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * The ipcache (kino_ipcache, an LPM trie written by the agent): the security identity of a
 * peer address, its longest prefix's, world when no prefix covers it.
 */
#ifndef KINO_LIB_IPCACHE_H
#define KINO_LIB_IPCACHE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "kino_maps.h"
#include "maps.h"

/* The identity of an IPv4 peer: its longest ipcache prefix; world when none covers it. */
static __always_inline __u32 ipcache_identity4(__be32 addr)
{
	struct ipcache_key key = {};

	key.prefixlen = KINO_IPCACHE_PREFIX_STATIC + 32;
	key.family = KINO_FAMILY_IPV4;
	key.addr.ip4 = addr;
	struct ipcache_entry *e = bpf_map_lookup_elem(&kino_ipcache, &key);

	return e ? e->identity : KINO_IDENTITY_WORLD;
}

/* The identity of an IPv6 peer, as ipcache_identity4. */
static __always_inline __u32 ipcache_identity6(const union kino_addr *addr)
{
	struct ipcache_key key = {};

	key.prefixlen = KINO_IPCACHE_PREFIX_STATIC + 128;
	key.family = KINO_FAMILY_IPV6;
	__builtin_memcpy(key.addr.ip6, addr->ip6, sizeof(key.addr.ip6));
	struct ipcache_entry *e = bpf_map_lookup_elem(&kino_ipcache, &key);

	return e ? e->identity : KINO_IDENTITY_WORLD;
}

#endif /* KINO_LIB_IPCACHE_H */
