//! What crosses a bridge, and how: out and in, QoS 0/1/2, topic mappings,
//! retained messages, 5.0 properties. The remote is a real Mosquitto.

use bytes::Bytes;
use midge_e2e::mosquitto::Mosquitto;
use midge_e2e::v5::{PublishProperties, QoS};
use midge_e2e::*;

use super::{bridges, linked, v5_at};
use midge_e2e::v5;

fn config(port: u16, protocol: &str) -> String {
    format!(
        r#"
[[bridges]]
name = "cloud"
remote = "mqtt://127.0.0.1:{port}"
protocol = "{protocol}"
client_id = "{id}"
[bridges.reconnect]
initial_ms = 100
max_ms = 1000
[[bridges.out]]
filter = "sensors/+/temp"
topic = "site1/{{2}}/temperature"
qos = 2
[[bridges.out]]
filter = "edge/#"
strip_prefix = "edge/"
add_prefix = "site1/raw/"
qos = 1
[[bridges.in]]
filter = "cmd/site1/#"
strip_prefix = "cmd/site1/"
add_prefix = "commands/"
qos = 2
"#,
        id = unique("edge")
    )
}

#[tokio::test]
async fn out_and_in_with_mappings_and_every_qos_over_5_0() {
    let Some(remote) = Mosquitto::start("") else {
        return;
    };
    let cfg = config(remote.port, "5.0");
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    linked(&b, "cloud").await;
    let mut far = v5_at(remote.port, "far").await;
    far.subscribe("site1/#", QoS::ExactlyOnce).await;
    let mut near = V5::new(&b, "near").await;
    near.subscribe("commands/#", QoS::ExactlyOnce).await;

    // Out: the template, then the prefixes; QoS is the lowest of the
    // publish, the direction and the subscription.
    for (qos, n) in [
        (QoS::AtMostOnce, 0),
        (QoS::AtLeastOnce, 1),
        (QoS::ExactlyOnce, 2),
    ] {
        near.publish("sensors/k7/temp", qos, false, format!("t{n}"))
            .await;
        let p = far.next_publish().await;
        assert_eq!(p.topic, Bytes::from("site1/k7/temperature"));
        assert_eq!(p.payload, Bytes::from(format!("t{n}")));
        assert_eq!(p.qos, qos);
        near.publish("edge/a/b", qos, false, format!("e{n}")).await;
        let p = far.next_publish().await;
        assert_eq!(p.topic, Bytes::from("site1/raw/a/b"));
        let capped = if qos == QoS::ExactlyOnce {
            QoS::AtLeastOnce
        } else {
            qos
        };
        assert_eq!(p.qos, capped);
    }
    // Not matched by an out filter: stays here.
    near.publish("other/x", QoS::AtLeastOnce, false, "no").await;
    far.expect_no_publish(QUIET).await;

    // In: mapped to the local prefix, every QoS.
    for (qos, n) in [
        (QoS::AtMostOnce, 0),
        (QoS::AtLeastOnce, 1),
        (QoS::ExactlyOnce, 2),
    ] {
        far.publish("cmd/site1/open/door", qos, false, format!("c{n}"))
            .await;
        let p = near.next_publish().await;
        assert_eq!(p.topic, Bytes::from("commands/open/door"));
        assert_eq!(p.payload, Bytes::from(format!("c{n}")));
        assert_eq!(p.qos, qos);
    }
    let st = &b.bridges.get("cloud").unwrap().status;
    assert!(st.sent.load(std::sync::atomic::Ordering::Relaxed) >= 6);
    assert_eq!(st.received.load(std::sync::atomic::Ordering::Relaxed), 3);
    b.shutdown().await;
}

#[tokio::test]
async fn out_and_in_over_3_1_1_seen_by_mosquitto_sub() {
    let Some(remote) = Mosquitto::start("") else {
        return;
    };
    let cfg = config(remote.port, "3.1.1");
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    linked(&b, "cloud").await;
    // An independent client at the remote: Mosquitto's own mosquitto_sub.
    let mut sub = std::process::Command::new("mosquitto_sub");
    sub.args(["-h", "127.0.0.1", "-p", &remote.port.to_string()])
        .args([
            "-t", "site1/#", "-q", "1", "-C", "2", "-W", "15", "-v", "-V", "mqttv311",
        ]);
    let sub = tokio::spawn(run_command(sub, std::time::Duration::from_secs(20)));
    // mosquitto_sub needs a moment to subscribe; publish until it has both.
    let mut near = V4::new(&b, "near").await;
    let mut far = super::v5_at(remote.port, "far").await;
    far.subscribe("site1/#", QoS::AtLeastOnce).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    near.publish("sensors/k1/temp", rumqttc::QoS::AtLeastOnce, false, "21.5")
        .await;
    near.publish("edge/door", rumqttc::QoS::AtLeastOnce, false, "open")
        .await;
    assert_eq!(
        far.next_publish().await.topic,
        Bytes::from("site1/k1/temperature")
    );
    assert_eq!(
        far.next_publish().await.topic,
        Bytes::from("site1/raw/door")
    );
    let out = sub.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["site1/k1/temperature 21.5", "site1/raw/door open"],
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // In, with mosquitto_pub at the remote.
    near.subscribe("commands/#", rumqttc::QoS::AtLeastOnce)
        .await;
    let mut publ = std::process::Command::new("mosquitto_pub");
    publ.args(["-h", "127.0.0.1", "-p", &remote.port.to_string()])
        .args([
            "-t",
            "cmd/site1/reboot",
            "-q",
            "1",
            "-m",
            "now",
            "-V",
            "mqttv311",
        ]);
    let out = run_command(publ, std::time::Duration::from_secs(10)).await;
    assert!(out.status.success());
    let p = near.next_publish().await;
    assert_eq!(p.topic, "commands/reboot");
    assert_eq!(&p.payload[..], b"now");
    b.shutdown().await;
}

#[tokio::test]
async fn retained_messages_cross_both_ways() {
    let Some(remote) = Mosquitto::start("") else {
        return;
    };
    let cfg = config(remote.port, "5.0");
    // Retained here before the bridge exists: sent when the link comes up.
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    let mut near = V5::new(&b, "near").await;
    // Retained at the remote before the bridge subscribes there.
    let mut far = v5_at(remote.port, "far").await;
    far.publish("cmd/site1/mode", QoS::AtLeastOnce, true, "eco")
        .await;
    near.publish("edge/status", QoS::AtLeastOnce, true, "up")
        .await;
    linked(&b, "cloud").await;
    // The remote holds it as retained: a new subscriber there gets it.
    let mut late = v5_at(remote.port, "late").await;
    late.client
        .subscribe("site1/raw/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    let p = late.next_publish().await;
    assert_eq!(
        (p.topic.as_ref(), p.payload.as_ref(), p.retain),
        (&b"site1/raw/status"[..], &b"up"[..], true)
    );
    // And the remote's retained message came in retained.
    let mut later = V5::new(&b, "later").await;
    later
        .client
        .subscribe("commands/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let p = later.next_publish().await;
    assert_eq!(
        (p.topic.as_ref(), p.payload.as_ref(), p.retain),
        (&b"commands/mode"[..], &b"eco"[..], true)
    );
    // A live retained publish keeps its flag across: seen by a remote
    // subscription with Retain As Published (others get it cleared, as
    // MQTT wants).
    let mut rap = v5_at(remote.port, "rap").await;
    let mut f = v5::Filter::new("site1/#", QoS::AtLeastOnce);
    f.preserve_retain = true;
    f.retain_forward_rule = v5::RetainForwardRule::Never;
    rap.subscribe_filter(f, None).await;
    near.publish("edge/status", QoS::AtLeastOnce, true, "busy")
        .await;
    let p = rap
        .wait("the live retained message", |e| match e {
            v5::Event::Incoming(v5::Packet::Publish(p)) if p.payload.as_ref() == b"busy" => {
                Some(p.clone())
            }
            _ => None,
        })
        .await;
    assert!(p.retain, "{p:?}");
    b.shutdown().await;
}

#[tokio::test]
async fn properties_cross_a_5_0_link_both_ways() {
    let Some(remote) = Mosquitto::start("") else {
        return;
    };
    let cfg = config(remote.port, "5.0");
    let b = start_broker(|c| c.bridges = bridges(&cfg)).await;
    linked(&b, "cloud").await;
    let mut far = v5_at(remote.port, "far").await;
    far.subscribe("site1/#", QoS::AtLeastOnce).await;
    let mut near = V5::new(&b, "near").await;
    near.subscribe("commands/#", QoS::AtLeastOnce).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        topic_alias: None,
        response_topic: Some("edge/replies".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02corr")),
        user_properties: vec![
            ("unit".into(), "celsius".into()),
            ("unit".into(), "twice".into()),
        ],
        subscription_identifiers: vec![],
        content_type: Some("application/json".into()),
    };
    near.publish_props(
        "sensors/k2/temp",
        QoS::AtLeastOnce,
        false,
        "{\"t\":1}",
        props.clone(),
    )
    .await;
    let p = far.next_publish().await;
    let got = p.properties.expect("properties crossed");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.response_topic.as_deref(), Some("edge/replies"));
    assert_eq!(got.correlation_data, props.correlation_data);
    // The bridge's loop marker comes last, naming its client id there.
    let (marker, user) = got.user_properties.split_last().unwrap();
    assert_eq!(user, &props.user_properties[..]);
    assert_eq!(marker.0, "midge-bridge-via");
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    let left = got.message_expiry_interval.expect("expiry forwarded");
    assert!((3590..=3600).contains(&left), "{left}");
    // And in.
    far.publish_props("cmd/site1/set", QoS::AtLeastOnce, false, "x", props.clone())
        .await;
    let p = near.next_publish().await;
    let got = p.properties.expect("properties came in");
    assert_eq!(got.user_properties, props.user_properties);
    assert_eq!(got.correlation_data, props.correlation_data);
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    b.shutdown().await;
}
