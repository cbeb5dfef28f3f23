//! PUBLISH from the client: the checks (rate limits, maximum QoS, retain,
//! topic alias), authorization and the on-publish plugins (one message, or
//! a batch of them), then routing and the acknowledgement (decided by the session
//! core: `Session::on_publish`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use midge_plugin::types::{self as pt, HookSet};
use midge_plugin::{BatchItem, BatchVerdict, PublishVerdict};
use midge_protocol::{reason, Publish, QoS};
use tracing::warn;

use super::inbound::Inbound;
use super::{broken, End};
use crate::events::{AuthzAction, Event, Kind};
use crate::limits::Exceeded;
use crate::message::Message;
use crate::plugins;
use crate::session::proto;

/// What the on-publish plugins made of a message.
pub(super) enum Routed {
    /// Nothing: route the PUBLISH as it is.
    AsIs,
    /// Route this message instead.
    Changed(Message),
    /// Dropped silently.
    Dropped,
}

impl Inbound {
    /// Asks the authorize plugins (unless the client is a superuser); without
    /// plugins everything is allowed. Emits `client_check_authz_complete`
    /// when a rule listens for it.
    pub(super) async fn authorized(
        &self,
        action: pt::Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> bool {
        let (allow, source) = match (self.broker.plugins(), &self.plugin_client) {
            (Some(host), Some(client))
                if !client.superuser && host.has_hook(HookSet::AUTHORIZE) =>
            {
                let req = pt::AuthzRequest {
                    client: (**client).clone(),
                    action,
                    topic: topic.to_string(),
                    qos: plugins::qos_to(qos),
                    retain,
                };
                match Box::pin(host.authorize(&req)).await.decision {
                    pt::AuthzDecision::Deny => (false, "plugin"),
                    pt::AuthzDecision::Allow => (true, "plugin"),
                    pt::AuthzDecision::Ignore => (true, "default"),
                }
            }
            (Some(_), Some(client)) if client.superuser => (true, "superuser"),
            _ => (true, "default"),
        };
        self.broker.emit(Event::AuthzChecked {
            client: self.client(),
            action: match action {
                pt::Action::Publish => AuthzAction::Publish,
                pt::Action::Subscribe => AuthzAction::Subscribe,
            },
            topic,
            allowed: allow,
            source,
        });
        allow
    }

    /// Runs the on-publish plugins: `Ok(Some(msg))` to route, `Ok(None)` to
    /// drop silently, `Err(code)` to refuse.
    async fn transform(&self, msg: Message) -> Result<Option<Message>, u8> {
        let Some(host) = self.broker.plugins() else {
            return Ok(Some(msg));
        };
        if !host.wants_publish(&msg.topic) {
            return Ok(Some(msg));
        }
        let out =
            Box::pin(host.on_publish(&plugins::to_plugin(&msg), self.plugin_client.as_deref()))
                .await;
        match out.decision {
            PublishVerdict::Pass => Ok(Some(msg)),
            PublishVerdict::Modified(m) => Ok(Some(plugins::from_plugin(m, msg.origin.clone()))),
            PublishVerdict::Drop => Ok(None),
            PublishVerdict::Deny(code) => Err(code),
        }
    }

    pub(super) async fn publish(&mut self, p: Publish) -> Option<End> {
        let p = match self.publish_checks(p) {
            Ok(p) => p,
            Err(end) => return Some(end),
        };
        // Plugins (authorize, then on-publish) decide first; a refused message
        // is acknowledged with the reason (5.0) or silently dropped (3.1.1).
        let mut code = reason::SUCCESS;
        let mut routed = Routed::AsIs;
        let plugins = self.broker.plugins().is_some();
        if plugins || self.broker.wants(Kind::AUTHZ_CHECKED) {
            if !self
                .authorized(pt::Action::Publish, &p.topic, p.qos, p.retain)
                .await
            {
                code = reason::NOT_AUTHORIZED;
            } else if plugins {
                match self
                    .transform(Message::from_publish(p.clone(), Some(self.origin.clone())))
                    .await
                {
                    Ok(Some(m)) => routed = Routed::Changed(m),
                    Ok(None) => routed = Routed::Dropped,
                    Err(c) => code = c,
                }
            }
        }
        self.publish_finish(p, code, routed)
    }

    /// Consecutive PUBLISH packets read in one go, with on-publish plugins
    /// loaded: each is checked and authorized in order, then the plugins see
    /// all of them in one `on-publish-batch` call per plugin, then each is
    /// routed and acknowledged in order. A packet that ends the connection
    /// ends it after the ones before it are handled.
    pub(super) async fn publish_batch(&mut self, batch: &mut Vec<Publish>) -> Option<End> {
        if batch.len() == 1 {
            let p = batch.pop()?;
            return self.publish(p).await;
        }
        let Some(host) = self.broker.plugins().cloned() else {
            for p in batch.drain(..) {
                if let Some(end) = self.publish(p).await {
                    return Some(end);
                }
            }
            return None;
        };
        let mut ready: Vec<(Publish, u8)> = Vec::with_capacity(batch.len());
        let mut end = None;
        // Without an authorize plugin or a rule on the authorization event,
        // every publish is allowed: nothing to ask per message.
        let ask = host.has_hook(HookSet::AUTHORIZE) || self.broker.wants(Kind::AUTHZ_CHECKED);
        for p in batch.drain(..) {
            let p = match self.publish_checks(p) {
                Ok(p) => p,
                Err(e) => {
                    end = Some(e);
                    break;
                }
            };
            let allowed = !ask
                || self
                    .authorized(pt::Action::Publish, &p.topic, p.qos, p.retain)
                    .await;
            let code = if allowed {
                reason::SUCCESS
            } else {
                reason::NOT_AUTHORIZED
            };
            ready.push((p, code));
        }
        batch.clear();
        // The messages some plugin wants, in order, with their index in
        // `ready` (v5 properties converted only for messages that have any).
        let mut picked = Vec::new();
        let mut props = Vec::new();
        for (i, (p, code)) in ready.iter().enumerate() {
            if *code == reason::SUCCESS && host.wants_publish(&p.topic) {
                picked.push(i);
                props.push(plugins::plugin_properties(&p.properties));
            }
        }
        let mut outcomes = Vec::new();
        if !picked.is_empty() {
            let items: Vec<BatchItem> = picked
                .iter()
                .zip(&props)
                .map(|(&i, props)| plugins::batch_item(&ready[i].0, props.as_ref()))
                .collect();
            outcomes = Box::pin(host.on_publish_batch(&items, self.plugin_client.as_deref())).await;
        }
        // The outcomes of the picked messages, in order, met as the loop
        // below reaches their index.
        let mut outcomes = picked.into_iter().zip(outcomes).peekable();
        // Messages changed alike share their properties: converted once.
        let mut converted = plugins::PropertiesCache::default();
        for (i, (p, mut code)) in ready.into_iter().enumerate() {
            let verdict = outcomes.next_if(|(k, _)| *k == i).map(|(_, o)| o.decision);
            let routed = match verdict {
                None | Some(BatchVerdict::Pass) => Routed::AsIs,
                Some(BatchVerdict::Modified(c)) => Routed::Changed(plugins::changed_message(
                    &p,
                    c,
                    &mut converted,
                    Some(self.origin.clone()),
                )),
                Some(BatchVerdict::Drop) => Routed::Dropped,
                Some(BatchVerdict::Deny(c)) => {
                    code = c;
                    Routed::AsIs
                }
            };
            if let Some(e) = self.publish_finish(p, code, routed) {
                return Some(e);
            }
        }
        end
    }

    /// The checks of a PUBLISH before anyone decides on it: rate limits,
    /// maximum QoS, retain, topic alias. `Err`: the connection ends.
    fn publish_checks(&mut self, mut p: Publish) -> Result<Publish, End> {
        self.broker.stats.publish_received[p.qos as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(l) = &mut self.limiter {
            if let Err(e) = l.check(p.payload.len()) {
                let stats = &self.broker.stats;
                let (counter, why) = match e {
                    Exceeded::Messages => {
                        (&stats.limit_publish_rate, "publish rate limit exceeded")
                    }
                    Exceeded::Bytes => (
                        &stats.limit_publish_bytes_rate,
                        "publish byte-rate limit exceeded",
                    ),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                warn!(client_id = %self.origin.client_id, why, "disconnecting");
                return Err(End::Server {
                    reason: e.reason(),
                    why,
                });
            }
        }
        let cfg = &self.broker.config;
        if p.qos as u8 > cfg.max_qos {
            return Err(End::Server {
                reason: reason::QOS_NOT_SUPPORTED,
                why: "QoS above the maximum QoS",
            });
        }
        if p.retain && !cfg.retain_available {
            return Err(End::Server {
                reason: reason::RETAIN_NOT_SUPPORTED,
                why: "retain is not available",
            });
        }
        proto::client_publish(&p.properties).map_err(broken)?;
        self.aliases
            .resolve(&mut p.topic, p.properties.topic_alias)
            .map_err(broken)?;
        Ok(p)
    }

    /// Routes (unless refused) and acknowledges a checked PUBLISH. `code`:
    /// success or why it was refused; `routed`: what on-publish made of it
    /// (see [`Routed`]). The session core decides (`Session::on_publish`).
    fn publish_finish(&mut self, p: Publish, code: u8, routed: Routed) -> Option<End> {
        let receive_maximum = self.broker.config.receive_maximum;
        let answer =
            match self
                .session
                .on_publish(p.qos, p.packet_id, code, self.version, receive_maximum)
            {
                Ok(a) => a,
                Err(v) => {
                    self.broker
                        .stats
                        .limit_receive_maximum
                        .fetch_add(1, Ordering::Relaxed);
                    return Some(broken(v));
                }
            };
        self.wait_for(answer.ticket);
        if answer.route {
            let (t, lane) = match routed {
                Routed::Changed(m) => self.broker.publish_from_client(Arc::new(m)),
                Routed::Dropped => (0, None),
                Routed::AsIs => self
                    .broker
                    .publish_from_client(Arc::new(Message::from_publish(
                        p,
                        Some(self.origin.clone()),
                    ))),
            };
            self.rules_lane = self.rules_lane.or(lane);
            // The ack goes once the message is stored where it went (QoS 0
            // has no ack to hold back).
            if answer.ack.is_some() {
                self.wait_for(t);
            }
        }
        self.control.extend(answer.ack);
        None
    }
}
