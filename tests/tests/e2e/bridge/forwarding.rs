//! What crosses a bridge, and how: out and in, QoS 0/1/2, topic mappings,
//! retained messages, 5.0 properties. The remote is a real Mosquitto.

use bytes::Bytes;
use midge_e2e::mosquitto::Mosquitto;
use midge_e2e::v5::QoS;
use midge_e2e::*;

use super::{bridges, linked, v5_at};

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
    let st = &b.broker.bridges.get("cloud").unwrap().status;
    assert!(st.sent.load(std::sync::atomic::Ordering::Relaxed) >= 6);
    assert_eq!(st.received.load(std::sync::atomic::Ordering::Relaxed), 3);
    b.shutdown().await;
}
