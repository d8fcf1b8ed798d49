//! Listening addresses, including port 0: "any free port", which tests and
//! local setups use instead of guessing a free port and racing for it.
//!
//! Pingora binds its listeners itself, inside its services, and does not
//! say which port the kernel gave a port-0 listener. So a port-0 address is
//! resolved before the server starts: a socket with `SO_REUSEPORT` is bound
//! to it, the kernel picks the port, and that socket is kept (bound, never
//! listening, so it takes no connection) for the process's life. The port
//! is then reserved: no other socket can bind it unless it too sets
//! `SO_REUSEPORT` as the same user, which Pingora's listener for it does
//! (and only it: fixed ports are bound without `SO_REUSEPORT`, as before).
//!
//! [`wait_listening`] tells when Pingora's listeners are up, from the
//! kernel's socket table, without opening a connection to them.

use pingora_core::listeners::TcpSocketOptions;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A listening address with its port decided.
#[derive(Debug)]
pub struct ListenAddr {
    pub addr: SocketAddr,
    /// The reserving socket of a port-0 address.
    reservation: Option<Socket>,
}

impl ListenAddr {
    /// `addr` as is, or with a reserved free port if its port is 0.
    pub fn resolve(addr: SocketAddr) -> io::Result<Self> {
        if addr.port() != 0 {
            return Ok(Self {
                addr,
                reservation: None,
            });
        }
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("a TCP socket without an IP address"))?;
        Ok(Self {
            addr,
            reservation: Some(socket),
        })
    }

    /// The socket options Pingora must bind this address with.
    pub fn socket_options(&self) -> Option<TcpSocketOptions> {
        self.reservation.as_ref().map(|_| {
            let mut options = TcpSocketOptions::default();
            options.so_reuseport = Some(true);
            options
        })
    }
}

/// Wait until every address in `addrs` has a listening socket (Linux's
/// `/proc/net/tcp` and `tcp6`), up to `timeout`. Returns whether they all
/// did. Elsewhere, where there is no such table, it returns `true` at once.
pub fn wait_listening(addrs: &[SocketAddr], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let Some(listening) = listening_ports() else {
            return true;
        };
        if addrs.iter().all(|a| listening.contains(&a.port())) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Local ports in state LISTEN, or `None` without a `/proc/net/tcp`.
fn listening_ports() -> Option<Vec<u16>> {
    const LISTEN: &str = "0A";
    let mut ports = Vec::new();
    let mut found = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        found = true;
        // `sl local_address rem_address st ...`, addresses as HEX:HEXPORT.
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(local), Some(_remote), Some(state)) =
                (fields.nth(1), fields.next(), fields.next())
            else {
                continue;
            };
            if state != LISTEN {
                continue;
            }
            if let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    found.then_some(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_reserved_and_reusable_only_with_reuseport() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let reserved = ListenAddr::resolve(any).unwrap();
        assert_ne!(reserved.addr.port(), 0);
        // Someone else, without SO_REUSEPORT, cannot take it.
        assert!(std::net::TcpListener::bind(reserved.addr).is_err());
        // Our listener, with it, can; and then it is seen listening.
        let ours = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        ours.set_reuse_port(true).unwrap();
        ours.bind(&reserved.addr.into()).unwrap();
        assert!(!wait_listening(&[reserved.addr], Duration::ZERO));
        ours.listen(16).unwrap();
        assert!(wait_listening(&[reserved.addr], Duration::from_secs(1)));
        assert!(reserved.socket_options().unwrap().so_reuseport == Some(true));
    }

    #[test]
    fn fixed_ports_are_left_alone() {
        let fixed: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let resolved = ListenAddr::resolve(fixed).unwrap();
        assert_eq!(resolved.addr, fixed);
        assert!(resolved.socket_options().is_none());
    }
}
