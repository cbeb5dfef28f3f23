//! SUBSCRIBE and UNSUBSCRIBE as pure decisions: per filter, granted (with
//! the QoS the server grants) or refused with its reason code, whether
//! retained messages follow, and the SUBACK / UNSUBACK codes for each
//! version. The connection (server/connection/inbound.rs) asks the
//! authorization (an async plugin call) and the session's subscription
//! limit, then does what these say (router, store, events).
//!
//! What the codec already refuses, so these never see it: an invalid
//! filter (`topic::valid_filter`: wildcards out of place, `$share/g/` with
//! an empty or wildcard group or no filter after it, `$queue/` with none),
//! options with reserved bits, QoS 3 or Retain Handling 3 (Malformed), No
//! Local on a shared subscription and a SUBSCRIBE without filters
//! (Protocol Error). [`no_local_on_shared`] repeats the No Local rule for
//! packets built without the decoder.

use midge_protocol::{reason, topic, Properties, QoS, SubOptions, Version};

use super::{Offer, Violation};

/// A SUBSCRIBE filter taken apart: `$share/g/f` is `f` in group `g`,
/// `$queue/f` is `f` in group `$queue`, anything else has no group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: Option<&'a str>,
    /// The filter matched against topics (after the group).
    pub filter: &'a str,
}

impl<'a> SharedFilter<'a> {
    pub fn parse(filter: &'a str) -> SharedFilter<'a> {
        match topic::split_shared(filter) {
            Some((group, inner)) => SharedFilter {
                group: Some(group),
                filter: inner,
            },
            None => SharedFilter {
                group: None,
                filter,
            },
        }
    }
}

/// The SUBSCRIBE's Subscription Identifier (the first; the codec allows
/// one). A server that does not support them ends the connection with
/// 0xA1 (MQTT-3.8.2.1.2).
pub fn subscription_identifier(
    props: &Properties,
    offer: &Offer,
) -> Result<Option<u32>, Violation> {
    let id = props.subscription_identifiers.first().copied();
    if id.is_some() && !offer.subscription_identifiers {
        return Err(Violation {
            reason: reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            why: "subscription identifiers are not supported",
        });
    }
    Ok(id)
}

/// No Local on a shared subscription is a Protocol Error (MQTT-3.8.3-4).
pub fn no_local_on_shared(f: SharedFilter<'_>, opts: SubOptions) -> Result<(), Violation> {
    if f.group.is_some() && opts.no_local {
        return Err(Violation::protocol("no local on a shared subscription"));
    }
    Ok(())
}

/// One filter of a SUBSCRIBE, decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAnswer {
    /// Subscribe with these options (their QoS: the one granted).
    Granted(SubOptions),
    /// Refused with this 5.0 reason code.
    Refused(u8),
}

impl FilterAnswer {
    /// The filter's SUBACK code: the QoS granted, or the refusal's reason
    /// (5.0) / 0x80 Failure (3.1.1, which has no reasons).
    pub fn suback_code(self, version: Version) -> u8 {
        match (self, version) {
            (FilterAnswer::Granted(opts), _) => opts.qos as u8,
            (FilterAnswer::Refused(code), Version::V5) => code,
            (FilterAnswer::Refused(_), Version::V311) => reason::v311::SUBACK_FAILURE,
        }
    }
}

/// Decides one filter (`authorized`: what authorization said; `over_limit`:
/// a new filter past the session's subscription maximum). Refusals, first
/// that applies: not authorized (0x87), quota (0x97), shared subscriptions
/// not supported (0x9E), wildcards not supported (0xA2). Granted: the QoS
/// asked, at most the server's maximum QoS.
pub fn subscribe_filter(
    f: SharedFilter<'_>,
    mut opts: SubOptions,
    authorized: bool,
    over_limit: bool,
    offer: &Offer,
) -> FilterAnswer {
    let refused = if !authorized {
        Some(reason::NOT_AUTHORIZED)
    } else if over_limit {
        Some(reason::QUOTA_EXCEEDED)
    } else if f.group.is_some() && !offer.shared_subscriptions {
        Some(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
    } else if !offer.wildcard_subscriptions && f.filter.contains(['+', '#']) {
        Some(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
    } else {
        None
    };
    if let Some(code) = refused {
        return FilterAnswer::Refused(code);
    }
    opts.qos = opts
        .qos
        .min(QoS::from_u8(offer.max_qos).unwrap_or(QoS::ExactlyOnce));
    FilterAnswer::Granted(opts)
}

/// Do the retained messages matching a granted filter go to the client?
/// Never for a shared subscription (MQTT 5.0 section 4.8.2: retained
/// messages are not sent to a shared subscription), never when retain is
/// not available; Retain Handling 0: on every SUBSCRIBE, 1: only when the
/// subscription did not exist (`existed`), 2: never.
pub fn sends_retained(f: SharedFilter<'_>, opts: SubOptions, existed: bool, offer: &Offer) -> bool {
    let wanted = opts.retain_handling == 0 || (opts.retain_handling == 1 && !existed);
    f.group.is_none() && wanted && offer.retain_available
}

/// The UNSUBACK code for one filter (5.0; 3.1.1's UNSUBACK has none).
pub fn unsuback_code(existed: bool) -> u8 {
    if existed {
        reason::SUCCESS
    } else {
        reason::NO_SUBSCRIPTION_EXISTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            max_client_id_len: 64,
            max_qos: 1,
            retain_available: true,
            max_keep_alive: 0,
            max_session_expiry: 0,
            max_inflight: 10,
            receive_maximum: 10,
            max_packet_size: 1 << 20,
            topic_alias_maximum: 0,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            shared_subscriptions: true,
        }
    }

    fn opts(qos: QoS) -> SubOptions {
        SubOptions::qos(qos)
    }

    #[test]
    fn shared_filters_are_taken_apart() {
        let f = SharedFilter::parse("$share/g/a/+");
        assert_eq!((f.group, f.filter), (Some("g"), "a/+"));
        let f = SharedFilter::parse("$queue/a/#");
        assert_eq!((f.group, f.filter), (Some("$queue"), "a/#"));
        let f = SharedFilter::parse("a/b");
        assert_eq!((f.group, f.filter), (None, "a/b"));
        let f = SharedFilter::parse("$SYS/#");
        assert_eq!((f.group, f.filter), (None, "$SYS/#"));
    }

    #[test]
    fn subscription_identifiers_when_supported_only() {
        let mut props = Properties::default();
        assert_eq!(subscription_identifier(&props, &offer()), Ok(None));
        props.subscription_identifiers.push(7);
        assert_eq!(subscription_identifier(&props, &offer()), Ok(Some(7)));
        let off = Offer {
            subscription_identifiers: false,
            ..offer()
        };
        let v = subscription_identifier(&props, &off).unwrap_err();
        assert_eq!(v.reason, reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED);
    }

    #[test]
    fn no_local_is_refused_on_shared_subscriptions_only() {
        let mut o = opts(QoS::AtMostOnce);
        o.no_local = true;
        let v = no_local_on_shared(SharedFilter::parse("$share/g/a"), o).unwrap_err();
        assert_eq!(v.reason, reason::PROTOCOL_ERROR);
        assert!(no_local_on_shared(SharedFilter::parse("$queue/a"), o).is_err());
        assert!(no_local_on_shared(SharedFilter::parse("a"), o).is_ok());
        let plain = opts(QoS::AtMostOnce);
        assert!(no_local_on_shared(SharedFilter::parse("$share/g/a"), plain).is_ok());
    }

    #[test]
    fn granted_qos_is_at_most_the_servers_maximum() {
        let f = SharedFilter::parse("a/#");
        let answer = subscribe_filter(f, opts(QoS::ExactlyOnce), true, false, &offer());
        let FilterAnswer::Granted(o) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(o.qos, QoS::AtLeastOnce);
        assert_eq!(answer.suback_code(Version::V5), 1);
        let answer = subscribe_filter(f, opts(QoS::AtMostOnce), true, false, &offer());
        assert_eq!(answer.suback_code(Version::V311), 0);
    }

    #[test]
    fn refusals_come_in_order_with_their_codes() {
        let no = Offer {
            shared_subscriptions: false,
            wildcard_subscriptions: false,
            ..offer()
        };
        let shared = SharedFilter::parse("$share/g/a/+");
        let q = opts(QoS::AtMostOnce);
        let code = |authorized, over| subscribe_filter(shared, q, authorized, over, &no);
        assert_eq!(code(false, true), FilterAnswer::Refused(0x87));
        assert_eq!(code(true, true), FilterAnswer::Refused(0x97));
        assert_eq!(code(true, false), FilterAnswer::Refused(0x9E));
        let wild = subscribe_filter(SharedFilter::parse("a/+"), q, true, false, &no);
        assert_eq!(wild, FilterAnswer::Refused(0xA2));
        let hash = subscribe_filter(SharedFilter::parse("#"), q, true, false, &no);
        assert_eq!(hash, FilterAnswer::Refused(0xA2));
        let plain = subscribe_filter(SharedFilter::parse("a/b"), q, true, false, &no);
        assert_eq!(plain, FilterAnswer::Granted(q));
        // 3.1.1 has one failure code for every refusal.
        for answer in [code(false, false), wild] {
            assert_eq!(answer.suback_code(Version::V311), 0x80);
        }
        assert_eq!(wild.suback_code(Version::V5), 0xA2);
    }

    #[test]
    fn retained_messages_follow_retain_handling() {
        let plain = SharedFilter::parse("a");
        let rh = |n| SubOptions {
            retain_handling: n,
            ..opts(QoS::AtMostOnce)
        };
        assert!(sends_retained(plain, rh(0), false, &offer()));
        assert!(sends_retained(plain, rh(0), true, &offer()));
        assert!(sends_retained(plain, rh(1), false, &offer()));
        assert!(!sends_retained(plain, rh(1), true, &offer()));
        assert!(!sends_retained(plain, rh(2), false, &offer()));
        let shared = SharedFilter::parse("$share/g/a");
        assert!(!sends_retained(shared, rh(0), false, &offer()));
        let off = Offer {
            retain_available: false,
            ..offer()
        };
        assert!(!sends_retained(plain, rh(0), false, &off));
    }

    #[test]
    fn unsuback_says_whether_the_subscription_existed() {
        assert_eq!(unsuback_code(true), reason::SUCCESS);
        assert_eq!(unsuback_code(false), reason::NO_SUBSCRIPTION_EXISTED);
    }
}
