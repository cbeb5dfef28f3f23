//! The event fan-out: every event point calls [`Broker::emit`] once; the
//! event goes to the rule engine, the plugins, `$SYS` notices and the
//! broker's [`EventSink`]s, each only for the kinds it wants (see
//! `crate::events` for the event types and their conversions).

use std::sync::Arc;

use bytes::Bytes;
use midge_protocol::{ByteStr, Properties, QoS};

use super::Broker;
use crate::events::{plugin_event, rule_input, sys_notice, Event, EventSink, Kind};
use crate::message::Message;

/// The broker's event sinks and the union of the kinds they want.
#[derive(Debug, Default)]
pub(super) struct Sinks {
    list: Vec<(Kind, Arc<dyn EventSink>)>,
    kinds: Kind,
}

impl Sinks {
    pub(super) fn new(sinks: Vec<Arc<dyn EventSink>>) -> Sinks {
        let list: Vec<(Kind, Arc<dyn EventSink>)> =
            sinks.into_iter().map(|s| (s.kinds(), s)).collect();
        let kinds = list.iter().fold(Kind::NONE, |k, (s, _)| k.union(*s));
        Sinks { list, kinds }
    }
}

impl Broker {
    /// Does any listener want events of `kind`? (Rules: one atomic load per
    /// `$events` source the kind feeds; plugins: one branch, then one
    /// atomic load; sinks: one load.)
    #[inline]
    pub fn wants(&self, kind: Kind) -> bool {
        kind.rule_kinds().iter().any(|k| self.rules.wants(*k))
            || self
                .plugins
                .as_ref()
                .is_some_and(|h| h.wants_event(kind.plugin_set()))
            || (kind.sys_notice() && self.sys.client_notices && self.sys.interval != 0)
            || self.sinks.kinds.intersects(kind)
    }

    /// Raises `e`: each listener that wants its kind gets it in its own
    /// form, built only then.
    #[inline]
    pub fn emit(&self, e: Event<'_>) {
        let kind = e.kind();
        if self.wants(kind) {
            self.fan_out(kind, &e);
        }
    }

    fn fan_out(&self, kind: Kind, e: &Event<'_>) {
        rule_input::raise(&self.rules, e);
        if let Some(host) = &self.plugins {
            if host.wants_event(kind.plugin_set()) {
                if let Some(pe) = plugin_event::convert(e) {
                    self.plugin_events.push(pe);
                }
            }
        }
        if kind.sys_notice() && self.sys.client_notices && self.sys.interval != 0 {
            if let Some((topic, body)) = sys_notice::notice(e) {
                let msg = Message::new(
                    ByteStr::from(topic),
                    Bytes::from(body),
                    QoS::AtMostOnce,
                    false,
                    Properties::default(),
                );
                self.route(Arc::new(msg));
            }
        }
        for (kinds, sink) in &self.sinks.list {
            if kinds.intersects(kind) {
                sink.on_event(e);
            }
        }
    }
}
