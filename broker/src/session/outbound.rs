//! The outbound window, one for both roles: what a session hands its
//! encoder next (resends after a reconnect, then queued deliveries while
//! the window has room), with packet ids and store ops taken under the
//! session's lock, and what the encoder gives back unsent. The server's
//! connection (server/writer.rs) and a bridge's link (bridge/outbound.rs)
//! both drive it; neither keeps a window of its own.

use midge_protocol::QoS;

use super::{Delivery, Inflight, Session, SessionState, Stage};
use crate::store::Op;

/// What the outbound window hands to the encoder.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A PUBLISH: QoS 0 (packet id 0, already out of the session), or a
    /// QoS 1/2 delivery now in the window (`dup`: a resend).
    Publish {
        packet_id: u16,
        dup: bool,
        delivery: Delivery,
    },
    /// PUBREL for a QoS 2 message the peer has (a resend after a reconnect).
    Release(u16),
}

impl Session {
    /// Moves what can be sent now into `items`, up to `batch` of them
    /// (resends after a reconnect are never cut): every inflight message
    /// again when a resend is due (PUBLISH with DUP, or PUBREL once
    /// released), then queued deliveries while fewer than `window` are in
    /// flight (QoS 0 passes the window, and leaves the session as it is
    /// taken). A QoS above `max_qos` (the peer's Maximum QoS; QoS 2 for
    /// clients, whose deliveries were lowered when subscribed) is lowered
    /// to it; one lowered to QoS 0 leaves the store. Returns the store
    /// ticket that must be durable before the bytes leave: a QoS 2 packet
    /// id, so that after a restart the message goes again under the same
    /// id (with DUP), which the peer recognises.
    pub fn take_outgoing(
        &self,
        window: usize,
        max_qos: QoS,
        batch: usize,
        items: &mut Vec<Outgoing>,
    ) -> u64 {
        let mut st = self.state.lock();
        self.take_outgoing_locked(&mut st, window, max_qos, batch, items)
    }

    /// [`Self::take_outgoing`] under a lock the caller holds (the server's
    /// writer takes the control packets under the same lock).
    pub fn take_outgoing_locked(
        &self,
        st: &mut SessionState,
        window: usize,
        max_qos: QoS,
        batch: usize,
        items: &mut Vec<Outgoing>,
    ) -> u64 {
        let mut ticket = 0;
        if st.resend {
            st.resend = false;
            for i in &st.inflight {
                items.push(match i.stage {
                    Stage::Published => Outgoing::Publish {
                        packet_id: i.packet_id,
                        dup: true,
                        delivery: i.delivery.clone(),
                    },
                    Stage::Released => Outgoing::Release(i.packet_id),
                });
            }
        }
        while items.len() < batch {
            let Some(front) = st.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            let Some(mut d) = st.queue.pop_front() else {
                break;
            };
            st.queued_bytes -= d.msg.payload.len();
            if d.qos > max_qos {
                d.qos = max_qos;
            }
            if d.qos == QoS::AtMostOnce {
                self.forget(d.seq);
                d.seq = 0;
                items.push(Outgoing::Publish {
                    packet_id: 0,
                    dup: false,
                    delivery: d,
                });
                continue;
            }
            let packet_id = st.alloc_packet_id();
            if d.seq != 0 {
                let op = Op::Inflight(self.client_id.clone(), d.seq, packet_id, Stage::Published);
                let t = self.store_op(op);
                if d.qos == QoS::ExactlyOnce {
                    ticket = t;
                }
            }
            st.inflight.push_back(Inflight {
                packet_id,
                delivery: d.clone(),
                stage: Stage::Published,
            });
            items.push(Outgoing::Publish {
                packet_id,
                dup: false,
                delivery: d,
            });
        }
        ticket
    }

    /// Takes the deliveries with `packet_ids` out of the window (and the
    /// store) unsent: the encoder dropped them (expired, too large for the
    /// peer, no remote topic), so no ack will come for them. Wakes the
    /// output for the freed slots.
    pub fn withdraw(&self, packet_ids: &[u16]) {
        if packet_ids.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        st.inflight.retain(|i| {
            if !packet_ids.contains(&i.packet_id) {
                return true;
            }
            self.forget(i.delivery.seq);
            false
        });
        drop(st);
        self.notify.notify_one();
    }
}
