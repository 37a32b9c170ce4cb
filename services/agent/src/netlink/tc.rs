//! Traffic control over the same route-netlink socket: the `clsact` qdisc of a device and
//! direct-action `bpf` filters on its ingress and egress hooks (what `tc qdisc add dev X
//! clsact` and `tc filter replace dev X ingress prio P handle H bpf da fd F name N` do).
//!
//! Classic tc instead of TCX links for per-endpoint programs: creating or releasing a TCX
//! link waits for an RCU grace period under `rtnl_lock` (11-16 ms here, per program), a
//! filter change does not. Filters live with the device: they survive the agent and go when
//! the device is deleted.

use std::os::fd::{AsRawFd, BorrowedFd};

use futures::StreamExt;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpf, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};

use super::{Netlink, NetlinkError, nl_err};

/// `ETH_P_ALL`: a filter for every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// A hook of the `clsact` qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcHook {
    /// Packets the device receives.
    Ingress,
    /// Packets the device transmits.
    Egress,
}

impl TcHook {
    /// The filter parent of this hook (`ffff:fff2` / `ffff:fff3`).
    fn parent(self) -> TcHandle {
        TcHandle {
            major: TcHandle::CLSACT.major,
            minor: match self {
                TcHook::Ingress => TcHandle::MIN_INGRESS,
                TcHook::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            TcHook::Ingress => "ingress",
            TcHook::Egress => "egress",
        }
    }
}

/// A `bpf` filter on a clsact hook, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    /// Its priority (lower runs first).
    pub priority: u16,
    /// Its handle within the priority.
    pub handle: u32,
    /// The name it was given when attached (`TCA_BPF_NAME`).
    pub name: String,
    /// The id of the program it runs.
    pub program_id: u32,
    /// That program's tag (a hash of its instructions, map references left out).
    pub tag: [u8; TcFilterBpf::BPF_TAG_SIZE],
    /// Direct-action mode: the program's return value is the verdict.
    pub direct_action: bool,
}

/// The kernel's `tcm_info` of a filter: priority in the upper half, protocol below.
fn filter_info(priority: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be())
}

impl Netlink {
    /// Sends `message` and waits for the kernel's answer (its ack, or every part of a dump).
    async fn tc_request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<Vec<TcMessage>, NetlinkError> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | flags;
        let mut handle = self.handle.clone();
        let mut responses = match handle.request(request) {
            Ok(responses) => responses,
            Err(e) => return Err(nl_err(op())(e)),
        };
        let mut messages = Vec::new();
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::Error(e) => {
                    return Err(nl_err(op())(rtnetlink::Error::NetlinkError(e)));
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewTrafficFilter(m)
                    | RouteNetlinkMessage::NewQueueDiscipline(m),
                ) => messages.push(m),
                _ => {}
            }
        }
        Ok(messages)
    }

    /// Adds the `clsact` qdisc to link `index`; `Ok(false)` when it already has one.
    pub async fn ensure_clsact(&self, index: u32) -> Result<bool, NetlinkError> {
        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = TcHandle::CLSACT;
        message.header.handle = TcHandle {
            major: TcHandle::CLSACT.major,
            minor: 0,
        };
        message
            .attributes
            .push(TcAttribute::Kind("clsact".to_owned()));
        match self
            .tc_request(
                RouteNetlinkMessage::NewQueueDiscipline(message),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                || format!("add qdisc clsact on link #{index}"),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The `bpf` filters on `hook` of link `index`, in the kernel's order (priority, then
    /// handle). A device without a clsact qdisc has none.
    pub async fn bpf_filters(
        &self,
        index: u32,
        hook: TcHook,
    ) -> Result<Vec<BpfFilter>, NetlinkError> {
        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = hook.parent();
        let messages = match self
            .tc_request(
                RouteNetlinkMessage::GetTrafficFilter(message),
                NLM_F_DUMP,
                || format!("list {} filters of link #{index}", hook.as_str()),
            )
            .await
        {
            Ok(messages) => messages,
            // No clsact qdisc (EINVAL), or the link is gone.
            Err(e) if e.is_not_found() || e.errno() == Some(libc::EINVAL) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut filters = Vec::new();
        for message in messages {
            let is_bpf = message
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(kind) if kind == TcFilterBpf::KIND));
            // The dump also lists each priority's classifier itself, without options.
            let Some(options) = message.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(options) => Some(options),
                _ => None,
            }) else {
                continue;
            };
            if !is_bpf {
                continue;
            }
            let mut filter = BpfFilter {
                priority: (message.header.info >> 16) as u16,
                handle: u32::from(message.header.handle.major) << 16
                    | u32::from(message.header.handle.minor),
                name: String::new(),
                program_id: 0,
                tag: [0; TcFilterBpf::BPF_TAG_SIZE],
                direct_action: false,
            };
            for option in options {
                match option {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => {
                        filter.name.clone_from(name);
                    }
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.program_id = *id,
                    TcOption::Bpf(TcFilterBpfOption::ProgTag(tag)) => filter.tag = *tag,
                    TcOption::Bpf(TcFilterBpfOption::Flags(flags)) => {
                        filter.direct_action = flags.contains(TcBpfFlags::DirectAction);
                    }
                    _ => {}
                }
            }
            filters.push(filter);
        }
        Ok(filters)
    }

    /// Attaches `program` to `hook` of link `index` as the direct-action `bpf` filter
    /// `priority`/`handle` named `name`. With `replace`, a filter already there is switched
    /// to `program` atomically (packets see the old program or the new one, never none);
    /// without, an existing filter is an error (`EEXIST`).
    #[allow(clippy::too_many_arguments)]
    pub async fn set_bpf_filter(
        &self,
        index: u32,
        hook: TcHook,
        priority: u16,
        handle: u32,
        program: BorrowedFd<'_>,
        name: &str,
        replace: bool,
    ) -> Result<(), NetlinkError> {
        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = hook.parent();
        message.header.handle = TcHandle::from(handle);
        message.header.info = filter_info(priority);
        message.attributes = vec![
            TcAttribute::Kind(TcFilterBpf::KIND.to_owned()),
            TcAttribute::Options(vec![
                TcOption::Bpf(TcFilterBpfOption::ProgFd(program.as_raw_fd() as u32)),
                TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_owned())),
                TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
            ]),
        ];
        // cls_bpf changes an existing filter in place when neither EXCL is set nor the
        // handle is new; CREATE lets it make one.
        let flags = if replace {
            NLM_F_ACK | NLM_F_CREATE
        } else {
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        };
        self.tc_request(
            RouteNetlinkMessage::NewTrafficFilter(message),
            flags,
            || {
                format!(
                    "{} bpf filter {name} ({} prio {priority} handle {handle:#x}) on link #{index}",
                    if replace { "replace" } else { "add" },
                    hook.as_str()
                )
            },
        )
        .await
        .map(drop)
    }

    /// Deletes the filter `priority`/`handle` from `hook` of link `index`; `Ok(false)` when
    /// there was none.
    pub async fn delete_filter(
        &self,
        index: u32,
        hook: TcHook,
        priority: u16,
        handle: u32,
    ) -> Result<bool, NetlinkError> {
        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = hook.parent();
        message.header.handle = TcHandle::from(handle);
        message.header.info = filter_info(priority);
        match self
            .tc_request(
                RouteNetlinkMessage::DelTrafficFilter(message),
                NLM_F_ACK,
                || {
                    format!(
                        "delete {} filter prio {priority} handle {handle:#x} of link #{index}",
                        hook.as_str()
                    )
                },
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() || e.errno() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_info_carries_priority_and_every_protocol() {
        // What `tc` sends for `prio 1 protocol all` (the protocol in network order).
        let info = filter_info(1);
        assert_eq!(info >> 16, 1);
        assert_eq!((info & 0xffff) as u16, u16::from_be(0x0003));
        assert_eq!(TcHook::Ingress.parent(), TcHandle::from(0xffff_fff2));
        assert_eq!(TcHook::Egress.parent(), TcHandle::from(0xffff_fff3));
    }
}
