//! Which user a loopback connection comes from, so the credential listener can serve only its own
//! user's processes (`keyless exec` always; `keyless serve` with `listen_uid_check`).
//!
//! IMDSv2, the GCE metadata server and Azure IMDS need no secret by design (in a pod, only the
//! pod's containers reach loopback). On a shared host (a CI runner, a multi-user VM, a container on
//! the host network) any local user reaches it too. TCP has no `SO_PEERCRED`, but the kernel knows
//! who owns the other end: the peer's socket is the one whose local address is our peer address
//! and whose remote address is our local address, and sock_diag (the netlink interface `ss` uses)
//! looks it up by that 4-tuple exactly. One request and one answer per connection, whatever the
//! number of sockets on the host: scanning `/proc/net/tcp` instead would cost a parse of every
//! socket's line per connection, which any local user could inflate.

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// The user whose processes alone are served: the effective uid keyless runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnUser {
    uid: u32,
}

/// What the kernel says about a connection's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A socket of keyless's own user.
    Own,
    /// A socket of user `uid`.
    Other { uid: u32 },
    /// No live socket has the peer's address (it closed already, or it is on another host), or
    /// the kernel could not be asked: refused, since nothing vouches for it.
    Unknown { why: String },
}

impl OwnUser {
    pub fn current() -> Self {
        Self { uid: rustix::process::geteuid().as_raw() }
    }

    pub fn uid(self) -> u32 {
        self.uid
    }

    /// Who is at the other end of the accepted connection `local` <- `peer`. Blocking: a few
    /// system calls, one of which can wait in the kernel (see [`socket_owner`]).
    pub fn judge(self, local: SocketAddr, peer: SocketAddr) -> Peer {
        match socket_owner(peer, local) {
            Ok(Some(uid)) if uid == self.uid => Peer::Own,
            Ok(Some(uid)) => Peer::Other { uid },
            Ok(None) => Peer::Unknown { why: "no live socket of this host has its address".to_owned() },
            Err(e) => Peer::Unknown { why: format!("the kernel's socket table (sock_diag) could not be asked: {e}") },
        }
    }
}

/// TCP states of a socket still held by its process. `TIME_WAIT` and request sockets are left
/// out: the kernel reports them with uid 0, and their process can no longer read an answer.
const LIVE_STATES: [u8; 6] = [
    1,  // ESTABLISHED
    4,  // FIN_WAIT1
    5,  // FIN_WAIT2
    8,  // CLOSE_WAIT
    9,  // LAST_ACK
    11, // CLOSING
];

/// Largest answer read: one `inet_diag_msg` (72 bytes) in a netlink header, or an error message
/// quoting the request; no attributes are asked for.
const ANSWER_BYTES: usize = 1024;

/// The uid owning the live TCP socket with local address `local` and remote address `remote`
/// in this network namespace, if there is one.
fn socket_owner(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u32>> {
    // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d; its socket is an IPv4 one.
    let (family, local_ip, remote_ip) = match (local.ip().to_canonical(), remote.ip().to_canonical()) {
        (l @ IpAddr::V4(_), r @ IpAddr::V4(_)) => (AF_INET, l, r),
        _ => (AF_INET6, local.ip(), remote.ip()),
    };
    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: SocketId {
            source_port: local.port(),
            destination_port: remote.port(),
            source_address: local_ip,
            destination_address: remote_ip,
            interface_id: 0,
            // INET_DIAG_NOCOOKIE: any socket with this 4-tuple (a cookie would have to match).
            cookie: [0xff; 8],
        },
    };
    // Without NLM_F_DUMP: the kernel looks up this one socket rather than listing them all.
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);

    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    // The kernel answers within the send itself (sock_diag runs in the sender's context), so the
    // answer is queued before `send` returns and a non-blocking read finds it. The send itself can
    // wait (a module load, sock_diag's lock): callers on an async runtime run this on its blocking
    // pool (`crate::listener`).
    socket.set_non_blocking(true)?;
    socket.send(&bytes, 0)?;
    let mut answer = [0u8; ANSWER_BYTES];
    let read = socket.recv(&mut &mut answer[..], 0)?;
    let answer = answer.get(..read).unwrap_or_default();
    let reply = NetlinkMessage::<SockDiagMessage>::deserialize(answer)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("unreadable sock_diag answer: {e}")))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(found)) => {
            Ok(LIVE_STATES.contains(&found.header.state).then_some(found.header.uid))
        }
        NetlinkPayload::Error(e) => match e.code {
            Some(code) if code.get() == -libc_enoent() => Ok(None),
            _ => Err(e.to_io()),
        },
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected sock_diag answer")),
    }
}

/// ENOENT: no socket with this 4-tuple.
fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn both_ends_of_a_loopback_connection_are_this_user_and_a_closed_one_is_unknown() {
        let own = OwnUser::current();
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let listener = std::net::TcpListener::bind(bind).unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, peer) = listener.accept().unwrap();
            let local = server.local_addr().unwrap();
            assert_eq!(own.judge(local, peer), Peer::Own, "{bind}");
            // The client's own view of the same connection: the listener's socket, ours too.
            assert_eq!(own.judge(client.local_addr().unwrap(), local), Peer::Own, "{bind}");
            drop(client);
            drop(server);
            // A port nobody has connected from.
            let nobody = SocketAddr::new(peer.ip(), 1);
            assert!(matches!(own.judge(local, nobody), Peer::Unknown { .. }), "{bind}");
        }
    }

    #[test]
    fn an_ipv4_client_of_a_dual_stack_listener_is_found() {
        let listener = std::net::TcpListener::bind("[::]:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, peer) = listener.accept().unwrap();
        assert!(matches!(peer.ip(), IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some()), "{peer}");
        assert_eq!(OwnUser::current().judge(server.local_addr().unwrap(), peer), Peer::Own);
    }
}
