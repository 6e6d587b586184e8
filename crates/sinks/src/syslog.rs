//! The `syslog` sink: RFC 5424 over UDP (a datagram per event) or TCP
//! (RFC 6587 octet counting on one kept connection).

use std::time::Duration;

use gatehouse_model::event::Event;
use tokio::io::AsyncWriteExt;

use crate::{io_error, Shape, SinkError};

/// One datagram per event.
pub async fn deliver_udp(addr: &str, shape: &Shape, events: &[&Event]) -> Result<(), SinkError> {
    // An IPv6 literal (`udp://[::1]:514`) needs a socket of its family.
    let local = if addr.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = tokio::net::UdpSocket::bind(local).await.map_err(io_error)?;
    for e in events {
        sock.send_to(line(e, shape).as_bytes(), addr)
            .await
            .map_err(io_error)?;
    }
    Ok(())
}

/// The batch over the sink's TCP connection (RFC 6587 octet counting),
/// reconnecting when there is none or the receiver closed it.
pub async fn deliver_tcp(
    tcp: &mut Option<tokio::net::TcpStream>,
    addr: &str,
    shape: &Shape,
    events: &[&Event],
) -> Result<(), SinkError> {
    // A receiver sends nothing on syslog TCP: if the socket is
    // readable, the receiver closed it, and writing would only
    // fill a dead connection's buffer. Reconnect first.
    if let Some(stream) = tcp.as_ref() {
        let mut probe = [0u8; 1];
        match stream.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => *tcp = None,
        }
    }
    if tcp.is_none() {
        let s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| SinkError::Delivery(format!("connect to {addr} timed out")))?
            .map_err(io_error)?;
        *tcp = Some(s);
    }
    let Some(stream) = tcp.as_mut() else {
        return Err(SinkError::Delivery("no connection".into()));
    };
    let mut buf = Vec::new();
    for e in events {
        // RFC 6587 octet counting.
        let line = line(e, shape);
        buf.extend_from_slice(format!("{} {line}", line.len()).as_bytes());
    }
    stream.write_all(&buf).await.map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    Ok(())
}

/// The line for an event, with the sink's document as the message.
pub fn line(e: &Event, shape: &Shape) -> String {
    with_message(e, &shape.document(e).to_string())
}

/// RFC 5424: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG`, facility
/// local0, the event as JSON for the message.
pub fn syslog_line(e: &Event) -> String {
    with_message(e, &serde_json::to_string(e).unwrap_or_default())
}

/// `<PRI>1 TIMESTAMP HOST gatehouse - TYPE - MESSAGE`: the severity and
/// type of the Gatehouse event in the header whatever the message.
fn with_message(e: &Event, message: &str) -> String {
    use gatehouse_model::Severity;
    let sev = match e.event.severity {
        Severity::Info => 6,
        Severity::Warn => 4,
        Severity::High => 3,
        Severity::Critical => 2,
    };
    let pri = 16 * 8 + sev;
    format!(
        "<{pri}>1 {} {} gatehouse - {} - {message}",
        e.event.time, e.event.node, e.event.kind
    )
}
