//! Decoder errors, each carrying the reason code the broker answers with.

use crate::reason;

/// Why a packet could not be decoded. [`DecodeError::reason_code`] is the
/// MQTT 5.0 reason code to put in the DISCONNECT (or CONNACK) that the broker
/// sends before closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Malformed packet (0x81): bad lengths, bad UTF-8, reserved bits, ...
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Protocol error (0x82): well-formed but forbidden by the spec.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Packet larger than the maximum accepted size (0x95), detected from the
    /// fixed header before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    /// CONNECT with a protocol name/level this codec does not speak.
    /// Answer with CONNACK 0x01 (3.1.1) or 0x84 (5.0).
    #[error("unsupported protocol level {level}")]
    UnsupportedProtocol { level: u8 },
    /// Topic Alias 0 or above the maximum (0x94) — reported by the decoder
    /// only for alias 0; the session checks the maximum.
    #[error("invalid topic alias")]
    TopicAliasInvalid,
}

impl DecodeError {
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicAliasInvalid => reason::TOPIC_ALIAS_INVALID,
        }
    }
}
