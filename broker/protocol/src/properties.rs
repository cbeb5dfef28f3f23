//! MQTT 5.0 properties: the [`Properties`] type and its wire encoding.
//!
//! Decoding checks every property against the packet it appears in (a
//! property not allowed there is a protocol error, an unknown identifier a
//! malformed packet), rejects duplicates and values the spec forbids (0 for
//! Receive Maximum, Maximum Packet Size, Subscription Identifier and Topic
//! Alias; anything but 0/1 for the boolean-like byte properties).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{binary_len, put_binary, put_str, put_varint, varint_len, Reader};
use crate::{ByteStr, DecodeError};

/// The properties of a packet: empty (no allocation, one pointer wide) or a
/// shared [`PropertyValues`]. Reads go through `Deref` (an empty list reads
/// as all unset); the first write through `DerefMut` allocates, a write to
/// a shared list copies it first.
///
/// Behind a pointer because most packets carry no properties while the
/// values take about 400 bytes: inline, every `Publish`, `Ack` and broker
/// message moved them around (`memmove` was a tenth of the broker's CPU
/// under QoS 1 load). Shared (`Arc`) so that messages given the same
/// properties (a plugin's batch answer) clone a pointer, not the values.
#[derive(Clone, Default)]
pub struct Properties(Option<Arc<PropertyValues>>);

/// Compares the values: an allocated list with nothing set equals the
/// unallocated empty one.
impl PartialEq for Properties {
    fn eq(&self, other: &Properties) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

static EMPTY: PropertyValues = PropertyValues::EMPTY;

impl std::ops::Deref for Properties {
    type Target = PropertyValues;
    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Properties {
        if values == EMPTY {
            Properties(None)
        } else {
            Properties(Some(Arc::new(values)))
        }
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Every MQTT 5.0 property. Which ones a packet may carry is checked by that
/// packet's decoder; a property given twice (other than User Property and,
/// in PUBLISH from a server, Subscription Identifier) is a protocol error.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PropertyValues {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteStr>,
    pub response_topic: Option<ByteStr>,
    pub correlation_data: Option<Bytes>,
    /// In SUBSCRIBE at most one; in PUBLISH to a client, one per matching subscription.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<ByteStr>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<ByteStr>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<ByteStr>,
    pub server_reference: Option<ByteStr>,
    pub reason_string: Option<ByteStr>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    /// Kept in the order received.
    pub user_properties: Vec<(ByteStr, ByteStr)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// The packet (or CONNECT will) a property list belongs to; decides which
/// properties are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PropCtx {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

// Property identifiers.
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

impl PropCtx {
    /// Is property `id` (known to exist) allowed here?
    fn allows(self, id: u8) -> bool {
        use PropCtx::*;
        match id {
            USER_PROPERTY => true,
            PAYLOAD_FORMAT_INDICATOR
            | MESSAGE_EXPIRY_INTERVAL
            | CONTENT_TYPE
            | RESPONSE_TOPIC
            | CORRELATION_DATA => matches!(self, Publish | Will),
            SUBSCRIPTION_IDENTIFIER => matches!(self, Publish | Subscribe),
            SESSION_EXPIRY_INTERVAL => matches!(self, Connect | ConnAck | Disconnect),
            AUTHENTICATION_METHOD | AUTHENTICATION_DATA => matches!(self, Connect | ConnAck | Auth),
            REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => self == Connect,
            WILL_DELAY_INTERVAL => self == Will,
            RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
                matches!(self, Connect | ConnAck)
            }
            ASSIGNED_CLIENT_IDENTIFIER
            | SERVER_KEEP_ALIVE
            | RESPONSE_INFORMATION
            | MAXIMUM_QOS
            | RETAIN_AVAILABLE
            | WILDCARD_SUBSCRIPTION_AVAILABLE
            | SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | SHARED_SUBSCRIPTION_AVAILABLE => self == ConnAck,
            SERVER_REFERENCE => matches!(self, ConnAck | Disconnect),
            REASON_STRING => !matches!(self, Connect | Will | Publish | Subscribe | Unsubscribe),
            TOPIC_ALIAS => self == Publish,
            _ => false,
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("duplicate property"));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property that may only be 0 or 1.
fn flag(value: u8) -> Result<u8, DecodeError> {
    if value > 1 {
        return Err(DecodeError::Protocol("property value must be 0 or 1"));
    }
    Ok(value)
}

fn non_zero_u16(value: u16) -> Result<u16, DecodeError> {
    if value == 0 {
        return Err(DecodeError::Protocol("property value must not be 0"));
    }
    Ok(value)
}

fn non_zero_u32(value: u32) -> Result<u32, DecodeError> {
    if value == 0 {
        return Err(DecodeError::Protocol("property value must not be 0"));
    }
    Ok(value)
}

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        **self == EMPTY
    }

    /// Writes the properties a PUBLISH may carry (length prefix included), for
    /// callers that store messages outside a packet (the broker's durable store).
    pub fn encode_message(&self, out: &mut BytesMut) {
        self.encode(out);
    }

    /// Reads properties written by [`Properties::encode_message`], with the
    /// same checks as in a PUBLISH; returns them and the bytes that follow.
    pub fn decode_message(buf: Bytes) -> Result<(Properties, Bytes), DecodeError> {
        let mut r = Reader::new(buf);
        let p = Properties::decode(&mut r, PropCtx::Publish)?;
        Ok((p, r.rest()))
    }

    /// Reads a property length and the properties it covers, checking each
    /// against the packet kind `ctx`.
    pub(crate) fn decode(r: &mut Reader, ctx: PropCtx) -> Result<Properties, DecodeError> {
        let len = r.varint()?;
        if len == 0 {
            return Ok(Properties(None));
        }
        let mut r = Reader::new(r.take(len as usize)?);
        let mut p = PropertyValues::default();
        while !r.is_empty() {
            let id = r.varint()?;
            let id = match u8::try_from(id) {
                Ok(
                    id @ (0x01..=0x03
                    | 0x08
                    | 0x09
                    | 0x0B
                    | 0x11..=0x13
                    | 0x15..=0x1A
                    | 0x1C
                    | 0x1F
                    | 0x21..=0x2A),
                ) => id,
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            };
            if !ctx.allows(id) {
                return Err(DecodeError::Protocol("property not allowed in this packet"));
            }
            match id {
                PAYLOAD_FORMAT_INDICATOR => {
                    set_once(&mut p.payload_format_indicator, flag(r.u8()?)?)?
                }
                MESSAGE_EXPIRY_INTERVAL => set_once(&mut p.message_expiry_interval, r.u32()?)?,
                CONTENT_TYPE => set_once(&mut p.content_type, r.string()?)?,
                RESPONSE_TOPIC => {
                    let topic = r.string()?;
                    if !crate::topic::valid_name(&topic) {
                        return Err(DecodeError::Protocol("invalid response topic"));
                    }
                    set_once(&mut p.response_topic, topic)?
                }
                CORRELATION_DATA => set_once(&mut p.correlation_data, r.binary()?)?,
                SUBSCRIPTION_IDENTIFIER => {
                    let id = r.varint()?;
                    if id == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    if ctx != PropCtx::Publish && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("duplicate property"));
                    }
                    p.subscription_identifiers.push(id);
                }
                SESSION_EXPIRY_INTERVAL => set_once(&mut p.session_expiry_interval, r.u32()?)?,
                ASSIGNED_CLIENT_IDENTIFIER => {
                    set_once(&mut p.assigned_client_identifier, r.string()?)?
                }
                SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, r.u16()?)?,
                AUTHENTICATION_METHOD => set_once(&mut p.authentication_method, r.string()?)?,
                AUTHENTICATION_DATA => set_once(&mut p.authentication_data, r.binary()?)?,
                REQUEST_PROBLEM_INFORMATION => {
                    set_once(&mut p.request_problem_information, flag(r.u8()?)?)?
                }
                WILL_DELAY_INTERVAL => set_once(&mut p.will_delay_interval, r.u32()?)?,
                REQUEST_RESPONSE_INFORMATION => {
                    set_once(&mut p.request_response_information, flag(r.u8()?)?)?
                }
                RESPONSE_INFORMATION => set_once(&mut p.response_information, r.string()?)?,
                SERVER_REFERENCE => set_once(&mut p.server_reference, r.string()?)?,
                REASON_STRING => set_once(&mut p.reason_string, r.string()?)?,
                RECEIVE_MAXIMUM => set_once(&mut p.receive_maximum, non_zero_u16(r.u16()?)?)?,
                TOPIC_ALIAS_MAXIMUM => set_once(&mut p.topic_alias_maximum, r.u16()?)?,
                TOPIC_ALIAS => {
                    let alias = r.u16()?;
                    if alias == 0 {
                        return Err(DecodeError::TopicAliasInvalid);
                    }
                    set_once(&mut p.topic_alias, alias)?
                }
                MAXIMUM_QOS => set_once(&mut p.maximum_qos, flag(r.u8()?)?)?,
                RETAIN_AVAILABLE => set_once(&mut p.retain_available, flag(r.u8()?)?)?,
                USER_PROPERTY => {
                    let key = r.string()?;
                    let value = r.string()?;
                    p.user_properties.push((key, value));
                }
                MAXIMUM_PACKET_SIZE => {
                    set_once(&mut p.maximum_packet_size, non_zero_u32(r.u32()?)?)?
                }
                WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.wildcard_subscription_available, flag(r.u8()?)?)?
                }
                SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    set_once(&mut p.subscription_identifier_available, flag(r.u8()?)?)?
                }
                SHARED_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.shared_subscription_available, flag(r.u8()?)?)?
                }
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            }
        }
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::Protocol("authentication data without method"));
        }
        Ok(Properties(Some(Arc::new(p))))
    }
}

impl PropertyValues {
    /// No property set (what an empty [`Properties`] reads as).
    pub const EMPTY: PropertyValues = PropertyValues {
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        subscription_identifiers: Vec::new(),
        session_expiry_interval: None,
        assigned_client_identifier: None,
        server_keep_alive: None,
        authentication_method: None,
        authentication_data: None,
        request_problem_information: None,
        will_delay_interval: None,
        request_response_information: None,
        response_information: None,
        server_reference: None,
        reason_string: None,
        receive_maximum: None,
        topic_alias_maximum: None,
        topic_alias: None,
        maximum_qos: None,
        retain_available: None,
        user_properties: Vec::new(),
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifier_available: None,
        shared_subscription_available: None,
    };

    /// Length of the properties themselves, without the property length
    /// prefix.
    pub(crate) fn content_len(&self) -> usize {
        let byte = |o: &Option<u8>| if o.is_some() { 2 } else { 0 };
        let u16p = |o: &Option<u16>| if o.is_some() { 3 } else { 0 };
        let u32p = |o: &Option<u32>| if o.is_some() { 5 } else { 0 };
        let strp = |o: &Option<ByteStr>| o.as_ref().map_or(0, |s| 1 + binary_len(s.as_bytes()));
        let binp = |o: &Option<Bytes>| o.as_ref().map_or(0, |b| 1 + binary_len(b));
        byte(&self.payload_format_indicator)
            + u32p(&self.message_expiry_interval)
            + strp(&self.content_type)
            + strp(&self.response_topic)
            + binp(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|&id| 1 + varint_len(id as usize))
                .sum::<usize>()
            + u32p(&self.session_expiry_interval)
            + strp(&self.assigned_client_identifier)
            + u16p(&self.server_keep_alive)
            + strp(&self.authentication_method)
            + binp(&self.authentication_data)
            + byte(&self.request_problem_information)
            + u32p(&self.will_delay_interval)
            + byte(&self.request_response_information)
            + strp(&self.response_information)
            + strp(&self.server_reference)
            + strp(&self.reason_string)
            + u16p(&self.receive_maximum)
            + u16p(&self.topic_alias_maximum)
            + u16p(&self.topic_alias)
            + byte(&self.maximum_qos)
            + byte(&self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 1 + binary_len(k.as_bytes()) + binary_len(v.as_bytes()))
                .sum::<usize>()
            + u32p(&self.maximum_packet_size)
            + byte(&self.wildcard_subscription_available)
            + byte(&self.subscription_identifier_available)
            + byte(&self.shared_subscription_available)
    }

    /// Length on the wire: property length prefix plus the properties.
    pub(crate) fn wire_len(&self) -> usize {
        let n = self.content_len();
        varint_len(n) + n
    }

    /// Writes the property length followed by every property that is set,
    /// in identifier order (user properties in their own order).
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        put_varint(out, self.content_len());
        let byte = |out: &mut BytesMut, id: u8, o: Option<u8>| {
            if let Some(v) = o {
                out.put_u8(id);
                out.put_u8(v);
            }
        };
        let u16p = |out: &mut BytesMut, id: u8, o: Option<u16>| {
            if let Some(v) = o {
                out.put_u8(id);
                out.put_u16(v);
            }
        };
        let u32p = |out: &mut BytesMut, id: u8, o: Option<u32>| {
            if let Some(v) = o {
                out.put_u8(id);
                out.put_u32(v);
            }
        };
        let strp = |out: &mut BytesMut, id: u8, o: &Option<ByteStr>| {
            if let Some(v) = o {
                out.put_u8(id);
                put_str(out, v);
            }
        };
        let binp = |out: &mut BytesMut, id: u8, o: &Option<Bytes>| {
            if let Some(v) = o {
                out.put_u8(id);
                put_binary(out, v);
            }
        };
        byte(out, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        u32p(out, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        strp(out, CONTENT_TYPE, &self.content_type);
        strp(out, RESPONSE_TOPIC, &self.response_topic);
        binp(out, CORRELATION_DATA, &self.correlation_data);
        for &id in &self.subscription_identifiers {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_varint(out, id as usize);
        }
        u32p(out, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        strp(
            out,
            ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        u16p(out, SERVER_KEEP_ALIVE, self.server_keep_alive);
        strp(out, AUTHENTICATION_METHOD, &self.authentication_method);
        binp(out, AUTHENTICATION_DATA, &self.authentication_data);
        byte(
            out,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        u32p(out, WILL_DELAY_INTERVAL, self.will_delay_interval);
        byte(
            out,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        strp(out, RESPONSE_INFORMATION, &self.response_information);
        strp(out, SERVER_REFERENCE, &self.server_reference);
        strp(out, REASON_STRING, &self.reason_string);
        u16p(out, RECEIVE_MAXIMUM, self.receive_maximum);
        u16p(out, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        u16p(out, TOPIC_ALIAS, self.topic_alias);
        byte(out, MAXIMUM_QOS, self.maximum_qos);
        byte(out, RETAIN_AVAILABLE, self.retain_available);
        for (k, v) in &self.user_properties {
            out.put_u8(USER_PROPERTY);
            put_str(out, k);
            put_str(out, v);
        }
        u32p(out, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        byte(
            out,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        byte(
            out,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        byte(
            out,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_is_one_pointer_and_reads_as_unset() {
        assert_eq!(
            std::mem::size_of::<Properties>(),
            std::mem::size_of::<usize>()
        );
        let p = Properties::default();
        assert!(p.is_empty());
        assert_eq!(p.topic_alias, None);
        assert!(p.user_properties.is_empty());
        assert_eq!(*p, PropertyValues::EMPTY);
    }

    #[test]
    fn a_write_makes_it_non_empty_and_equality_ignores_the_box() {
        let mut p = Properties::from(PropertyValues::EMPTY);
        p.topic_alias = None;
        assert!(p.0.is_some() && p.is_empty());
        assert_eq!(p, Properties::default());
        p.content_type = Some("text/plain".into());
        assert!(!p.is_empty());
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        // Built from values, the same list compares equal.
        let q = Properties::from(PropertyValues {
            content_type: Some("text/plain".into()),
            ..PropertyValues::default()
        });
        assert_eq!(p, q);
        // Values with nothing set become the unallocated empty list.
        assert_eq!(
            Properties::from(PropertyValues::default()),
            Properties::default()
        );
    }

    #[test]
    fn zero_length_properties_decode_to_the_empty_list() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0xAA]));
        let p = Properties::decode(&mut r, PropCtx::Publish).unwrap();
        assert_eq!(p, Properties::default());
        assert!(p.0.is_none());
        assert_eq!(r.rest(), Bytes::from_static(&[0xAA]));
    }
}
