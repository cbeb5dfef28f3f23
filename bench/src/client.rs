//! A deliberately small MQTT client on top of `midge-protocol`: just enough
//! for the load generator (CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH,
//! PUBACK, PINGREQ/PINGRESP, DISCONNECT). No reconnects and no session state
//! of its own (persistent sessions live in the broker: [`connect_persistent`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use midge_protocol::{
    decode, encode, Ack, ByteStr, Connect, Disconnect, Packet, Properties, Publish, QoS,
    SubOptions, Subscribe, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// Largest packet the client accepts from the broker.
pub const MAX_PACKET: usize = 1 << 20;
/// Bound on TCP connect, CONNACK and SUBACK waits.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Read half of a connection plus its decode buffer.
#[derive(Debug)]
pub struct Reader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    version: Version,
}

impl Reader {
    /// Decodes the next buffered packet without reading from the socket.
    pub fn try_next(&mut self) -> Result<Option<Packet>> {
        decode(&mut self.buf, Some(self.version), MAX_PACKET).context("decoding broker packet")
    }

    /// Reads more bytes from the socket; errors on EOF.
    pub async fn fill(&mut self) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(64 * 1024);
        }
        let n = self
            .rd
            .read_buf(&mut self.buf)
            .await
            .context("reading from broker")?;
        if n == 0 {
            bail!("connection closed by the broker");
        }
        Ok(())
    }

    /// Next packet, reading from the socket as needed.
    pub async fn next(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = self.try_next()? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    /// Frees the decode buffer while nothing is buffered (many idle
    /// connections in one generator).
    pub fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// [`Reader::next`] bounded by the handshake timeout.
    async fn next_handshake(&mut self, what: &str) -> Result<Packet> {
        timeout(HANDSHAKE_TIMEOUT, self.next())
            .await
            .map_err(|_| anyhow::anyhow!("no {what} within {HANDSHAKE_TIMEOUT:?}"))?
            .with_context(|| format!("waiting for {what}"))
    }
}

/// Write half of a connection plus an encode buffer, so that several packets
/// can be batched into one `write`.
#[derive(Debug)]
pub struct Writer {
    wr: OwnedWriteHalf,
    pub buf: BytesMut,
    version: Version,
}

impl Writer {
    /// Appends `packet` to the pending buffer.
    pub fn push(&mut self, packet: &Packet) {
        encode(packet, self.version, &mut self.buf);
    }

    /// Writes every pending packet.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.wr
                .write_all(&self.buf)
                .await
                .context("writing to broker")?;
            self.buf.clear();
        }
        Ok(())
    }

    pub async fn send(&mut self, packet: &Packet) -> Result<()> {
        self.push(packet);
        self.flush().await
    }

    /// Best-effort DISCONNECT before the socket is dropped.
    pub async fn disconnect(mut self) {
        self.buf.clear();
        self.push(&Packet::Disconnect(Disconnect::default()));
        let _ = self.flush().await;
        let _ = self.wr.shutdown().await;
    }
}

/// Opens a TCP connection and completes the MQTT handshake (clean start).
pub async fn connect(
    addr: SocketAddr,
    client_id: &str,
    version: Version,
    keep_alive: u16,
) -> Result<(Reader, Writer)> {
    let stream = tcp_connect(addr, HANDSHAKE_TIMEOUT).await?;
    let opts = ConnectOpts {
        client_id,
        version,
        keep_alive,
        clean_start: true,
        handshake_timeout: HANDSHAKE_TIMEOUT,
    };
    let (r, w, _) = handshake(stream, &opts).await?;
    Ok((r, w))
}

/// Connects with a persistent session (3.1.1 clean session 0; 5.0 clean
/// start 0 and a session expiry that never ends); returns CONNACK's
/// session present flag too.
pub async fn connect_persistent(
    addr: SocketAddr,
    client_id: &str,
    version: Version,
    keep_alive: u16,
) -> Result<(Reader, Writer, bool)> {
    let stream = tcp_connect(addr, HANDSHAKE_TIMEOUT).await?;
    let opts = ConnectOpts {
        client_id,
        version,
        keep_alive,
        clean_start: false,
        handshake_timeout: HANDSHAKE_TIMEOUT,
    };
    handshake(stream, &opts).await
}

/// What CONNECT asks for.
#[derive(Debug, Clone)]
pub struct ConnectOpts<'a> {
    pub client_id: &'a str,
    pub version: Version,
    pub keep_alive: u16,
    /// false: keep (or resume) a persistent session; with 5.0 the session
    /// expiry interval is then 0xFFFFFFFF (never expires).
    pub clean_start: bool,
    /// Bound on the wait for CONNACK.
    pub handshake_timeout: Duration,
}

/// A TCP connection with TCP_NODELAY, bounded by `limit`.
pub async fn tcp_connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream> {
    let stream = timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("TCP connect to {addr} timed out"))?
        .map_err(|e| {
            let hint = if e.raw_os_error() == Some(24) {
                " (too many open files: raise `ulimit -n`)"
            } else {
                ""
            };
            anyhow::anyhow!("TCP connect to {addr} failed: {e}{hint}")
        })?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    Ok(stream)
}

/// [`tcp_connect`] from a given local address (port chosen by the system):
/// one source address has about 28,000 ephemeral ports towards one broker
/// port, so many connections spread over 127.0.0.x.
pub async fn tcp_connect_from(
    addr: SocketAddr,
    source: IpAddr,
    limit: Duration,
) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating a TCP socket")?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding a TCP socket to {source}"))?;
    let stream = timeout(limit, socket.connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("TCP connect to {addr} from {source} timed out"))?
        .with_context(|| format!("TCP connect to {addr} from {source}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    Ok(stream)
}

/// Sends CONNECT on `stream` and waits for a successful CONNACK; returns
/// the connection's halves and the session present flag.
pub async fn handshake(
    stream: TcpStream,
    opts: &ConnectOpts<'_>,
) -> Result<(Reader, Writer, bool)> {
    let version = opts.version;
    let client_id = opts.client_id;
    let (rd, wr) = stream.into_split();
    let mut reader = Reader {
        rd,
        buf: BytesMut::with_capacity(256),
        version,
    };
    let mut writer = Writer {
        wr,
        buf: BytesMut::with_capacity(256),
        version,
    };
    let mut properties = Properties::default();
    if !opts.clean_start && version == Version::V5 {
        properties.session_expiry_interval = Some(u32::MAX);
    }
    writer
        .send(&Packet::Connect(Box::new(Connect {
            version,
            clean_start: opts.clean_start,
            keep_alive: opts.keep_alive,
            properties,
            client_id: ByteStr::from(client_id),
            will: None,
            username: None,
            password: None,
        })))
        .await?;
    let what = format!("CONNACK for {client_id}");
    let packet = timeout(opts.handshake_timeout, reader.next())
        .await
        .map_err(|_| anyhow::anyhow!("no {what} within {:?}", opts.handshake_timeout))?
        .with_context(|| format!("waiting for {what}"))?;
    match packet {
        Packet::ConnAck(ack) if ack.code == 0 => Ok((reader, writer, ack.session_present)),
        Packet::ConnAck(ack) => bail!("broker refused {client_id}: CONNACK code {}", ack.code),
        other => bail!("expected CONNACK for {client_id}, got {other:?}"),
    }
}

/// Subscribes to one filter and waits for the SUBACK.
pub async fn subscribe(
    reader: &mut Reader,
    writer: &mut Writer,
    filter: &str,
    qos: QoS,
) -> Result<()> {
    writer
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(ByteStr::from(filter), SubOptions::qos(qos))],
        }))
        .await?;
    match reader
        .next_handshake(&format!("SUBACK for {filter}"))
        .await?
    {
        Packet::SubAck(ack) if ack.packet_id == 1 => match ack.codes.first() {
            Some(&code) if code < 0x80 => Ok(()),
            code => bail!("subscription to {filter} refused: {code:?}"),
        },
        other => bail!("expected SUBACK for {filter}, got {other:?}"),
    }
}

pub fn publish(topic: &ByteStr, qos: QoS, packet_id: u16, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.clone(),
        packet_id,
        properties: Properties::default(),
        payload,
    })
}

pub fn puback(packet_id: u16) -> Packet {
    Packet::PubAck(Ack::new(packet_id, 0))
}

/// DISCONNECT, then wait (at most `limit`) until the broker closes the
/// connection, so the broker has finished with it (the session is offline)
/// when this returns. Packets still arriving are discarded.
pub async fn disconnect_and_wait(mut reader: Reader, writer: Writer, limit: Duration) {
    writer.disconnect().await;
    let _ = timeout(limit, async {
        loop {
            reader.buf.clear();
            if reader.fill().await.is_err() {
                break;
            }
        }
    })
    .await;
}
