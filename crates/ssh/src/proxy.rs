//! The PROXY protocol (HAProxy's, versions 1 and 2) from trusted load
//! balancers: a connection from an address in `server.proxy_protocol`
//! must begin with a header naming the user's own address, and that
//! address is the connection's source from then on (limits, blocks,
//! every event). Connections from other addresses are SSH from the
//! first byte: nobody else can claim an address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The version 2 signature.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most this long, CRLF included.
const V1_MAX: usize = 107;
/// The longest version 2 address block accepted (TLVs included).
const V2_MAX: usize = 1024;

/// What the balancer said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// On behalf of this client.
    Proxied(SocketAddr),
    /// The balancer's own connection (a health check) or an address
    /// family the gateway does not use: the balancer is the source.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// Closed before sending a byte (a plain TCP health check).
    #[error("closed before sending a PROXY header")]
    Empty,
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

fn invalid(why: impl Into<String>) -> ProxyError {
    ProxyError::Invalid(why.into())
}

/// Reads exactly the header from `r` (nothing after it), so the SSH
/// stream that follows is untouched.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, ProxyError> {
    let mut head = [0u8; 12];
    if r.read(&mut head[..1]).await? == 0 {
        return Err(ProxyError::Empty);
    }
    r.read_exact(&mut head[1..]).await.map_err(closed)?;
    if head == V2_SIG {
        let mut fixed = [0u8; 4];
        r.read_exact(&mut fixed).await.map_err(closed)?;
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if len > V2_MAX {
            return Err(invalid(format!("an address block of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.map_err(closed)?;
        return parse_v2(fixed[0], fixed[1], &body);
    }
    if !head.starts_with(b"PROXY ") {
        return Err(invalid(
            "the connection did not start with one (is the balancer set to send-proxy?)",
        ));
    }
    let mut line = head.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(invalid("a version 1 line longer than 107 bytes"));
        }
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await.map_err(closed)?;
        line.push(b[0]);
    }
    parse_v1(&line)
}

fn closed(e: std::io::Error) -> ProxyError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        invalid("the connection closed inside the header")
    } else {
        ProxyError::Io(e)
    }
}

/// `PROXY TCP4 192.0.2.7 198.51.100.1 51234 2222\r\n`.
pub(crate) fn parse_v1(line: &[u8]) -> Result<Header, ProxyError> {
    let text = std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.strip_suffix("\r\n"))
        .ok_or_else(|| invalid("a version 1 line that is not text ending in CRLF"))?;
    let words: Vec<&str> = text.split(' ').collect();
    match words.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Header::Local),
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| invalid(format!("source {src:?} is not an address")))?;
            if ip.is_ipv4() != (*proto == "TCP4") {
                return Err(invalid(format!("{proto} with source {src}")));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| invalid(format!("source port {sport:?}")))?;
            Ok(Header::Proxied(SocketAddr::new(ip, port)))
        }
        _ => Err(invalid(
            "a version 1 line that is not PROXY TCP4|TCP6|UNKNOWN …",
        )),
    }
}

/// The version 2 header after the signature: version and command,
/// family and protocol, and the address block.
pub(crate) fn parse_v2(ver_cmd: u8, family: u8, body: &[u8]) -> Result<Header, ProxyError> {
    if ver_cmd >> 4 != 2 {
        return Err(invalid(format!("version {}", ver_cmd >> 4)));
    }
    match ver_cmd & 0x0f {
        0 => return Ok(Header::Local),
        1 => {}
        c => return Err(invalid(format!("command {c}"))),
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Header::Proxied(SocketAddr::new(IpAddr::V4(ip), port(8))))
        }
        0x21 if body.len() >= 36 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&body[..16]);
            let ip = Ipv6Addr::from(b);
            Ok(Header::Proxied(SocketAddr::new(IpAddr::V6(ip), port(32))))
        }
        0x11 | 0x21 => Err(invalid("an address block too short for its family")),
        // UNSPEC, UDP, unix sockets: the balancer's own address stands.
        _ => Ok(Header::Local),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIG.to_vec();
        out.extend([0x20 | cmd, fam]);
        out.extend((body.len() as u16).to_be_bytes());
        out.extend(body);
        out
    }

    async fn read(bytes: &[u8]) -> (Result<Header, ProxyError>, Vec<u8>) {
        let mut r = bytes;
        let h = read_header(&mut r).await;
        (h, r.to_vec())
    }

    #[tokio::test]
    async fn both_versions_give_the_client_and_leave_the_ssh_stream() {
        let (h, rest) = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 2222\r\nSSH-2.0-x").await;
        assert_eq!(
            h.unwrap(),
            Header::Proxied("192.0.2.7:51234".parse().unwrap())
        );
        assert_eq!(rest, b"SSH-2.0-x");
        let (h, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 22\r\n").await;
        assert_eq!(
            h.unwrap(),
            Header::Proxied("[2001:db8::7]:4000".parse().unwrap())
        );
        let (h, _) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(h.unwrap(), Header::Local);

        let body = [192, 0, 2, 9, 198, 51, 100, 1, 0x1f, 0x90, 0x08, 0xae];
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend(b"SSH-2.0-y");
        let (h, rest) = read(&bytes).await;
        assert_eq!(
            h.unwrap(),
            Header::Proxied("192.0.2.9:8080".parse().unwrap())
        );
        assert_eq!(rest, b"SSH-2.0-y");
        let (h, _) = read(&v2(0, 0x00, &[])).await;
        assert_eq!(h.unwrap(), Header::Local);
    }

    #[tokio::test]
    async fn anything_else_is_refused_with_a_reason() {
        assert!(matches!(read(b"").await.0, Err(ProxyError::Empty)));
        for bad in [
            &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 2\r\n",
            b"PROXY TCP4 192.0.2.7",
        ] {
            assert!(
                matches!(read(bad).await.0, Err(ProxyError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'A'; 200]].concat();
        assert!(matches!(read(&long).await.0, Err(ProxyError::Invalid(_))));
        assert!(matches!(
            read(&v2(1, 0x11, &[1, 2, 3])).await.0,
            Err(ProxyError::Invalid(_))
        ));
        assert!(matches!(
            read(&v2(7, 0x11, &[0; 12])).await.0,
            Err(ProxyError::Invalid(_))
        ));
    }
}
