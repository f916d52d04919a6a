//! Which local user a loopback TCP client runs as.
//!
//! Every account on a machine can connect to a loopback port, so a front door without an
//! API key would serve other users the signed-in session. The kernel knows who owns each
//! end of a local connection: the client's end is a row of its socket tables
//! (`/proc/net/tcp`, `/proc/net/tcp6`) whose local address is the client's and whose remote
//! address is poed's, with the owner's uid. The unix socket checks its peer the same way,
//! with `SO_PEERCRED`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;

/// One accepted connection's two ends, and (once asked) the user of its client.
#[derive(Debug, Clone)]
pub struct Peer {
    pub client: SocketAddr,
    /// poed's end (`None` if the socket could not tell).
    pub server: Option<SocketAddr>,
    /// Looked up at the first request that asks, then kept for the connection's others.
    uid: Arc<OnceLock<Result<u32, String>>>,
}

impl Peer {
    /// The uid of the client's process, from the kernel's socket tables.
    pub fn uid(&self) -> Result<u32, String> {
        self.uid
            .get_or_init(|| match self.server {
                Some(server) => uid_of_client(self.client, server),
                None => Err("the connection's own address is unknown".into()),
            })
            .clone()
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Peer {
        Peer {
            client: *stream.remote_addr(),
            server: stream.io().local_addr().ok(),
            uid: Arc::new(OnceLock::new()),
        }
    }
}

/// The kernel's tables of TCP sockets, IPv4 and IPv6.
const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

/// The uid owning the client end of the TCP connection from `client` to `server` (both as
/// seen by poed).
pub fn uid_of_client(client: SocketAddr, server: SocketAddr) -> Result<u32, String> {
    let (client, server) = (canonical(client), canonical(server));
    for table in TABLES {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {table}: {e}")),
        };
        if let Some(uid) = find_owner(&text, client, server) {
            return Ok(uid);
        }
    }
    Err(format!(
        "no socket of {client} connected to {server} in the kernel's tables"
    ))
}

/// The uid of the row of `table` (the text of `/proc/net/tcp` or `tcp6`) whose local
/// address is `client` and remote address `server`.
pub fn find_owner(table: &str, client: SocketAddr, server: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1).and_then(|f| parse_address(f))?;
        let remote = fields.get(2).and_then(|f| parse_address(f))?;
        if local != client || remote != server {
            return None;
        }
        fields.get(7)?.parse().ok()
    })
}

/// An address as the kernel prints it: the IP's 32-bit words in the machine's byte order,
/// in hex, a colon, the port in hex (`0100007F:1F90` is 127.0.0.1:8080 on x86).
fn parse_address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match (ip.len(), bytes.as_slice()) {
        (8, &[a, b, c, d]) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        (32, _) => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

/// IPv4 addresses written as IPv6 (`::ffff:127.0.0.1`) as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hex of an IPv4 address as the kernel prints it on this machine.
    fn hex4(ip: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip))
    }

    fn hex6(ip: Ipv6Addr) -> String {
        ip.octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    }

    #[test]
    fn the_client_end_of_a_connection_names_its_owner() {
        let server: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let client: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let lo = hex4([127, 0, 0, 1]);
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             \x20  0: {lo}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0\n\
             \x20  1: {lo}:1F90 {lo}:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0\n\
             \x20  2: {lo}:9C40 {lo}:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 3 1 0\n"
        );
        // The server's own end (uid 1000) is not the client's (uid 1001).
        assert_eq!(find_owner(&table, client, server), Some(1001));
        let other: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
        assert_eq!(find_owner(&table, other, server), None);
    }

    #[test]
    fn ipv6_rows_and_ipv4_written_as_ipv6_are_read() {
        let server: SocketAddr = "[::1]:8080".parse().expect("addr");
        let client: SocketAddr = "[::1]:40000".parse().expect("addr");
        let lo = hex6(Ipv6Addr::LOCALHOST);
        let mapped = hex6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        let table = format!(
            "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             \x20  0: {lo}:9C40 {lo}:1F90 01 00000000:00000000 00:00000000 00000000   500        0 1 1 0\n\
             \x20  1: {mapped}:9C41 {mapped}:1F90 01 00000000:00000000 00:00000000 00000000   501        0 1 1 0\n"
        );
        assert_eq!(find_owner(&table, client, server), Some(500));
        let v4 = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(find_owner(&table, v4(40001), v4(8080)), Some(501));
    }

    #[test]
    fn this_process_finds_itself_as_the_client_of_a_real_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("addr");
        let stream = std::net::TcpStream::connect(server).expect("connect");
        let client = stream.local_addr().expect("addr");
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(uid_of_client(client, server), Ok(me));
        assert!(uid_of_client(SocketAddr::from(([127, 0, 0, 1], 1)), server).is_err());
    }
}
