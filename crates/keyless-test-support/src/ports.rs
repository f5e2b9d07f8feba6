//! Loopback ports for processes that must be told theirs up front (`keyless serve --listen`, a
//! benchmark's servers), shared by the tests and keyless-bench.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, PoisonError};

/// `n` loopback ports free right now, never handed out before by this process: the kernel may
/// give a port just released to the next `bind(0)`, before the child it was picked for binds it.
/// Each is released for the child to bind (another program may still take one, rarely).
pub fn free_ports<const N: usize>() -> std::io::Result<[SocketAddr; N]> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut held = Vec::new();
    let mut picked = [any; N];
    let mut found = 0;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    while found < N {
        if held.len() > 1000 {
            return Err(std::io::Error::other("no loopback port left that was not handed out already"));
        }
        let listener = TcpListener::bind(any)?;
        let addr = listener.local_addr()?;
        if handed_out.insert(addr.port()) {
            picked[found] = addr;
            found += 1;
        }
        // Held until all are picked: the kernel gives none of them twice meanwhile.
        held.push(listener);
    }
    Ok(picked)
}

/// One loopback port, as [`free_ports`].
pub fn free_port() -> std::io::Result<SocketAddr> {
    free_ports::<1>().map(|[addr]| addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_port_is_handed_out_twice() {
        let mut seen = BTreeSet::new();
        for _ in 0..50 {
            let [a, b] = free_ports::<2>().expect("ports");
            assert!(a.ip().is_loopback() && b.ip().is_loopback());
            assert!(seen.insert(a.port()) && seen.insert(b.port()), "{a} or {b} handed out again");
            let c = free_port().expect("a port");
            assert!(seen.insert(c.port()), "{c} handed out again");
        }
    }
}
