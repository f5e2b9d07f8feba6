//! `keyless node --add-addresses`: the listen addresses put on the node's loopback link, so that
//! pods reach them. 169.254.170.23 is on no link of a node by itself; EKS Pod Identity's agent adds
//! it to a link of its own at start. An address on `lo` is local to the node like any other: a
//! pod's packet to it (through its default route, the node) is delivered to the listener bound to
//! it. Needs CAP_NET_ADMIN, so the chart runs it in an init container of its own (with only that
//! capability), and the server without it.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeader, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// The loopback link's index, as the kernel numbers it.
fn loopback_index() -> io::Result<u32> {
    let text = std::fs::read_to_string("/sys/class/net/lo/ifindex")?;
    text.trim().parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unreadable ifindex of lo"))
}

/// Whether `ip` is an address keyless node may add: link-local (169.254.0.0/16) or unique local
/// IPv6 (fd00:ec2::23 is EKS Pod Identity's). Anything else could take over a real address.
pub fn may_add(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Adds `ip` (a host address: /32 or /128) to `lo`; an address already there is fine.
pub fn add_to_loopback(ip: IpAddr) -> io::Result<bool> {
    let mut message = AddressMessage::default();
    message.header = AddressHeader {
        family: match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        },
        prefix_len: if ip.is_ipv4() { 32 } else { 128 },
        scope: AddressScope::Universe,
        index: loopback_index()?,
        ..AddressHeader::default()
    };
    message.attributes.push(AddressAttribute::Local(ip));
    message.attributes.push(AddressAttribute::Address(ip));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let mut request = NetlinkMessage::new(header, RouteNetlinkMessage::NewAddress(message).into());
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    socket.send(&bytes, 0)?;
    let mut answer = vec![0u8; 8192];
    let read = socket.recv(&mut &mut answer[..], 0)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(answer.get(..read).unwrap_or_default())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("unreadable netlink answer: {e}")))?;
    match reply.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(true),
            Some(code) if code.get() == -rustix::io::Errno::EXIST.raw_os_error() => Ok(false),
            Some(_) => Err(e.to_io()),
        },
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected netlink answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_link_local_and_unique_local_addresses_may_be_added() {
        for ok in ["169.254.170.23", "169.254.169.254", "fd00:ec2::23"] {
            assert!(may_add(ok.parse().expect("an IP")), "{ok}");
        }
        for refused in ["10.0.0.1", "127.0.0.1", "8.8.8.8", "::1", "2001:db8::1"] {
            assert!(!may_add(refused.parse().expect("an IP")), "{refused}");
        }
    }
}
