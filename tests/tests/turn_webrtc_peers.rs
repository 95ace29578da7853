//! Two webrtc-rs peer connections that may only talk through `ember turn`: both use
//! `iceTransportPolicy: relay` with Ember's TURN/UDP listener as their only ICE server (peer A
//! with TURN REST credentials, peer B with the static user), signal in-process (offer,
//! answer, trickled candidates over channels), and connect relay to relay on 127.0.0.1.
//!
//! Over that connection A sends 1 MiB on an ordered, reliable data channel in 64 KiB - 1
//! messages (the largest webrtc-rs receives, see [`CHUNK`]), pacing on the channel's
//! buffered-amount-low event, and B checks every byte against a position-dependent pattern;
//! A also sends an Opus audio track and B counts the RTP packets with the negotiated payload
//! type. Both sides' selected candidate pairs must be relay/relay, and Ember's metrics must
//! show the two allocations and the megabyte relayed in both directions (into A's
//! allocation, and out of B's); closing the peers deletes both allocations.
//!
//! TURN over TCP or TLS: webrtc-rs 0.17 (webrtc-ice 0.17.1, `gather_candidates_relay`)
//! gathers relay candidates only from `turn:` URLs over UDP; `?transport=tcp` and `turns:`
//! URLs are accepted and then ignored. So there is no TCP variant of the peer test;
//! [`tcp_turn_url_yields_no_relay_candidate`] pins that limitation, and fails (asking for
//! the variant) on the day webrtc-rs starts allocating over TCP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_tests::metrics;
use ember_tests::turn_client::{rest_credentials, unix_now};
use ember_tests::{Ember, TurnOptions};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::timeout;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::{SctpMaxMessageSize, SettingEngine};
use webrtc::api::APIBuilder;
use webrtc::data_channel::data_channel_init::RTCDataChannelInit;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_candidate_pair::RTCIceCandidatePair;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

/// The whole peer test.
const OVERALL: Duration = Duration::from_secs(30);
/// Any single wait inside it.
const STEP: Duration = Duration::from_secs(15);
/// Bytes A sends to B on the data channel.
const TOTAL: usize = 1 << 20;
/// Data channel message size: the largest a webrtc-rs 0.17 peer can receive. It sends up to
/// `SctpMaxMessageSize::DEFAULT_MESSAGE_SIZE` (65536) bytes, but its receiving read loop has
/// a 65535-byte buffer (`DATA_CHANNEL_BUFFER_SIZE = u16::MAX`), and a 65536-byte message
/// closes the channel on the receiving side.
const CHUNK: usize = SctpMaxMessageSize::DEFAULT_MESSAGE_SIZE as usize - 1;
/// A stops queueing above this much buffered data and resumes at the low-water event.
const HIGH_WATER: usize = 4 * CHUNK;
const LOW_WATER: usize = CHUNK;
/// RTP packets B must receive (20 ms of Opus each).
const MIN_RTP: usize = 25;
/// Opus's payload type in webrtc-rs's default codecs (`register_default_codecs`).
const OPUS_PT: u8 = 111;
/// One 20 ms Opus frame of silence (TOC byte: SILK-only WB, 20 ms, code 0).
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

/// Byte `i` of the stream A sends: not periodic in the message size, so lost, duplicated or
/// reordered messages all show.
fn pattern(i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (i as u8)
}

/// One peer connection and what its handlers report.
struct Peer {
    name: &'static str,
    pc: Arc<RTCPeerConnection>,
    /// Local candidates to trickle to the other side.
    candidates: Option<mpsc::UnboundedReceiver<RTCIceCandidateInit>>,
    /// Types of every local candidate gathered.
    gathered: Arc<Mutex<Vec<RTCIceCandidateType>>>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

async fn peer(name: &'static str, url: &str, username: &str, credential: &str) -> Peer {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("default codecs");
    let registry =
        register_default_interceptors(Registry::new(), &mut media).expect("default interceptors");
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    // Nominate a relay pair as soon as it works (webrtc-ice waits 2 s by default, hoping
    // for a better type; with relay-only policy there is none).
    settings.set_relay_acceptance_min_wait(Some(Duration::ZERO));
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    let pc = api
        .new_peer_connection(RTCConfiguration {
            ice_servers: vec![RTCIceServer {
                urls: vec![url.to_string()],
                username: username.to_string(),
                credential: credential.to_string(),
            }],
            ice_transport_policy: RTCIceTransportPolicy::Relay,
            ..Default::default()
        })
        .await
        .expect("new peer connection");
    let pc = Arc::new(pc);

    let (cand_tx, cand_rx) = mpsc::unbounded_channel();
    let gathered = Arc::new(Mutex::new(Vec::new()));
    let gathered2 = Arc::clone(&gathered);
    pc.on_ice_candidate(Box::new(move |c| {
        if let Some(c) = c {
            gathered2.lock().unwrap().push(c.typ);
            match c.to_json() {
                Ok(init) => {
                    let _ = cand_tx.send(init);
                }
                Err(e) => eprintln!("{name}: cannot serialize candidate {c}: {e}"),
            }
        }
        Box::pin(async {})
    }));
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    pc.on_peer_connection_state_change(Box::new(move |s| {
        let _ = state_tx.send(s);
        Box::pin(async {})
    }));
    Peer {
        name,
        pc,
        candidates: Some(cand_rx),
        gathered,
        state,
    }
}

/// Feeds `from`'s trickled candidates to `to` (whose remote description is set); failures
/// go to `errors`.
fn trickle(from: &mut Peer, to: &Peer, errors: &Arc<Mutex<Vec<String>>>) {
    let mut rx = from.candidates.take().expect("trickled once");
    let pc = Arc::clone(&to.pc);
    let errors = Arc::clone(errors);
    let what = format!("{} -> {}", from.name, to.name);
    tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            if let Err(e) = pc.add_ice_candidate(c.clone()).await {
                errors
                    .lock()
                    .unwrap()
                    .push(format!("{what}: {}: {e}", c.candidate));
            }
        }
    });
}

/// Offer from `a`, answer from `b`, candidates trickled both ways.
async fn signal(a: &mut Peer, b: &mut Peer, errors: &Arc<Mutex<Vec<String>>>) {
    let offer = a.pc.create_offer(None).await.expect("offer");
    a.pc.set_local_description(offer.clone())
        .await
        .expect("A: set local offer");
    b.pc.set_remote_description(offer)
        .await
        .expect("B: set remote offer");
    trickle(a, b, errors);
    let answer = b.pc.create_answer(None).await.expect("answer");
    b.pc.set_local_description(answer.clone())
        .await
        .expect("B: set local answer");
    a.pc.set_remote_description(answer)
        .await
        .expect("A: set remote answer");
    trickle(b, a, errors);
}

async fn wait_connected(p: &Peer) {
    let mut state = p.state.clone();
    let r = timeout(
        STEP,
        state.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        }),
    )
    .await;
    let s = *p.state.borrow();
    assert!(
        r.is_ok() && s == RTCPeerConnectionState::Connected,
        "{}: peer connection {s} (gathered {:?})",
        p.name,
        p.gathered.lock().unwrap()
    );
}

async fn selected_pair(p: &Peer) -> RTCIceCandidatePair {
    p.pc.sctp()
        .transport()
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .unwrap_or_else(|| panic!("{}: no selected candidate pair", p.name))
}

/// What B has received on the data channel.
#[derive(Default)]
struct Received {
    bytes: usize,
    messages: usize,
    first_error: Option<String>,
}

impl Received {
    fn take(&mut self, data: &[u8], is_string: bool) {
        if self.first_error.is_none() {
            if is_string {
                self.first_error = Some(format!("message {} arrived as text", self.messages));
            } else if self.bytes + data.len() > TOTAL {
                self.first_error = Some(format!(
                    "{} bytes after {} received; only {TOTAL} were sent",
                    data.len(),
                    self.bytes
                ));
            } else if let Some(k) = (0..data.len()).find(|&k| data[k] != pattern(self.bytes + k)) {
                self.first_error = Some(format!(
                    "byte {} (message {}, offset {k}) is {:#04x}, expected {:#04x}",
                    self.bytes + k,
                    self.messages,
                    data[k],
                    pattern(self.bytes + k)
                ));
            }
        }
        self.bytes += data.len();
        self.messages += 1;
    }
}

/// A's side of the transfer: `TOTAL` bytes in `CHUNK` messages, never more than
/// `HIGH_WATER` buffered.
async fn send_bulk(dc: &RTCDataChannel) {
    let low = Arc::new(Notify::new());
    let low2 = Arc::clone(&low);
    dc.set_buffered_amount_low_threshold(LOW_WATER).await;
    dc.on_buffered_amount_low(Box::new(move || {
        low2.notify_one();
        Box::pin(async {})
    }))
    .await;
    let mut offset = 0;
    let mut max_buffered = 0;
    while offset < TOTAL {
        loop {
            let buffered = dc.buffered_amount().await;
            max_buffered = max_buffered.max(buffered);
            if buffered <= HIGH_WATER {
                break;
            }
            // notify_one keeps a permit, so a low event between the check and here counts.
            timeout(STEP, low.notified())
                .await
                .unwrap_or_else(|_| panic!("buffered amount stuck at {buffered} bytes"));
        }
        let end = (offset + CHUNK).min(TOTAL);
        let chunk: Vec<u8> = (offset..end).map(pattern).collect();
        let sent = match dc.send(&chunk.into()).await {
            Ok(n) => n,
            Err(e) => panic!("send at byte {offset}: {e} (channel {})", dc.ready_state()),
        };
        assert_eq!(sent, end - offset);
        offset = end;
    }
    assert!(
        max_buffered <= HIGH_WATER + CHUNK,
        "buffered {max_buffered}"
    );
}

/// A 20 ms Opus frame every 20 ms on `track` until `stop`.
fn send_audio(track: Arc<TrackLocalStaticSample>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            let sample = Sample {
                data: OPUS_SILENCE.to_vec().into(),
                duration: Duration::from_millis(20),
                ..Default::default()
            };
            if track.write_sample(&sample).await.is_err() {
                return;
            }
        }
    });
}

/// Closes both peers, each bounded.
async fn close(peers: [&Peer; 2]) {
    for p in peers {
        if timeout(STEP, p.pc.close()).await.is_err() {
            panic!("{}: close did not finish within {STEP:?}", p.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peers_exchange_data_and_audio_over_turn_udp() {
    let started = Instant::now();
    let ember = Ember::start_turn(&TurnOptions::default());
    let url = format!("turn:{}?transport=udp", ember.turn_udp());
    timeout(OVERALL, peers_over(&ember, &url))
        .await
        .unwrap_or_else(|_| panic!("not done within {OVERALL:?}; ember log:\n{}", ember.log()));
    eprintln!("peer test took {:?}", started.elapsed());
}

async fn peers_over(ember: &Ember, url: &str) {
    let (rest_user, rest_pass) = rest_credentials("s3cret", "peer-a", unix_now() + 600);
    let mut a = peer("A", url, &rest_user, &rest_pass).await;
    let mut b = peer("B", url, "alice", "alicepw").await;

    // A: an Opus track and the data channel, both in the offer.
    let track = Arc::new(TrackLocalStaticSample::new(
        RTCRtpCodecCapability {
            mime_type: MIME_TYPE_OPUS.to_string(),
            clock_rate: 48000,
            channels: 2,
            ..Default::default()
        },
        "audio".to_string(),
        "ember-e2e".to_string(),
    ));
    let sender =
        a.pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
            .await
            .expect("add track");
    // RTCP from B has to be read for the interceptors to run.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        while sender.read(&mut buf).await.is_ok() {}
    });
    let dc =
        a.pc.create_data_channel(
            "bulk",
            Some(RTCDataChannelInit {
                ordered: Some(true),
                ..Default::default()
            }),
        )
        .await
        .expect("data channel");
    let (open_tx, open_rx) = oneshot::channel();
    dc.on_open(Box::new(move || {
        let _ = open_tx.send(());
        Box::pin(async {})
    }));

    // B: verify the data channel's bytes, count the audio track's packets.
    let received = Arc::new(Mutex::new(Received::default()));
    let (progress_tx, mut progress) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let received2 = Arc::clone(&received);
    b.pc.on_data_channel(Box::new(move |dc| {
        let received = Arc::clone(&received2);
        let progress_tx = Arc::clone(&progress_tx);
        Box::pin(async move {
            assert_eq!(dc.label(), "bulk");
            assert!(dc.ordered());
            dc.on_message(Box::new(move |msg| {
                let bytes = {
                    let mut r = received.lock().unwrap();
                    r.take(&msg.data, msg.is_string);
                    r.bytes
                };
                progress_tx.send_replace(bytes);
                Box::pin(async {})
            }));
        })
    }));
    let rtp_ok = Arc::new(AtomicUsize::new(0));
    let rtp_bad = Arc::new(Mutex::new(Vec::<String>::new()));
    let (rtp_ok2, rtp_bad2) = (Arc::clone(&rtp_ok), Arc::clone(&rtp_bad));
    b.pc.on_track(Box::new(move |track, _, _| {
        let (ok, bad) = (Arc::clone(&rtp_ok2), Arc::clone(&rtp_bad2));
        tokio::spawn(async move {
            let mime = track.codec().capability.mime_type;
            while let Ok((pkt, _)) = track.read_rtp().await {
                let pt = pkt.header.payload_type;
                if mime.eq_ignore_ascii_case(MIME_TYPE_OPUS)
                    && pt == OPUS_PT
                    && pkt.payload == OPUS_SILENCE[..]
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.lock()
                        .unwrap()
                        .push(format!("{mime} pt {pt} payload {:?}", &pkt.payload[..]));
                }
            }
        });
        Box::pin(async {})
    }));

    let t0 = Instant::now();
    let errors = Arc::new(Mutex::new(Vec::new()));
    signal(&mut a, &mut b, &errors).await;
    wait_connected(&a).await;
    wait_connected(&b).await;
    timeout(STEP, open_rx)
        .await
        .expect("data channel did not open")
        .expect("open handler dropped");

    eprintln!("connected, data channel open after {:?}", t0.elapsed());
    let (stop_tx, stop_rx) = watch::channel(false);
    send_audio(track, stop_rx);
    send_bulk(&dc).await;
    let done = timeout(STEP, progress.wait_for(|&n| n >= TOTAL)).await;
    {
        let r = received.lock().unwrap();
        assert!(
            done.is_ok(),
            "B received {} of {TOTAL} bytes in {} messages",
            r.bytes,
            r.messages
        );
        assert_eq!(r.first_error, None);
        assert_eq!((r.bytes, r.messages), (TOTAL, TOTAL.div_ceil(CHUNK)));
    }
    eprintln!("1 MiB received after {:?}", t0.elapsed());
    let deadline = Instant::now() + STEP;
    while rtp_ok.load(Ordering::Relaxed) < MIN_RTP && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    assert!(
        rtp_ok.load(Ordering::Relaxed) >= MIN_RTP,
        "B got {} Opus packets (pt {OPUS_PT}), others: {:?}",
        rtp_ok.load(Ordering::Relaxed),
        rtp_bad.lock().unwrap()
    );
    assert!(
        rtp_bad.lock().unwrap().is_empty(),
        "{:?}",
        rtp_bad.lock().unwrap()
    );

    // Relay to relay on both sides, and each side's remote is the other's local.
    let (pa, pb) = (selected_pair(&a).await, selected_pair(&b).await);
    for (p, pair) in [(&a, &pa), (&b, &pb)] {
        assert_eq!(
            (pair.local.typ, pair.remote.typ),
            (RTCIceCandidateType::Relay, RTCIceCandidateType::Relay),
            "{}: selected pair {pair}",
            p.name
        );
        assert_eq!(pair.local.address, "127.0.0.1", "{}: {pair}", p.name);
        let gathered = p.gathered.lock().unwrap();
        assert!(
            !gathered.is_empty() && gathered.iter().all(|t| *t == RTCIceCandidateType::Relay),
            "{}: gathered {gathered:?}",
            p.name
        );
    }
    assert_eq!(
        (pa.remote.address.as_str(), pa.remote.port),
        (pb.local.address.as_str(), pb.local.port)
    );
    assert_eq!(
        (pb.remote.address.as_str(), pb.remote.port),
        (pa.local.address.as_str(), pa.local.port)
    );
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );

    // Ember's view: two UDP allocations, and the megabyte went in through A's allocation
    // and out through B's (plus DTLS/SCTP/SRTP overhead and the reverse traffic).
    let addr = ember.metrics_addr();
    tokio::task::spawn_blocking(move || {
        metrics::wait_for(
            addr,
            "two allocations and 1 MiB relayed each way",
            Duration::from_secs(5),
            |m| {
                m.get(
                    "ember_turn_allocations_created_total",
                    &[("transport", "udp")],
                ) >= 2.0
                    && m.get("ember_turn_allocations", &[]) >= 2.0
                    && m.get(
                        "ember_turn_relayed_bytes_total",
                        &[("direction", "client_to_peer")],
                    ) >= TOTAL as f64
                    && m.get(
                        "ember_turn_relayed_bytes_total",
                        &[("direction", "peer_to_client")],
                    ) >= TOTAL as f64
            },
        )
    })
    .await
    .expect("metrics wait");

    close([&a, &b]).await;
    // Closing deletes both allocations: webrtc-rs sends Refresh with lifetime 0 (and then
    // retransmits it, whatever the response; Ember answers those 437 Allocation Mismatch,
    // which RFC 8656 section 7.3 allows and tells clients to take as success).
    tokio::task::spawn_blocking(move || {
        metrics::wait_for(addr, "allocations released", Duration::from_secs(5), |m| {
            m.get("ember_turn_allocations", &[]) == 0.0
                && m.get(
                    "ember_turn_allocations_deleted_total",
                    &[("transport", "udp")],
                ) == 2.0
        })
    })
    .await
    .expect("metrics wait");
}

/// webrtc-rs 0.17 does not allocate over TCP (see the module docs): with a
/// `?transport=tcp` URL and relay-only policy it gathers nothing and never reaches Ember's
/// TCP listener. If this starts failing, webrtc-rs gained TURN/TCP: add a TCP variant of the
/// peer test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_turn_url_yields_no_relay_candidate() {
    let ember = Ember::start_turn(&TurnOptions::default());
    let url = format!("turn:{}?transport=tcp", ember.turn_tcp());
    let p = peer("tcp", &url, "alice", "alicepw").await;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    p.pc.on_ice_gathering_state_change(Box::new(move |s| {
        let _ = done_tx.send(s);
        Box::pin(async {})
    }));
    p.pc.create_data_channel("x", None)
        .await
        .expect("data channel");
    let offer = p.pc.create_offer(None).await.expect("offer");
    p.pc.set_local_description(offer)
        .await
        .expect("set local offer");
    timeout(STEP, async {
        while let Some(s) = done_rx.recv().await {
            if s == webrtc::ice_transport::ice_gatherer_state::RTCIceGathererState::Complete {
                return;
            }
        }
    })
    .await
    .expect("gathering did not complete");
    assert!(
        p.gathered.lock().unwrap().is_empty(),
        "webrtc-rs now gathers over TURN/TCP: {:?}",
        p.gathered.lock().unwrap()
    );
    let m = metrics::scrape(ember.metrics_addr()).expect("scrape");
    assert_eq!(
        m.get("ember_turn_allocations_created_total", &[]),
        0.0,
        "{}",
        m.text
    );
    timeout(STEP, p.pc.close())
        .await
        .expect("close in time")
        .expect("close");
}
