//! The packet enum and the top-level decode / encode entry points.

use bytes::BytesMut;

use crate::{
    Ack, Auth, ConnAck, Connect, DecodeError, Disconnect, Publish, SubAck, Subscribe, UnsubAck,
    Unsubscribe, Version,
};

/// Any of the 15 MQTT control packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// Decodes one packet from the front of `buf`, advancing it past the packet.
///
/// - `Ok(None)`: more bytes are needed; `buf` is untouched.
/// - `version`: `None` before CONNECT has been received; then only CONNECT
///   is accepted (anything else is a protocol error).
/// - `max_size`: the largest whole packet (fixed header included) accepted;
///   a larger one is rejected as soon as its fixed header is readable.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    todo!("{buf:?} {version:?} {max_size}")
}

/// Appends the encoding of `packet` for `version` to `out`.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) {
    todo!("{packet:?} {version:?} {out:?}")
}

/// Length in bytes of `encode(packet, version, ..)`, fixed header included.
pub fn encoded_len(packet: &Packet, version: Version) -> usize {
    todo!("{packet:?} {version:?}")
}
