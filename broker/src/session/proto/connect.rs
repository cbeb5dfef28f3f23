//! CONNECT negotiation as a pure function: from the CONNECT, what the server
//! offers (`[mqtt]`) and the authentication decision to the connection's
//! terms (keep alive, session expiry, both Receive Maximums, Topic Alias
//! Maximum, Maximum Packet Size, the CONNACK's properties) or a refusal
//! with its CONNACK reason code.

use midge_protocol::{reason, topic, Connect, Properties, Version};

use super::{client_max_packet, negotiate_expiry, negotiate_keep_alive, KeepAlive};

/// What the server offers every client (the `[mqtt]` section's limits).
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    pub max_client_id_len: usize,
    pub max_qos: u8,
    pub retain_available: bool,
    /// Seconds (0: no maximum).
    pub max_keep_alive: u16,
    pub max_session_expiry: u32,
    /// Most QoS 1/2 messages in flight to one client.
    pub max_inflight: u16,
    /// Most QoS 2 messages from one client awaiting PUBREL.
    pub receive_maximum: u16,
    pub max_packet_size: u32,
    pub topic_alias_maximum: u16,
    pub wildcard_subscriptions: bool,
    pub subscription_identifiers: bool,
    pub shared_subscriptions: bool,
}

/// What the client told us it can take.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    pub version: Version,
    pub max_packet_size: usize,
    pub topic_alias_max: u16,
    /// Most QoS 1/2 messages in flight to the client (its Receive Maximum,
    /// at most the server's `max_inflight`).
    pub window: usize,
    pub problem_info: bool,
}

/// Why a CONNECT is refused: the CONNACK reason code and a text for the log
/// and the Reason String.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub code: u8,
    pub why: &'static str,
}

impl Refused {
    pub const fn new(code: u8, why: &'static str) -> Refused {
        Refused { code, why }
    }
}

/// An accepted CONNECT: the connection's terms.
#[derive(Debug)]
pub struct Accepted {
    /// Keep alive in force (seconds; 0: none).
    pub keep_alive: u16,
    /// The session expiry granted.
    pub expiry: u32,
    /// The limits the server's output applies to this client.
    pub limits: ClientLimits,
    /// The client sent an empty client id: the server assigns one (and
    /// 5.0's CONNACK says it: [`Accepted::assign`]).
    pub assign_client_id: bool,
    /// The CONNACK's properties (5.0; empty for 3.1.1).
    pub connack: Properties,
}

impl Accepted {
    /// Records the client id the server assigned (5.0: in CONNACK).
    pub fn assign(&mut self, version: Version, id: &str) {
        if version == Version::V5 {
            self.connack.assigned_client_identifier = Some(id.into());
        }
    }
}

/// Decides a CONNECT. `auth` is the authentication decision (the plugins'
/// or the auth hook's), made before: `Ok` with any final Authentication
/// Data for CONNACK, or the refusal, which comes first.
pub fn accept(
    c: &Connect,
    offer: &Offer,
    auth: Result<Option<Vec<u8>>, Refused>,
) -> Result<Accepted, Refused> {
    let auth_data = auth?;
    let v = c.version;
    if c.client_id.is_empty() && v == Version::V311 && !c.clean_start {
        return Err(Refused::new(
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            "empty client id needs clean session",
        ));
    }
    if c.client_id.len() > offer.max_client_id_len
        || crate::session::reserved_client_id(&c.client_id)
    {
        return Err(Refused::new(
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            "client id too long, or reserved for bridges ($bridge/...)",
        ));
    }
    if let Some(w) = &c.will {
        if w.qos as u8 > offer.max_qos {
            return Err(Refused::new(
                reason::QOS_NOT_SUPPORTED,
                "will QoS above the maximum QoS",
            ));
        }
        if w.retain && !offer.retain_available {
            return Err(Refused::new(
                reason::RETAIN_NOT_SUPPORTED,
                "retain is not available",
            ));
        }
        if !topic::valid_name(&w.topic) {
            return Err(Refused::new(
                reason::TOPIC_NAME_INVALID,
                "invalid will topic",
            ));
        }
    }
    if v == Version::V311 && offer.max_keep_alive > 0 && c.keep_alive > offer.max_keep_alive {
        return Err(Refused::new(
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            "keep alive above the maximum",
        ));
    }

    let KeepAlive {
        seconds: keep_alive,
        server: server_keep_alive,
    } = negotiate_keep_alive(v, c.keep_alive, offer.max_keep_alive);
    let (requested_expiry, expiry) = negotiate_expiry(
        v,
        c.clean_start,
        c.properties.session_expiry_interval,
        offer.max_session_expiry,
    );
    let client_receive_max = usize::from(c.properties.receive_maximum.unwrap_or(u16::MAX));
    let limits = ClientLimits {
        version: v,
        max_packet_size: client_max_packet(&c.properties),
        topic_alias_max: c.properties.topic_alias_maximum.unwrap_or(0),
        window: client_receive_max.min(usize::from(offer.max_inflight)),
        problem_info: c.properties.request_problem_information != Some(0),
    };
    let mut props = Properties::default();
    if v == Version::V5 {
        props.server_keep_alive = server_keep_alive;
        if requested_expiry != expiry {
            props.session_expiry_interval = Some(expiry);
        }
        props.receive_maximum = Some(offer.receive_maximum);
        if offer.max_qos < 2 {
            props.maximum_qos = Some(offer.max_qos);
        }
        props.retain_available = Some(u8::from(offer.retain_available));
        props.maximum_packet_size = Some(offer.max_packet_size);
        props.topic_alias_maximum = Some(offer.topic_alias_maximum);
        props.wildcard_subscription_available = Some(u8::from(offer.wildcard_subscriptions));
        props.subscription_identifier_available = Some(u8::from(offer.subscription_identifiers));
        props.shared_subscription_available = Some(u8::from(offer.shared_subscriptions));
        // Enhanced authentication: the method, and any final data.
        props.authentication_method = c.properties.authentication_method.clone();
        if props.authentication_method.is_some() {
            props.authentication_data = auth_data.map(Into::into);
        }
    }
    Ok(Accepted {
        keep_alive,
        expiry,
        limits,
        assign_client_id: c.client_id.is_empty(),
        connack: props,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use midge_protocol::{QoS, Will};

    use super::*;

    fn offer() -> Offer {
        Offer {
            max_client_id_len: 23,
            max_qos: 2,
            retain_available: true,
            max_keep_alive: 0,
            max_session_expiry: 3600,
            max_inflight: 100,
            receive_maximum: 50,
            max_packet_size: 1 << 20,
            topic_alias_maximum: 10,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            shared_subscriptions: true,
        }
    }

    fn connect(version: Version, client_id: &str) -> Connect {
        Connect {
            version,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    fn will(topic: &str, qos: QoS, retain: bool) -> Option<Will> {
        Some(Will {
            topic: topic.into(),
            payload: Bytes::from_static(b"bye"),
            qos,
            retain,
            properties: Properties::default(),
        })
    }

    fn refused(c: &Connect, o: &Offer) -> Refused {
        accept(c, o, Ok(None)).expect_err("refused")
    }

    #[test]
    fn the_authentication_refusal_comes_first() {
        let mut c = connect(Version::V311, "");
        c.clean_start = false; // would be refused too, later
        let no = Refused::new(reason::NOT_AUTHORIZED, "not authorized");
        assert_eq!(accept(&c, &offer(), Err(no)).unwrap_err(), no);
    }

    #[test]
    fn an_empty_client_id_needs_clean_session_in_311_and_is_assigned() {
        let mut c = connect(Version::V311, "");
        c.clean_start = false;
        assert_eq!(
            refused(&c, &offer()).code,
            reason::CLIENT_IDENTIFIER_NOT_VALID
        );
        c.clean_start = true;
        let a = accept(&c, &offer(), Ok(None)).unwrap();
        assert!(a.assign_client_id);
        let mut c5 = connect(Version::V5, "");
        c5.clean_start = false; // 5.0: allowed, the server assigns one
        let mut a = accept(&c5, &offer(), Ok(None)).unwrap();
        assert!(a.assign_client_id);
        a.assign(Version::V5, "midge-1");
        assert_eq!(
            a.connack.assigned_client_identifier.as_deref(),
            Some("midge-1")
        );
        let a = accept(&connect(Version::V5, "c"), &offer(), Ok(None)).unwrap();
        assert!(!a.assign_client_id);
        assert!(a.connack.assigned_client_identifier.is_none());
    }

    #[test]
    fn a_client_id_too_long_or_reserved_for_bridges_is_refused() {
        let long = "x".repeat(24);
        assert_eq!(
            refused(&connect(Version::V5, &long), &offer()).code,
            reason::CLIENT_IDENTIFIER_NOT_VALID
        );
        assert!(accept(&connect(Version::V5, &long[..23]), &offer(), Ok(None)).is_ok());
        assert_eq!(
            refused(&connect(Version::V311, "$bridge/b"), &offer()).code,
            reason::CLIENT_IDENTIFIER_NOT_VALID
        );
    }

    #[test]
    fn a_will_above_max_qos_with_retain_off_or_on_a_bad_topic_is_refused() {
        let mut o = offer();
        o.max_qos = 1;
        o.retain_available = false;
        let mut c = connect(Version::V5, "c");
        c.will = will("w", QoS::ExactlyOnce, false);
        assert_eq!(refused(&c, &o).code, reason::QOS_NOT_SUPPORTED);
        c.will = will("w", QoS::AtLeastOnce, true);
        assert_eq!(refused(&c, &o).code, reason::RETAIN_NOT_SUPPORTED);
        c.will = will("w/+", QoS::AtLeastOnce, false);
        assert_eq!(refused(&c, &o).code, reason::TOPIC_NAME_INVALID);
        c.will = will("w", QoS::AtLeastOnce, false);
        assert!(accept(&c, &o, Ok(None)).is_ok());
    }

    #[test]
    fn keep_alive_above_the_maximum_refuses_311_and_is_imposed_on_5() {
        let mut o = offer();
        o.max_keep_alive = 30;
        let c = connect(Version::V311, "c"); // asks for 60
        assert_eq!(refused(&c, &o).code, reason::CLIENT_IDENTIFIER_NOT_VALID);
        let a = accept(&connect(Version::V5, "c"), &o, Ok(None)).unwrap();
        assert_eq!(a.keep_alive, 30);
        assert_eq!(a.connack.server_keep_alive, Some(30));
        let a = accept(&connect(Version::V5, "c"), &offer(), Ok(None)).unwrap();
        assert_eq!(a.keep_alive, 60);
        assert_eq!(a.connack.server_keep_alive, None);
    }

    #[test]
    fn expiry_is_capped_and_connack_says_so_only_when_it_differs() {
        let mut c = connect(Version::V5, "c");
        c.properties.session_expiry_interval = Some(7200);
        let a = accept(&c, &offer(), Ok(None)).unwrap();
        assert_eq!(a.expiry, 3600);
        assert_eq!(a.connack.session_expiry_interval, Some(3600));
        c.properties.session_expiry_interval = Some(60);
        let a = accept(&c, &offer(), Ok(None)).unwrap();
        assert_eq!(a.expiry, 60);
        assert_eq!(a.connack.session_expiry_interval, None);
        let mut c = connect(Version::V311, "c");
        c.clean_start = false;
        let a = accept(&c, &offer(), Ok(None)).unwrap();
        assert_eq!(a.expiry, 3600);
        assert!(a.connack.is_empty(), "3.1.1's CONNACK has no properties");
    }

    #[test]
    fn receive_maximum_both_ways() {
        let mut c = connect(Version::V5, "c");
        // No Receive Maximum from the client: the server's max_inflight.
        let a = accept(&c, &offer(), Ok(None)).unwrap();
        assert_eq!(a.limits.window, 100);
        c.properties.receive_maximum = Some(5);
        let a = accept(&c, &offer(), Ok(None)).unwrap();
        assert_eq!(a.limits.window, 5);
        // The server's own, for the client's QoS 2 publishes.
        assert_eq!(a.connack.receive_maximum, Some(50));
    }

    #[test]
    fn topic_alias_and_packet_size_limits_both_ways() {
        let mut c = connect(Version::V5, "c");
        let a = accept(&c, &offer(), Ok(None)).unwrap();
        assert_eq!(a.limits.topic_alias_max, 0);
        assert_eq!(a.limits.max_packet_size, usize::MAX);
        assert_eq!(a.connack.topic_alias_maximum, Some(10));
        assert_eq!(a.connack.maximum_packet_size, Some(1 << 20));
        c.properties.topic_alias_maximum = Some(4);
        c.properties.maximum_packet_size = Some(1000);
        c.properties.request_problem_information = Some(0);
        let a = accept(&c, &offer(), Ok(None)).unwrap();
        assert_eq!(a.limits.topic_alias_max, 4);
        assert_eq!(a.limits.max_packet_size, 1000);
        assert!(!a.limits.problem_info);
        assert_eq!(a.limits.version, Version::V5);
    }

    #[test]
    fn connack_says_what_is_available() {
        let mut o = offer();
        o.max_qos = 1;
        o.retain_available = false;
        o.wildcard_subscriptions = false;
        o.subscription_identifiers = false;
        o.shared_subscriptions = false;
        let a = accept(&connect(Version::V5, "c"), &o, Ok(None)).unwrap();
        let p = &a.connack;
        assert_eq!(p.maximum_qos, Some(1));
        assert_eq!(p.retain_available, Some(0));
        assert_eq!(p.wildcard_subscription_available, Some(0));
        assert_eq!(p.subscription_identifier_available, Some(0));
        assert_eq!(p.shared_subscription_available, Some(0));
        let a = accept(&connect(Version::V5, "c"), &offer(), Ok(None)).unwrap();
        assert_eq!(a.connack.maximum_qos, None, "QoS 2: the default, not said");
        assert_eq!(a.connack.retain_available, Some(1));
    }

    #[test]
    fn connack_carries_the_authentication_method_and_final_data() {
        let mut c = connect(Version::V5, "c");
        let a = accept(&c, &offer(), Ok(Some(b"x".to_vec()))).unwrap();
        assert!(a.connack.authentication_method.is_none());
        assert!(
            a.connack.authentication_data.is_none(),
            "no data without a method"
        );
        c.properties.authentication_method = Some("SCRAM".into());
        let a = accept(&c, &offer(), Ok(Some(b"final".to_vec()))).unwrap();
        assert_eq!(a.connack.authentication_method.as_deref(), Some("SCRAM"));
        assert_eq!(
            a.connack.authentication_data.as_deref(),
            Some(&b"final"[..])
        );
    }
}
