//! The messaging core end to end: the real `ember im` on loopback, driven by clients nobody
//! here wrote (paho-mqtt from Python, rumqttc in both protocol versions, mosquitto_rr) and
//! by raw sockets for the bad-input cases.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_tests::im::{Admin, ImSecrets};
use ember_tests::metrics::wait_for;
use ember_tests::Ember;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn admin(ember: &Ember, secrets: &ImSecrets) -> Admin {
    Admin {
        addr: ember.addr("im-admin/http"),
        secret: secrets.admin_secret.clone(),
    }
}

/// What a test client saw.
#[derive(Debug)]
enum Seen {
    Publish {
        topic: String,
        payload: Value,
        correlation: Option<Bytes>,
    },
    Disconnect(String),
}

/// A rumqttc v5 device.
struct V5 {
    client: rumqttc::v5::AsyncClient,
    rx: mpsc::UnboundedReceiver<Seen>,
    user: String,
    device: String,
}

async fn v5_connect(
    addr: SocketAddr,
    user: &str,
    device: &str,
    token: &str,
) -> Result<V5, rumqttc::v5::ConnectionError> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut opts = MqttOptions::new(device, addr.ip().to_string(), addr.port());
    opts.set_credentials(user, token);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(opts, 64);
    // The CONNACK (or refusal) decides.
    loop {
        match tokio::time::timeout(WAIT, el.poll()).await.expect("CONNACK in time")? {
            Event::Incoming(Packet::ConnAck(_)) => break,
            _ => continue,
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Seen::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
                        correlation: p.properties.and_then(|pp| pp.correlation_data),
                    });
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    let _ = tx.send(Seen::Disconnect(format!("{:?}", d.reason_code)));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Seen::Disconnect(e.to_string()));
                    break;
                }
            }
        }
    });
    Ok(V5 {
        client,
        rx,
        user: user.into(),
        device: device.into(),
    })
}

impl V5 {
    async fn subscribe_own(&mut self) {
        self.client
            .subscribe(
                format!("u/{}/{}/#", self.user, self.device),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            )
            .await
            .unwrap();
        // The SUBACK is not surfaced here; a sync round trip proves the subscription.
        let _ = self.request("sync", json!({"seq": 0, "limit": 1}), "sub").await;
    }

    /// A request with a Response Topic and Correlation Data; returns the response.
    async fn request(&mut self, method: &str, body: Value, corr: &str) -> Value {
        self.request_on(method, body, corr, &format!("u/{}/{}/rs", self.user, self.device))
            .await
    }

    async fn request_on(&mut self, method: &str, body: Value, corr: &str, reply: &str) -> Value {
        use rumqttc::v5::mqttbytes::v5::PublishProperties;
        let props = PublishProperties {
            response_topic: Some(reply.into()),
            correlation_data: Some(Bytes::copy_from_slice(corr.as_bytes())),
            ..Default::default()
        };
        self.client
            .publish_with_properties(
                format!("rq/{method}"),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                body.to_string(),
                props,
            )
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(Seen::Publish {
                    topic,
                    payload,
                    correlation,
                })) if !topic.ends_with("/ev") => {
                    if correlation.as_deref() == Some(corr.as_bytes()) {
                        return payload;
                    }
                }
                Ok(Some(Seen::Publish { .. })) => continue,
                other => panic!("{}: no response to {method}: {other:?}", self.user),
            }
        }
    }

    async fn event(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(Seen::Publish { topic, payload, .. })) if topic.ends_with("/ev") => {
                    return payload
                }
                Ok(Some(Seen::Publish { .. })) => continue,
                other => panic!("{}: no event: {other:?}", self.user),
            }
        }
    }

    async fn disconnected(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(Seen::Disconnect(why))) => return why,
                Ok(Some(_)) => continue,
                other => panic!("{}: not disconnected: {other:?}", self.user),
            }
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn paho_clients_chat_in_pairs_groups_offline_devices_and_websocket() {
    let (ember, secrets) = Ember::start_im("rate_limit_per_sec = 0");
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/im/chat.py"))
        .arg(ember.addr("im/mqtt").to_string())
        .arg(ember.addr("im/ws").to_string())
        .arg(format!("http://{}", ember.addr("im-admin/http")))
        .arg(&secrets.admin_secret)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all ok"),
        "chat.py failed:\n{stdout}\n{}\n--- ember.log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        ember.log()
    );
}

#[test]
fn rumqttc_v5_and_v311_request_response_and_push() {
    let (ember, secrets) = Ember::start_im("");
    let admin = admin(&ember, &secrets);
    admin.users(&["ann", "ben"]);
    let addr = ember.addr("im/mqtt");
    let ann_token = admin.token("ann", "phone");
    let ben_token = admin.token("ben", "laptop");
    rt().block_on(async {
        let mut ann = v5_connect(addr, "ann", "phone", &ann_token).await.unwrap();
        ann.subscribe_own().await;

        // ben speaks MQTT 3.1.1: the request carries "id" and answers come on .../rs.
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let mut opts = MqttOptions::new("laptop", addr.ip().to_string(), addr.port());
        opts.set_credentials("ben", ben_token.clone());
        let (ben, mut el) = AsyncClient::new(opts, 64);
        let (tx, mut ben_rx) = mpsc::unbounded_channel::<(String, Value)>();
        tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    let _ = tx.send((p.topic, v));
                }
            }
        });
        ben.subscribe("u/ben/laptop/#", QoS::AtLeastOnce).await.unwrap();
        ben.publish("rq/sync", QoS::AtLeastOnce, false, r#"{"id":"s0","seq":0}"#)
            .await
            .unwrap();
        let (topic, v) = tokio::time::timeout(WAIT, ben_rx.recv()).await.unwrap().unwrap();
        assert_eq!(topic, "u/ben/laptop/rs");
        assert_eq!(v["id"], "s0");
        assert_eq!(v["code"], 0);

        let r = ann
            .request("send", json!({"to": "ben", "cid": "1", "body": {"t": "hello"}}), "c-1")
            .await;
        assert_eq!(r["code"], 0, "{r}");
        let (topic, ev) = tokio::time::timeout(WAIT, ben_rx.recv()).await.unwrap().unwrap();
        assert_eq!(topic, "u/ben/laptop/ev");
        assert_eq!(ev["mid"], r["mid"]);
        assert_eq!(ev["from"], "ann");
        assert_eq!(ev["body"], json!({"t": "hello"}));

        ben.publish(
            "rq/send",
            QoS::AtLeastOnce,
            false,
            r#"{"id":"b1","to":"ann","cid":"b1","body":"back"}"#,
        )
        .await
        .unwrap();
        let (_, v) = tokio::time::timeout(WAIT, ben_rx.recv()).await.unwrap().unwrap();
        assert_eq!(v["id"], "b1");
        assert_eq!(v["code"], 0, "{v}");
        let ev = ann.event().await;
        assert_eq!(ev["body"], "back");

        // A Response Topic in another user's space is not honoured: the answer comes on
        // the caller's own .../rs instead.
        let r = ann
            .request_on("sync", json!({"seq": 0}), "c-2", "u/ben/laptop/rs")
            .await;
        assert_eq!(r["code"], 0);
    });
}

#[test]
fn bad_logins_are_refused_with_the_right_code() {
    let (ember, secrets) = Ember::start_im("");
    let admin = admin(&ember, &secrets);
    admin.users(&["cat"]);
    let addr = ember.addr("im/mqtt");
    let key = ember_im::token::TokenKey::new(secrets.token_key.as_bytes());
    let now = ember_tests::im::unix_ms() / 1000;
    let wrong_key = ember_im::token::TokenKey::new(b"not the key not the key not the key!");
    rt().block_on(async {
        let refused = |r: Result<V5, rumqttc::v5::ConnectionError>| match r {
            Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => format!("{code:?}"),
            Err(e) => panic!("expected a CONNACK refusal, got {e}"),
            Ok(_) => panic!("expected a refusal, got a connection"),
        };
        let good = admin.token("cat", "phone");
        assert!(v5_connect(addr, "cat", "phone", &good).await.is_ok());
        let expired = key.mint("cat", "phone", now - 100, now - 10);
        assert_eq!(
            refused(v5_connect(addr, "cat", "phone", &expired).await),
            "BadUserNamePassword"
        );
        let forged = wrong_key.mint("cat", "phone", now, now + 100);
        assert_eq!(
            refused(v5_connect(addr, "cat", "phone", &forged).await),
            "BadUserNamePassword"
        );
        assert_eq!(
            refused(v5_connect(addr, "cat", "phone", "garbage").await),
            "BadUserNamePassword"
        );
        // A valid token for another device.
        assert_eq!(
            refused(v5_connect(addr, "cat", "tablet", &good).await),
            "ClientIdentifierNotValid"
        );
        // A valid token of a user who does not exist.
        let ghost = key.mint("ghost", "phone", now, now + 100);
        assert_eq!(
            refused(v5_connect(addr, "ghost", "phone", &ghost).await),
            "NotAuthorized"
        );
        // Someone else's name with one's own token.
        admin.users(&["dog"]);
        assert_eq!(
            refused(v5_connect(addr, "dog", "phone", &good).await),
            "BadUserNamePassword"
        );
    });
    wait_for(ember.metrics_addr(), "refusals counted", WAIT, |m| {
        m.get("ember_im_connects_total", &[("result", "bad_credentials")]) >= 4.0
            && m.get("ember_im_connects_total", &[("result", "not_authorized")]) >= 1.0
            && m.get("ember_im_connects_total", &[("result", "bad_client_id")]) >= 1.0
    });
}

#[test]
fn a_client_cannot_reach_into_another_users_space() {
    let (ember, secrets) = Ember::start_im("");
    let admin = admin(&ember, &secrets);
    admin.users(&["eve", "vic"]);
    let addr = ember.addr("im/mqtt");
    let eve_token = admin.token("eve", "phone");
    let vic_token = admin.token("vic", "phone");
    rt().block_on(async {
        use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        use rumqttc::v5::{AsyncClient, Event, MqttOptions};
        let mut vic = v5_connect(addr, "vic", "phone", &vic_token).await.unwrap();
        vic.subscribe_own().await;

        let mut opts = MqttOptions::new("phone", addr.ip().to_string(), addr.port());
        opts.set_credentials("eve", eve_token.clone());
        let (eve, mut el) = AsyncClient::new(opts, 64);
        for filter in ["u/vic/#", "#", "u/+/phone/ev", "rq/#"] {
            eve.subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtMostOnce)
                .await
                .unwrap();
            let deadline = Instant::now() + WAIT;
            loop {
                assert!(Instant::now() < deadline, "no SUBACK for {filter}");
                match tokio::time::timeout(WAIT, el.poll()).await.unwrap().unwrap() {
                    Event::Incoming(Packet::SubAck(ack)) => {
                        assert!(
                            ack.return_codes.iter().all(|c| !matches!(
                                c,
                                SubscribeReasonCode::Success(_)
                            )),
                            "{filter} granted: {ack:?}"
                        );
                        break;
                    }
                    _ => continue,
                }
            }
        }
        // Publishing into vic's space is refused and reaches nobody.
        eve.publish(
            "u/vic/phone/ev",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"k":"msg","body":"forged"}"#,
        )
        .await
        .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no PUBACK");
            match tokio::time::timeout(WAIT, el.poll()).await.unwrap() {
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    assert_eq!(format!("{:?}", ack.reason), "NotAuthorized");
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("eve disconnected: {e}"),
            }
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), vic.rx.recv())
                .await
                .is_err(),
            "vic got something"
        );
    });
}

/// A minimal MQTT 3.1.1 CONNECT, for raw-socket tests.
fn raw_connect(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut vh = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 60];
    for s in [client_id, user, password] {
        vh.extend_from_slice(&(s.len() as u16).to_be_bytes());
        vh.extend_from_slice(s.as_bytes());
    }
    let mut p = vec![0x10];
    push_len(&mut p, vh.len());
    p.extend_from_slice(&vh);
    p
}

fn push_len(p: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        p.push(b);
        if n == 0 {
            break;
        }
    }
}

fn raw_subscribe(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(0);
    let mut p = vec![0x82];
    push_len(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

/// Reads until EOF or `limit`; true if the server closed the connection.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn malformed_packets_close_only_that_connection() {
    let (ember, secrets) = Ember::start_im("");
    let admin = admin(&ember, &secrets);
    admin.users(&["fay"]);
    let addr = ember.addr("im/mqtt");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("publish before connect", vec![0x30, 3, 0, 1, b'x']),
        ("bad protocol name", {
            let mut p = raw_connect("d", "fay", "t");
            p[4] = b'X';
            p
        }),
        ("reserved connect flag", {
            let mut p = raw_connect("d", "fay", "t");
            p[9] |= 1;
            p
        }),
        ("remaining length over 4 bytes", vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ("pingreq with a body", vec![0xc0, 2, 0, 0]),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&bytes).unwrap();
        assert!(closed_within(&mut s, WAIT), "{what}: connection not closed");
    }
    // After an accepted CONNECT: a reserved SUBSCRIBE flag, a QoS 3 PUBLISH.
    let token = admin.token("fay", "d");
    for (what, bytes) in [
        ("subscribe flags", vec![0x80, 6, 0, 1, 0, 1, b'x', 0]),
        ("qos 3", vec![0x36, 5, 0, 1, b'x', 0, 1]),
        ("wildcard in topic name", vec![0x30, 3, 0, 1, b'#']),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&raw_connect("d", "fay", &token)).unwrap();
        let mut connack = [0u8; 4];
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.read_exact(&mut connack).unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0], "{what}: CONNACK");
        s.write_all(&bytes).unwrap();
        assert!(closed_within(&mut s, WAIT), "{what}: connection not closed");
    }
    // The server still serves.
    rt().block_on(async {
        let mut fay = v5_connect(addr, "fay", "d", &token).await.unwrap();
        fay.subscribe_own().await;
        let r = fay.request("sync", json!({"seq": 0}), "x").await;
        assert_eq!(r["code"], 0);
    });
}

#[test]
fn oversized_messages_are_refused() {
    let (ember, secrets) = Ember::start_im("max_message_bytes = 1024");
    let admin = admin(&ember, &secrets);
    admin.users(&["gil", "hal"]);
    let addr = ember.addr("im/mqtt");
    let token = admin.token("gil", "d");
    rt().block_on(async {
        let mut gil = v5_connect(addr, "gil", "d", &token).await.unwrap();
        gil.subscribe_own().await;
        let big = "x".repeat(2000);
        let r = gil
            .request("send", json!({"to": "hal", "cid": "big", "body": big}), "b")
            .await;
        assert_eq!(r["code"], 413, "{r}");
        let r = gil
            .request("send", json!({"to": "hal", "cid": "ok", "body": "small"}), "s")
            .await;
        assert_eq!(r["code"], 0, "{r}");
        // A packet beyond the advertised maximum packet size ends the connection.
        let huge = "y".repeat(64 * 1024);
        let _ = gil
            .client
            .publish("rq/send", rumqttc::v5::mqttbytes::QoS::AtMostOnce, false, huge)
            .await;
        let why = gil.disconnected().await;
        assert!(!why.is_empty());
    });
}

#[test]
fn a_client_that_never_reads_is_disconnected_and_memory_stays_bounded() {
    let (ember, secrets) = Ember::start_im("send_queue_bytes = 65536\nrate_limit_per_sec = 0");
    let admin = admin(&ember, &secrets);
    admin.users(&["slow", "fast"]);
    let addr = ember.addr("im/mqtt");
    let slow_token = admin.token("slow", "d");
    let fast_token = admin.token("fast", "d");
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(&raw_connect("d", "slow", &slow_token)).unwrap();
    slow.write_all(&raw_subscribe("u/slow/d/#")).unwrap();
    // Shrink its receive buffer's effect: it simply never reads from here on.
    let rss_before = rss_kb(ember.pid());
    rt().block_on(async {
        let mut fast = v5_connect(addr, "fast", "d", &fast_token).await.unwrap();
        fast.subscribe_own().await;
        let body = "z".repeat(8000);
        for i in 0..1500 {
            let r = fast
                .request("send", json!({"to": "slow", "cid": format!("m{i}"), "body": body}), "q")
                .await;
            assert_eq!(r["code"], 0, "{r}");
        }
    });
    let rss_after = rss_kb(ember.pid());
    // 12 MB of messages went to a client that read none of them.
    assert!(
        rss_after < rss_before + 8 * 1024,
        "server memory grew from {rss_before} kB to {rss_after} kB"
    );
    wait_for(ember.metrics_addr(), "one slow consumer", WAIT, |m| {
        m.get("ember_im_slow_consumer_disconnects_total", &[]) == 1.0
    });
    assert!(closed_within(&mut slow, WAIT), "slow consumer still connected");
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn an_acknowledged_message_survives_kill_9() {
    let (ember, secrets) = Ember::start_im("");
    let admin = admin(&ember, &secrets);
    admin.users(&["ivy", "jon"]);
    let addr = ember.addr("im/mqtt");
    let ivy_token = admin.token("ivy", "d");
    let jon_token = admin.token("jon", "d");
    let mids: Vec<Value> = rt().block_on(async {
        let mut ivy = v5_connect(addr, "ivy", "d", &ivy_token).await.unwrap();
        ivy.subscribe_own().await;
        let mut mids = Vec::new();
        for i in 0..20 {
            let r = ivy
                .request("send", json!({"to": "jon", "cid": format!("k{i}"), "body": i}), "k")
                .await;
            assert_eq!(r["code"], 0);
            mids.push(r["mid"].clone());
        }
        mids
    });
    let ember = ember.kill9_and_restart(&["im"]);
    let addr = ember.addr("im/mqtt");
    rt().block_on(async {
        let mut jon = v5_connect(addr, "jon", "d", &jon_token).await.unwrap();
        jon.subscribe_own().await;
        let r = jon.request("sync", json!({"seq": 0, "limit": 100}), "s").await;
        let got: Vec<Value> = r["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["mid"].clone())
            .collect();
        assert_eq!(got, mids, "{r}");
        // Sequences continue after the restart without reuse.
        let ivy_token2 = ivy_token.clone();
        let mut ivy = v5_connect(addr, "ivy", "d", &ivy_token2).await.unwrap();
        ivy.subscribe_own().await;
        let r = ivy
            .request("send", json!({"to": "jon", "cid": "after", "body": 0}), "a")
            .await;
        assert!(r["mid"].as_u64() > mids.last().unwrap().as_u64(), "{r}");
        let ev = jon.event().await;
        assert_eq!(ev["seq"], 21, "{ev}");
    });
}

#[test]
fn admin_requests_need_a_fresh_valid_signature() {
    let (ember, secrets) = Ember::start_im("");
    let admin = admin(&ember, &secrets);
    let path = "/v1/users";
    let body = json!({"users": [{"uid": "kim"}]}).to_string();
    let ts = ember_tests::im::unix_ms();
    let sig = admin.sign("POST", path, ts, "nonce-0123456789abcdef", body.as_bytes());
    let headers = |ts: i64, nonce: &str, sig: &str| {
        vec![
            ("nonce", nonce.to_string()),
            ("timestamp", ts.to_string()),
            ("authorization", format!("Ember-HMAC-SHA256 {sig}")),
        ]
    };
    let a = admin.raw("POST", path, &headers(ts, "nonce-0123456789abcdef", &sig), body.as_bytes());
    assert_eq!(a.status, 200, "{}", a.json);
    let a = admin.raw("POST", path, &headers(ts, "nonce-0123456789abcdef", &sig), body.as_bytes());
    assert_eq!((a.status, a.json["error"].as_str()), (401, Some("NonceReused")));
    let forged = "0".repeat(64);
    let a = admin.raw("POST", path, &headers(ts, "nonce-forged-0123456789", &forged), body.as_bytes());
    assert_eq!((a.status, a.json["error"].as_str()), (401, Some("SignatureDoesNotMatch")));
    let old = ts - 3_600_000;
    let sig = admin.sign("POST", path, old, "nonce-old-0123456789ab", body.as_bytes());
    let a = admin.raw("POST", path, &headers(old, "nonce-old-0123456789ab", &sig), body.as_bytes());
    assert_eq!((a.status, a.json["error"].as_str()), (401, Some("RequestTimeTooSkewed")));
    // The signature covers the body.
    let sig = admin.sign("POST", path, ts, "nonce-body-0123456789a", body.as_bytes());
    let a = admin.raw(
        "POST",
        path,
        &headers(ts, "nonce-body-0123456789a", &sig),
        br#"{"users":[{"uid":"mallory"}]}"#,
    );
    assert_eq!(a.status, 401);
    let a = admin.raw("GET", "/v1/users/kim", &[], b"");
    assert_eq!((a.status, a.json["error"].as_str()), (401, Some("MissingSignature")));
    // Wildfire's scheme: sign = sha1(nonce|secret|timestamp).
    use sha1::{Digest, Sha1};
    let nonce = "76616";
    let sign = Sha1::digest(format!("{nonce}|{}|{ts}", secrets.admin_secret));
    let sign: String = sign.iter().map(|b| format!("{b:02x}")).collect();
    let a = admin.raw(
        "GET",
        "/v1/users/kim",
        &[("nonce", nonce.into()), ("timestamp", ts.to_string()), ("sign", sign)],
        b"",
    );
    assert_eq!(a.status, 200, "{}", a.json);
}

#[test]
fn mosquitto_rr_can_send_a_message() {
    if Command::new("mosquitto_rr").arg("--help").output().is_err() {
        panic!("mosquitto_rr not installed (apt-get install mosquitto-clients)");
    }
    let (ember, secrets) = Ember::start_im("");
    let admin = admin(&ember, &secrets);
    admin.users(&["lea", "max"]);
    let token = admin.token("lea", "sh");
    let addr = ember.addr("im/mqtt");
    let out = Command::new("mosquitto_rr")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-i", "sh", "-u", "lea", "-P", &token])
        .args(["-t", "rq/send", "-e", "u/lea/sh/rs", "-W", "10"])
        .args(["-m", r#"{"to":"max","cid":"sh1","body":{"text":"from a shell"}}"#])
        .output()
        .expect("mosquitto_rr");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["code"], 0, "{v}");
    assert!(v["mid"].as_u64().is_some());
}
