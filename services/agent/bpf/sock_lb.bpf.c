/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Socket-level load balancing (issue #14, Cilium's socket LB / kube-proxy replacement):
 * cgroup v2 sock_addr programs attached with BPF_F_ALLOW_MULTI at the cgroup root.
 *
 *   connect4/6      TCP and connected UDP: a connect to a frontend (VIP:port) goes to a
 *                   backend instead — translated once, so the connection's packets pay
 *                   nothing; no active backend refuses it with ECONNREFUSED.
 *   sendmsg4/6      unconnected UDP: each datagram to a frontend goes to a backend.
 *   recvmsg4/6      unconnected UDP: a datagram from a backend the socket was sent to shows
 *                   the frontend as its source.
 *   getpeername4/6  a translated connected socket's peer is the frontend.
 *
 * Scope: one machine holds every node of a test cluster (and the "external host") in one
 * cgroup tree, and each node's agent attaches its own programs at its root, so every
 * socket of the machine runs every agent's programs. A program acts only on sockets whose
 * network namespace is in ITS node's kino_lb_netns (its pods', its own) — by
 * bpf_get_netns_cookie — and leaves any other socket exactly as it was.
 *
 * Each translation is reported to kino_events as a struct sock_lb_event.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kino_maps.h"
#include "lib/maps.h"
#include "lib/lb_maps.h"
#include "lib/lb.h"

#define SYS_REJECT  0
#define SYS_PROCEED 1

/* This node's entry for the socket's network namespace; NULL: not this node's socket. */
static __always_inline struct lb_netns *own_netns(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);

	return bpf_map_lookup_elem(&kino_lb_netns, &cookie);
}

/* The address the socket asked for (IPv4 or IPv6) as a frontend key. */
static __always_inline void frontend_key(struct bpf_sock_addr *ctx, __u8 family,
					 struct lb_frontend_key *key)
{
	if (family == KINO_FAMILY_IPV4) {
		key->addr.ip4 = ctx->user_ip4;
	} else {
		__u32 *ip6 = (__u32 *)key->addr.ip6;

		ip6[0] = ctx->user_ip6[0];
		ip6[1] = ctx->user_ip6[1];
		ip6[2] = ctx->user_ip6[2];
		ip6[3] = ctx->user_ip6[3];
	}
	key->port = (__be16)ctx->user_port;
	key->protocol = (__u8)ctx->protocol;
	key->family = family;
}

static __always_inline void set_address(struct bpf_sock_addr *ctx, __u8 family,
					const union kino_addr *addr, __be16 port)
{
	if (family == KINO_FAMILY_IPV4) {
		ctx->user_ip4 = addr->ip4;
	} else {
		const __u32 *ip6 = (const __u32 *)addr->ip6;

		ctx->user_ip6[0] = ip6[0];
		ctx->user_ip6[1] = ip6[1];
		ctx->user_ip6[2] = ip6[2];
		ctx->user_ip6[3] = ip6[3];
	}
	ctx->user_port = (__u32)port;
}

/*
 * Reports a translation to kino_events (a full ring is counted as lost). A subprogram: its
 * prototype also puts struct sock_lb_event into the object's BTF.
 */
static __noinline int emit_sock_lb(const struct sock_lb_event *known)
{
	__u32 zero = 0;
	struct event_counters *counters = bpf_map_lookup_elem(&kino_event_counters, &zero);
	struct sock_lb_event *ev = bpf_ringbuf_reserve(&kino_events, sizeof(*ev), 0);

	if (!ev) {
		if (counters)
			counters->lost++;
		return 0;
	}
	__builtin_memcpy(ev, known, sizeof(*ev));
	bpf_ringbuf_submit(ev, 0);
	if (counters)
		counters->emitted++;
	return 0;
}

static __always_inline void report(const struct lb_netns *ns, const struct lb_frontend_key *key,
				   const struct lb_frontend *fe, const struct lb_backend *backend,
				   __u32 backend_id)
{
	struct sock_lb_event ev = {};

	ev.flow.ktime_ns = bpf_ktime_get_ns();
	ev.flow.endpoint_id = ns->endpoint_id;
	ev.flow.family = key->family;
	ev.flow.protocol = key->protocol;
	ev.flow.ethertype = key->family == KINO_FAMILY_IPV4 ? 0x0800 : 0x86dd;
	if (key->family == KINO_FAMILY_IPV4)
		ev.flow.saddr.ip4 = ns->ipv4;
	else if (ns->flags & KINO_LB_NETNS_F_IPV6)
		__builtin_memcpy(ev.flow.saddr.ip6, ns->ipv6, sizeof(ns->ipv6));
	ev.flow.daddr = key->addr;
	ev.flow.dport = key->port;
	if (ns->endpoint_id) {
		ev.flow.src_identity = ns->identity;
		ev.flow.flags = KINO_EVENT_F_SRC_IDENTITY;
	}
	ev.flow.type = KINO_EVENT_SOCK_LB;
	ev.flow.verdict = KINO_EVENT_FORWARDED;
	ev.flow.direction = KINO_DIR_EGRESS;
	ev.flow.obs_point = KINO_OBS_SOCK;
	ev.backend_addr = backend->addr;
	ev.backend_port = backend->port;
	ev.frontend_id = fe->id;
	ev.backend_id = backend_id;
	emit_sock_lb(&ev);
}

/* connect / sendmsg: a frontend's address becomes a backend's. */
static __always_inline int translate(struct bpf_sock_addr *ctx, __u8 family)
{
	struct lb_frontend_key key = {};
	struct lb_reverse_sk_key rkey = {};
	struct lb_reverse_sk rval = {};
	union kino_addr client = {};
	struct lb_backend *backend;
	struct lb_frontend *fe;
	struct lb_netns *ns;
	__u32 backend_id = 0;
	__u64 cookie;

	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SYS_PROCEED;
	ns = own_netns(ctx);
	if (!ns)
		return SYS_PROCEED;
	frontend_key(ctx, family, &key);
	fe = bpf_map_lookup_elem(&kino_lb_frontends, &key);
	if (!fe)
		return SYS_PROCEED;
	if (family == KINO_FAMILY_IPV4)
		client.ip4 = ns->ipv4;
	else if (ns->flags & KINO_LB_NETNS_F_IPV6)
		__builtin_memcpy(client.ip6, ns->ipv6, sizeof(client.ip6));
	cookie = bpf_get_socket_cookie(ctx);
	backend = lb_select_backend(fe, &client, family,
				    (__u32)cookie ^ (__u32)(cookie >> 32), &backend_id);
	if (!backend || backend->family != family) {
		/* As Cilium's socket LB: a service without backends refuses. */
		bpf_set_retval(-ECONNREFUSED);
		return SYS_REJECT;
	}
	rkey.cookie = cookie;
	rkey.addr = backend->addr;
	rkey.port = backend->port;
	rkey.family = family;
	rval.addr = key.addr;
	rval.port = key.port;
	rval.family = family;
	rval.frontend_id = fe->id;
	bpf_map_update_elem(&kino_lb_reverse_sk, &rkey, &rval, BPF_ANY);
	set_address(ctx, family, &backend->addr, backend->port);
	report(ns, &key, fe, backend, backend_id);
	return SYS_PROCEED;
}

/* recvmsg / getpeername: a backend's address the socket was translated to shows as the
 * frontend it asked for. */
static __always_inline int reverse(struct bpf_sock_addr *ctx, __u8 family)
{
	struct lb_reverse_sk_key rkey = {};
	struct lb_frontend_key seen = {};
	struct lb_reverse_sk *rval;

	if (!own_netns(ctx))
		return SYS_PROCEED;
	frontend_key(ctx, family, &seen);
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.addr = seen.addr;
	rkey.port = seen.port;
	rkey.family = family;
	rval = bpf_map_lookup_elem(&kino_lb_reverse_sk, &rkey);
	if (!rval)
		return SYS_PROCEED;
	set_address(ctx, family, &rval->addr, rval->port);
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int kino_sock4_connect(struct bpf_sock_addr *ctx)
{
	return translate(ctx, KINO_FAMILY_IPV4);
}

SEC("cgroup/connect6")
int kino_sock6_connect(struct bpf_sock_addr *ctx)
{
	return translate(ctx, KINO_FAMILY_IPV6);
}

SEC("cgroup/sendmsg4")
int kino_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return translate(ctx, KINO_FAMILY_IPV4);
}

SEC("cgroup/sendmsg6")
int kino_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return translate(ctx, KINO_FAMILY_IPV6);
}

SEC("cgroup/recvmsg4")
int kino_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return reverse(ctx, KINO_FAMILY_IPV4);
}

SEC("cgroup/recvmsg6")
int kino_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return reverse(ctx, KINO_FAMILY_IPV6);
}

SEC("cgroup/getpeername4")
int kino_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return reverse(ctx, KINO_FAMILY_IPV4);
}

SEC("cgroup/getpeername6")
int kino_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	return reverse(ctx, KINO_FAMILY_IPV6);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
