//! A SUBACK on one node means the subscription is in force cluster-wide: a
//! QoS 1 message published on another node right after it (and
//! acknowledged there) reaches the subscriber. Before the SUBACK waited
//! for the other nodes to learn the new filter, such a message could be
//! acknowledged and sent nowhere (the publisher's node did not know yet
//! that the subscriber's node wanted it).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use midge_e2e::nats::{shared_urls, MidgeCluster};
use midge_e2e::*;
use rumqttc::QoS;

/// The next PUBLISH `sub` receives, or `None` after `within`.
async fn next_publish(sub: &mut V4, within: Duration) -> Option<rumqttc::Publish> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sub.events.recv()).await {
            Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))) => return Some(p),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("subscriber's connection failed: {e}"),
            Ok(None) | Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_publish_on_another_node_right_after_suback_is_delivered() {
    let Some(urls) = shared_urls() else { return };
    let c = MidgeCluster::new(&urls, "");
    let (n1, n2, n3) = (c.start("n1"), c.start("n2"), c.start("n3"));
    let mut sub = V4::new_at(n1.port()).await;
    let mut p2 = V4::new_at(n2.port()).await;
    let mut p3 = V4::new_at(n3.port()).await;
    // A new filter each round (plain, then a wildcard), so each SUBSCRIBE
    // is a new interest for the node; publishers on both other nodes.
    let mut lost = Vec::new();
    for round in 0..40 {
        let topic = format!("sb/{round}/x");
        let filter = if round % 2 == 0 {
            topic.clone()
        } else {
            format!("sb/{round}/+")
        };
        sub.subscribe(&filter, QoS::AtLeastOnce).await;
        let publ = if round % 4 < 2 { &mut p2 } else { &mut p3 };
        // Waits for the PUBACK: the message is acknowledged.
        publ.publish(&topic, QoS::AtLeastOnce, false, round.to_string())
            .await;
        match next_publish(&mut sub, Duration::from_secs(3)).await {
            Some(m) => assert_eq!(
                (m.topic.as_str(), text(&m.payload)),
                (topic.as_str(), round.to_string())
            ),
            None => lost.push(round),
        }
    }
    assert!(
        lost.is_empty(),
        "rounds whose message, acknowledged on another node right after the SUBACK on n1, never arrived: {lost:?}"
    );
}
