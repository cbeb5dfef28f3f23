//! A deliberately small MQTT client on top of `midge-protocol`: just enough
//! for the load generator (CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH,
//! PUBACK, PINGREQ/PINGRESP, DISCONNECT). No reconnects, no session state.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use midge_protocol::{
    decode, encode, Ack, ByteStr, Connect, Disconnect, Packet, Properties, Publish, QoS,
    SubOptions, Subscribe, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
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

/// Opens a TCP connection and completes the MQTT handshake.
pub async fn connect(
    addr: SocketAddr,
    client_id: &str,
    version: Version,
    keep_alive: u16,
) -> Result<(Reader, Writer)> {
    let stream = timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
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
    writer
        .send(&Packet::Connect(Box::new(Connect {
            version,
            clean_start: true,
            keep_alive,
            properties: Properties::default(),
            client_id: ByteStr::from(client_id),
            will: None,
            username: None,
            password: None,
        })))
        .await?;
    match reader
        .next_handshake(&format!("CONNACK for {client_id}"))
        .await?
    {
        Packet::ConnAck(ack) if ack.code == 0 => Ok((reader, writer)),
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
