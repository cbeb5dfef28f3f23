//! Shared subscriptions ($share/{group}/{filter} and $queue/{filter}).

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use midge_e2e::raw::*;
use midge_e2e::*;

/// Drains publishes (acking them) until PINGRESP; returns payloads.
async fn drain(c: &mut RawClient) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let got = c.ping().await;
        if got.is_empty() {
            return out;
        }
        for p in got {
            if p.kind == PUBLISH {
                let m = p.publish(c.v5);
                if m.qos == 1 {
                    c.send(&puback(m.pid)).await;
                }
                out.push(text(&m.payload));
            }
        }
    }
}

async fn member(b: &TestBroker, filter: &str) -> RawClient {
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("member"))).await;
    assert_eq!(c.subscribe(1, &[], &[(filter, 1)]).await.codes, vec![1]);
    c
}

async fn publish_n(b: &TestBroker, t: &str, n: usize) {
    let mut p = V5::new(b, "pub").await;
    for i in 0..n {
        p.publish(t, v5::QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
}

async fn collect_until(members: &mut [&mut RawClient], n: usize) -> Vec<Vec<String>> {
    let mut got: Vec<Vec<String>> = vec![vec![]; members.len()];
    within("all shared messages", async {
        loop {
            for (i, m) in members.iter_mut().enumerate() {
                got[i].extend(drain(m).await);
            }
            if got.iter().map(|g| g.len()).sum::<usize>() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // Anything more would be a duplicate.
    for (i, m) in members.iter_mut().enumerate() {
        got[i].extend(drain(m).await);
    }
    got
}

fn assert_each_once(got: &[Vec<String>], n: usize) {
    let all: Vec<&String> = got.iter().flatten().collect();
    assert_eq!(all.len(), n, "each message exactly once: {got:?}");
    let set: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(set.len(), n, "duplicates: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_splits_messages_between_members() {
    let b = start_broker(|_| {}).await;
    let t = topic("share");
    let f = format!("$share/g1/{t}");
    let mut a = member(&b, &f).await;
    let mut c = member(&b, &f).await;
    publish_n(&b, &t, 20).await;
    let got = collect_until(&mut [&mut a, &mut c], 20).await;
    assert_each_once(&got, 20);
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "not split: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_with_wildcard_filter() {
    let b = start_broker(|_| {}).await;
    let t = topic("sharewild");
    let f = format!("$share/gw/{t}/+");
    let mut a = member(&b, &f).await;
    let mut c = member(&b, &f).await;
    publish_n(&b, &format!("{t}/x"), 10).await;
    let got = collect_until(&mut [&mut a, &mut c], 10).await;
    assert_each_once(&got, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_member_gets_everything_after_other_disconnects() {
    let b = start_broker(|_| {}).await;
    let t = topic("sharedisc");
    let f = format!("$share/g2/{t}");
    let mut a = member(&b, &f).await;
    let mut c = member(&b, &f).await;
    c.send(&disconnect(true, 0, &[])).await;
    c.expect_closed().await;
    publish_n(&b, &t, 10).await;
    let got = collect_until(&mut [&mut a], 10).await;
    assert_each_once(&got, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_prefix_is_a_shared_subscription() {
    let b = start_broker(|_| {}).await;
    let t = topic("queue");
    let f = format!("$queue/{t}");
    let mut a = member(&b, &f).await;
    let mut c = member(&b, &f).await;
    publish_n(&b, &t, 10).await;
    let got = collect_until(&mut [&mut a, &mut c], 10).await;
    assert_each_once(&got, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_and_plain_subscriber_get_a_copy() {
    let b = start_broker(|_| {}).await;
    let t = topic("groups");
    let mut g1 = member(&b, &format!("$share/ga/{t}")).await;
    let mut g2 = member(&b, &format!("$share/gb/{t}")).await;
    let mut plain = member(&b, &t).await;
    publish_n(&b, &t, 5).await;
    for m in [&mut g1, &mut g2, &mut plain] {
        let got = collect_until(&mut [m], 5).await;
        assert_each_once(&got, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_not_sent_on_shared_subscribe() {
    let b = start_broker(|_| {}).await;
    let t = topic("shareret");
    let mut p = V5::new(&b, "pub").await;
    p.publish(&t, v5::QoS::AtLeastOnce, true, "retained").await;
    let mut a = member(&b, &format!("$share/gr/{t}")).await;
    assert!(drain(&mut a).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_disabled_suback_0x9e() {
    let b = start_broker(|c| c.mqtt.shared_subscriptions = false).await;
    let t = topic("noshare");
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("noshare"))).await;
    let a = c.subscribe(1, &[], &[(&format!("$share/g/{t}"), 1)]).await;
    assert_eq!(a.codes, vec![0x9E]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_on_shared_subscription_is_protocol_error() {
    let b = start_broker(|_| {}).await;
    let t = topic("sharenl");
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("sharenl"))).await;
    c.send(&subscribe(
        true,
        1,
        &[],
        &[(&format!("$share/g/{t}"), 0x04 | 1)],
    ))
    .await;
    c.expect_disconnect(0x82).await;
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_client_can_use_shared_subscription() {
    let b = start_broker(|_| {}).await;
    let t = topic("share4");
    let mut s = V4::new(&b, "s4").await;
    s.subscribe(&format!("$share/g4/{t}"), rumqttc::QoS::AtLeastOnce)
        .await;
    let mut p = V4::new(&b, "p4").await;
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, "shared4")
        .await;
    let m = s.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_ref()),
        (t.as_str(), &b"shared4"[..])
    );
}

/// A member that received QoS 1 messages but never acknowledged them goes
/// away: the unacknowledged and still-queued messages are redelivered to
/// the remaining member of the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_of_departed_member_are_redelivered_to_another() {
    let b = start_broker(|_| {}).await;
    let t = topic("share-redeliver");
    let f = format!("$share/g9/{t}");
    // A receives at most 2 in flight and never acks, so some messages stay queued too.
    let opts = ConnectOpts::v5(&unique("lazy")).prop(Prop::receive_maximum(2));
    let (mut lazy, _) = RawClient::handshake(b.addr, opts).await;
    assert_eq!(lazy.subscribe(1, &[], &[(&f, 1)]).await.codes, vec![1]);
    let mut good = member(&b, &f).await;
    publish_n(&b, &t, 10).await;
    // Let the lazy member receive its share without acking it.
    let first = lazy.recv_publish().await;
    assert_eq!(first.qos, 1);
    drop(lazy);
    let got = collect_until(&mut [&mut good], 10).await;
    let set: HashSet<&String> = got[0].iter().collect();
    assert_eq!(
        set.len(),
        10,
        "every message reached the remaining member: {got:?}"
    );
}
