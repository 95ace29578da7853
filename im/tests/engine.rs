//! Engine-level tests: a real engine (SQLite, threads) with a recording sink — delivery
//! payloads, group fan-out, membership ordering, sync/pull/history/receipts, recall,
//! durability across a reopen without shutdown, and the full-queue 503.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use ember_im::engine::{
    Caller, Delivery, Engine, EngineConfig, GroupSpec, IndexMode, MembershipChange, Sink,
    SqliteStore, UserSpec,
};
use ember_im::proto::{parse_request, ApiError, Event, Method, Response};
use parking_lot::Mutex;

#[derive(Debug, Clone)]
enum Rec {
    Deliver(Delivery),
    Member(MembershipChange),
}

#[derive(Default)]
struct Recorder {
    recs: Mutex<Vec<Rec>>,
    gate: Option<Receiver<()>>,
}

impl Sink for Recorder {
    fn deliver(&self, d: Delivery) {
        if let Some(g) = &self.gate {
            let _ = g.recv_timeout(Duration::from_secs(10));
        }
        self.recs.lock().push(Rec::Deliver(d));
    }
    fn membership(&self, m: MembershipChange) {
        self.recs.lock().push(Rec::Member(m));
    }
}

fn cfg(db: Option<std::path::PathBuf>) -> EngineConfig {
    EngineConfig {
        database: db,
        rate_limit_per_sec: 0,
        ..EngineConfig::default()
    }
}

fn caller(u: &str, d: &str) -> Caller {
    Caller {
        user: Some(u.into()),
        device: d.into(),
    }
}

fn submit(
    e: &Engine,
    c: Caller,
    method: Method,
    json: &str,
) -> Receiver<Result<Response, ApiError>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let req = parse_request(method, json.as_bytes()).expect("valid request");
    e.submit(
        c,
        req,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx
}

fn call(e: &Engine, c: Caller, method: Method, json: &str) -> Result<Response, ApiError> {
    submit(e, c, method, json)
        .recv_timeout(Duration::from_secs(10))
        .expect("answered")
}

fn events(r: Result<Response, ApiError>) -> (Vec<Event>, bool) {
    match r {
        Ok(Response::Events { events, more, .. }) => (events, more),
        other => panic!("not events: {other:?}"),
    }
}

fn sent(r: Result<Response, ApiError>) -> (u64, u64) {
    match r {
        Ok(Response::Sent { mid, seq, .. }) => (mid, seq),
        other => panic!("not sent: {other:?}"),
    }
}

fn users(n: &[&str]) -> Vec<UserSpec> {
    n.iter()
        .map(|u| UserSpec {
            uid: u.to_string(),
            name: Some(format!("User {u}")),
            extra: None,
        })
        .collect()
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap()
}

/// An in-memory engine with the given index mode.
fn open_mem(mode: IndexMode, sink: Arc<Recorder>) -> Engine {
    let store = SqliteStore::open_with(None, mode).unwrap();
    Engine::open_store(cfg(None), Box::new(store), sink, 1024).unwrap()
}

/// Write-behind flushing every 3 events, so reads cross the tail/table boundary.
const TINY_BEHIND: IndexMode = IndexMode::Behind {
    events: 3,
    age: Duration::from_secs(3600),
};

#[tokio::test]
async fn one_to_one_inline() {
    one_to_one_delivery_carries_each_users_seq(IndexMode::Inline).await
}

#[tokio::test]
async fn one_to_one_behind() {
    one_to_one_delivery_carries_each_users_seq(TINY_BEHIND).await
}

async fn one_to_one_delivery_carries_each_users_seq(mode: IndexMode) {
    let sink = Arc::new(Recorder::default());
    let e = open_mem(mode, sink.clone());
    e.upsert_users(users(&["a", "b", "c"])).await.unwrap();
    assert!(e.user("a").is_some() && e.user("zz").is_none());
    // b has one event already, so the seqs differ.
    sent(call(
        &e,
        caller("c", "p"),
        Method::Send,
        r#"{"to":"b","cid":"x","body":1}"#,
    ));
    let (mid, seq) = sent(call(
        &e,
        caller("a", "phone"),
        Method::Send,
        r#"{"to":"b","cid":"c1","body":{"t":"hi"}}"#,
    ));
    assert_eq!(seq, 1);
    let recs = sink.recs.lock().clone();
    let Some(Rec::Deliver(Delivery::Users { to, skip })) = recs.last() else {
        panic!("{recs:?}")
    };
    assert_eq!(skip, &Some(("a".into(), "phone".into())));
    let got: Vec<(String, u64, u64)> = to
        .iter()
        .map(|(u, p)| {
            let v = json(p);
            (
                u.to_string(),
                v["seq"].as_u64().unwrap(),
                v["mid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, vec![("a".into(), 1, mid), ("b".into(), 2, mid)]);

    let (evs, more) = events(call(&e, caller("b", "tab"), Method::Sync, r#"{"seq":1}"#));
    assert!(!more);
    assert_eq!(evs.len(), 1);
    assert_eq!((evs[0].seq, evs[0].from.as_deref()), (2, Some("a")));
    assert_eq!(evs[0].body.as_ref().unwrap().get(), r#"{"t":"hi"}"#);
    // Paging.
    let (evs, more) = events(call(&e, caller("b", "tab"), Method::Sync, r#"{"limit":1}"#));
    assert!(more && evs.len() == 1);

    // History of the pair, newest first, from each side with its own seq.
    for _ in 0..3 {
        call(
            &e,
            caller("b", "tab"),
            Method::Send,
            r#"{"to":"a","cid":"r","body":2}"#,
        )
        .unwrap();
    }
    let (evs, _) = events(call(
        &e,
        caller("a", "phone"),
        Method::History,
        r#"{"peer":"b"}"#,
    ));
    assert_eq!(evs.len(), 2);
    assert!(evs[0].mid > evs[1].mid);
    let (evs, more) = events(call(
        &e,
        caller("a", "phone"),
        Method::History,
        &format!(r#"{{"peer":"b","before":{},"limit":1}}"#, mid + 1),
    ));
    assert_eq!((evs.len(), evs[0].mid, more), (1, mid, false));

    // Recall: pushed to both, reads back recalled with no body.
    let r = call(
        &e,
        caller("a", "phone"),
        Method::Recall,
        &format!(r#"{{"mid":{mid}}}"#),
    );
    assert!(matches!(r, Ok(Response::Recalled { .. })), "{r:?}");
    let (evs, _) = events(call(&e, caller("b", "tab"), Method::Sync, r#"{"seq":0}"#));
    let orig = evs.iter().find(|e| e.mid == mid).unwrap();
    assert!(orig.recalled && orig.body.is_none());
    assert!(evs.iter().any(|e| e.reference == Some(mid)));
    assert_eq!(
        call(
            &e,
            caller("b", "tab"),
            Method::Recall,
            &format!(r#"{{"mid":{mid}}}"#)
        )
        .unwrap_err()
        .code,
        403
    );
    // 1:1 read receipt lands on both timelines.
    call(
        &e,
        caller("b", "tab"),
        Method::Read,
        &format!(r#"{{"peer":"a","mid":{mid}}}"#),
    )
    .unwrap();
    let (evs, _) = events(call(&e, caller("a", "phone"), Method::Sync, r#"{}"#));
    assert!(evs.iter().any(|e| e.k == ember_im::proto::EventKind::Read));
    e.shutdown();
    assert_eq!(
        call(&e, caller("a", "phone"), Method::Sync, "")
            .unwrap_err()
            .code,
        503
    );
}

#[tokio::test]
async fn group_inline() {
    group_delivery_once_membership_first(IndexMode::Inline).await
}

#[tokio::test]
async fn group_behind() {
    group_delivery_once_membership_first(TINY_BEHIND).await
}

async fn group_delivery_once_membership_first(mode: IndexMode) {
    let sink = Arc::new(Recorder::default());
    let e = open_mem(mode, sink.clone());
    e.upsert_users(users(&["a", "b", "c"])).await.unwrap();
    e.create_group(GroupSpec {
        gid: "g1".into(),
        name: Some("G".into()),
        owner: Some("a".into()),
        extra: None,
        members: vec!["b".into()],
    })
    .await
    .unwrap();
    assert_eq!(e.groups_of("b"), vec![Arc::<str>::from("g1")]);
    sink.recs.lock().clear();
    e.change_members("g1", vec!["c".into()], vec![])
        .await
        .unwrap();
    let (mid, seq) = sent(call(
        &e,
        caller("c", "d"),
        Method::Send,
        r#"{"g":"g1","cid":"1","body":"x"}"#,
    ));
    assert_eq!(seq, 3);
    let recs = sink.recs.lock().clone();
    assert!(
        matches!(&recs[0], Rec::Member(MembershipChange::Added { users, .. }) if users.len() == 1)
    );
    let groups: Vec<&Delivery> = recs
        .iter()
        .filter_map(|r| match r {
            Rec::Deliver(d @ Delivery::Group { .. }) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(groups.len(), 2, "add notice + message: {recs:?}");
    let Delivery::Group { payload, skip, .. } = groups[1] else {
        unreachable!()
    };
    assert_eq!(skip, &Some(("c".into(), "d".into())));
    assert_eq!(json(payload)["mid"].as_u64(), Some(mid));
    assert_eq!(json(payload)["tl"], "g");

    // Pull from the joined seq on; non-members are refused.
    let (evs, _) = events(call(&e, caller("c", "d"), Method::Pull, r#"{"g":"g1"}"#));
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    let (evs, _) = events(call(
        &e,
        caller("a", "d"),
        Method::Pull,
        r#"{"g":"g1","after":1}"#,
    ));
    assert_eq!(evs.len(), 2);
    e.upsert_users(users(&["z"])).await.unwrap();
    let err = call(&e, caller("z", "d"), Method::Pull, r#"{"g":"g1"}"#).unwrap_err();
    assert_eq!(err.error, "not_member");
    let (evs, _) = events(call(
        &e,
        caller("a", "d"),
        Method::History,
        r#"{"g":"g1","limit":2}"#,
    ));
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 2]);
    // Sync reports group heads.
    let r = call(&e, caller("b", "d"), Method::Sync, r#"{"groups":true}"#).unwrap();
    let Response::Events { groups, .. } = r else {
        panic!()
    };
    assert_eq!(groups, Some(vec![(Arc::<str>::from("g1"), 3)]));

    // Receipts.
    call(&e, caller("b", "d"), Method::Read, r#"{"g":"g1","seq":3}"#).unwrap();
    call(&e, caller("a", "d"), Method::Read, r#"{"g":"g1","seq":2}"#).unwrap();
    let r = call(
        &e,
        caller("a", "d"),
        Method::Receipts,
        r#"{"g":"g1","seq":3}"#,
    )
    .unwrap();
    let Response::Receipts { count, users } = r else {
        panic!()
    };
    assert_eq!((count, users), (1, vec![Arc::<str>::from("b")]));

    // Removal and dismissal emit their changes.
    e.change_members("g1", vec![], vec!["b".into()])
        .await
        .unwrap();
    assert!(e.groups_of("b").is_empty());
    e.dismiss_group("g1").await.unwrap();
    assert!(e.group_info("g1").is_none());
    let recs = sink.recs.lock().clone();
    assert!(recs
        .iter()
        .any(|r| matches!(r, Rec::Member(MembershipChange::Removed { .. }))));
    assert!(matches!(
        recs.last(),
        Some(Rec::Member(MembershipChange::Dismissed { .. }))
    ));
    let err = call(
        &e,
        caller("a", "d"),
        Method::Send,
        r#"{"g":"g1","cid":"2","body":"x"}"#,
    )
    .unwrap_err();
    assert_eq!(err.code, 404);
    e.shutdown();
}

fn open_file(db: &std::path::Path, mode: IndexMode) -> Engine {
    let store = SqliteStore::open_with(Some(db), mode).unwrap();
    Engine::open_store(
        cfg(Some(db.to_owned())),
        Box::new(store),
        Arc::new(Recorder::default()),
        1024,
    )
    .unwrap()
}

#[tokio::test]
async fn durable_inline() {
    durable_across_reopen_without_shutdown(IndexMode::Inline, IndexMode::Inline).await
}

#[tokio::test]
async fn durable_behind_reopened_behind() {
    durable_across_reopen_without_shutdown(TINY_BEHIND, TINY_BEHIND).await
}

#[tokio::test]
async fn durable_behind_reopened_inline() {
    // Never flushed before the drop: everything comes back from the replay.
    let never = IndexMode::Behind {
        events: usize::MAX,
        age: Duration::from_secs(3600),
    };
    durable_across_reopen_without_shutdown(never, IndexMode::Inline).await
}

async fn durable_across_reopen_without_shutdown(first: IndexMode, then: IndexMode) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("im.db");
    let mut mids = Vec::new();
    {
        let e = open_file(&db, first);
        e.upsert_users(users(&["a", "b"])).await.unwrap();
        e.create_group(GroupSpec {
            gid: "g".into(),
            name: None,
            owner: Some("a".into()),
            extra: None,
            members: vec!["b".into()],
        })
        .await
        .unwrap();
        let rxs: Vec<_> = (0..50)
            .map(|i| {
                submit(
                    &e,
                    caller("a", "d"),
                    Method::Send,
                    &format!(r#"{{"to":"b","cid":"c{i}","body":{i}}}"#),
                )
            })
            .collect();
        for rx in rxs {
            mids.push(sent(rx.recv().unwrap()));
        }
        sent(call(
            &e,
            caller("b", "d"),
            Method::Send,
            r#"{"g":"g","cid":"g1","body":0}"#,
        ));
        e.revoke_tokens("b", 77).await.unwrap();
        // Dropped without shutdown.
    }
    let e = open_file(&db, then);
    assert_eq!(e.user("b").unwrap().tokens_after, 77);
    assert_eq!(e.groups_of("b"), vec![Arc::<str>::from("g")]);
    let (evs, more) = events(call(&e, caller("b", "d"), Method::Sync, r#"{"limit":500}"#));
    assert!(!more);
    let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=51).collect::<Vec<_>>(),
        "add notice + 50 messages"
    );
    // The cid cache came back: a resend returns the original.
    assert_eq!(
        sent(call(
            &e,
            caller("a", "d"),
            Method::Send,
            r#"{"to":"b","cid":"c7","body":7}"#
        )),
        mids[7]
    );
    // Counters continue without gaps or reuse.
    let last_mid = mids.iter().map(|m| m.0).max().unwrap();
    let (mid, seq) = sent(call(
        &e,
        caller("a", "d"),
        Method::Send,
        r#"{"to":"b","cid":"new","body":1}"#,
    ));
    assert!(mid > last_mid + 1, "the group message took an id too");
    assert_eq!(seq, 52, "a: add notice + 50 + this");
    let (mid2, gseq) = sent(call(
        &e,
        caller("a", "d"),
        Method::Send,
        r#"{"g":"g","cid":"g2","body":0}"#,
    ));
    assert_eq!((mid2, gseq), (mid + 1, 3));
    e.shutdown();
}

#[tokio::test]
async fn full_queue_answers_busy_at_once() {
    let (open, gate): (Sender<()>, Receiver<()>) = crossbeam_channel::unbounded();
    let sink = Arc::new(Recorder {
        recs: Mutex::new(Vec::new()),
        gate: Some(gate),
    });
    let e = Engine::open_with_queue(cfg(None), sink.clone(), 2).unwrap();
    e.upsert_users(users(&["a", "b"])).await.unwrap();
    // The writer commits this one and then blocks in the sink.
    let first = submit(
        &e,
        caller("a", "d"),
        Method::Send,
        r#"{"to":"b","cid":"0","body":0}"#,
    );
    std::thread::sleep(Duration::from_millis(200));
    let rxs: Vec<_> = (1..6)
        .map(|i| {
            submit(
                &e,
                caller("a", "d"),
                Method::Send,
                &format!(r#"{{"to":"b","cid":"{i}","body":0}}"#),
            )
        })
        .collect();
    let busy = rxs
        .iter()
        .filter(|rx| matches!(rx.try_recv(), Ok(Err(ApiError { code: 503, .. }))))
        .count();
    assert_eq!(busy, 3, "queue of 2: three of five refused at once");
    for _ in 0..10 {
        open.send(()).unwrap();
    }
    sent(first.recv_timeout(Duration::from_secs(10)).unwrap());
    e.shutdown();
}

#[tokio::test]
async fn rate_limit_answers_429() {
    let e = Engine::open(
        EngineConfig {
            rate_limit_per_sec: 1,
            rate_limit_burst: 2,
            ..cfg(None)
        },
        Arc::new(Recorder::default()),
    )
    .unwrap();
    e.upsert_users(users(&["a"])).await.unwrap();
    let codes: Vec<u16> = (0..3)
        .map(|_| match call(&e, caller("a", "d"), Method::Sync, "") {
            Ok(_) => 0,
            Err(e) => e.code,
        })
        .collect();
    assert_eq!(codes, vec![0, 0, 429]);
    e.shutdown();
}

/// A store whose commits fail while `fail` is set.
struct Flaky {
    inner: ember_im::engine::SqliteStore,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl ember_im::engine::Store for Flaky {
    fn load(
        &mut self,
        since: i64,
    ) -> Result<ember_im::engine::store::Loaded, ember_im::engine::store::StoreError> {
        self.inner.load(since)
    }
    fn commit(
        &mut self,
        batch: &ember_im::engine::store::Batch,
    ) -> Result<(), ember_im::engine::store::StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ember_im::engine::store::StoreError::Corrupt(
                "disk full".into(),
            ));
        }
        self.inner.commit(batch)
    }
    fn reader(
        &self,
    ) -> Result<Box<dyn ember_im::engine::store::StoreReader>, ember_im::engine::store::StoreError>
    {
        self.inner.reader()
    }
}

#[tokio::test]
async fn failed_commit_answers_503_and_rolls_back() {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Flaky {
        inner: ember_im::engine::SqliteStore::open(None).unwrap(),
        fail: fail.clone(),
    };
    let sink = Arc::new(Recorder::default());
    let e = Engine::open_store(cfg(None), Box::new(store), sink.clone(), 64).unwrap();
    e.upsert_users(users(&["a", "b"])).await.unwrap();
    let (mid1, _) = sent(call(
        &e,
        caller("a", "d"),
        Method::Send,
        r#"{"to":"b","cid":"1","body":1}"#,
    ));
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let delivered = sink.recs.lock().len();
    let err = call(
        &e,
        caller("a", "d"),
        Method::Send,
        r#"{"to":"b","cid":"2","body":2}"#,
    )
    .unwrap_err();
    assert_eq!(err.code, 503);
    assert_eq!(e.upsert_users(users(&["c"])).await.unwrap_err().code, 503);
    assert!(e.user("c").is_none());
    assert_eq!(
        sink.recs.lock().len(),
        delivered,
        "nothing delivered from a failed batch"
    );
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    // Same cid again: not a duplicate of the failed one; ids and seqs continue without gaps.
    let (mid2, seq) = sent(call(
        &e,
        caller("a", "d"),
        Method::Send,
        r#"{"to":"b","cid":"2","body":3}"#,
    ));
    assert_eq!((mid2, seq), (mid1 + 1, 2));
    let (evs, _) = events(call(&e, caller("b", "d"), Method::Sync, ""));
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    e.shutdown();
}

struct NullSink;
impl Sink for NullSink {
    fn deliver(&self, _: Delivery) {}
    fn membership(&self, _: MembershipChange) {}
}

/// Rough group-commit throughput on a file database (run with `--ignored --nocapture`,
/// preferably `--release`; `IM_INDEX=behind` for the write-behind index): 1:1 messages
/// among 10,000 users, submitted in bursts without waiting.
#[tokio::test]
#[ignore]
async fn throughput() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("im.db");
    let mode = match std::env::var("IM_INDEX").as_deref() {
        Ok("behind") => IndexMode::BEHIND,
        _ => IndexMode::Inline,
    };
    let store = SqliteStore::open_with(Some(&db), mode).unwrap();
    let e = Engine::open_store(
        cfg(Some(db.clone())),
        Box::new(store),
        Arc::new(NullSink),
        16_384,
    )
    .unwrap();
    let names: Vec<String> = (0..10_000).map(|i| format!("u{i}")).collect();
    for chunk in names.chunks(1000) {
        let specs: Vec<UserSpec> = chunk
            .iter()
            .map(|u| UserSpec {
                uid: u.clone(),
                name: None,
                extra: None,
            })
            .collect();
        e.upsert_users(specs).await.unwrap();
    }
    let n: usize = std::env::var("IM_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let (tx, rx) = crossbeam_channel::unbounded();
    let cpu0 = cpu_secs();
    let start = std::time::Instant::now();
    let mut x: u64 = 88172645463325252;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let from = &names[(x % 10_000) as usize];
        let to = &names[((x >> 20) % 10_000) as usize];
        let req = parse_request(
            Method::Send,
            format!(r#"{{"to":"{to}","cid":"c{i}","body":{{"text":"a message of about a hundred bytes, as a chat app would send it to a peer"}}}}"#)
                .as_bytes(),
        )
        .unwrap();
        let tx = tx.clone();
        e.submit(
            caller(from, "d"),
            req,
            Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }),
        );
        if i % 2048 == 2047 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let (mut ok, mut busy) = (0, 0);
    for _ in 0..n {
        if rx.recv().unwrap() {
            ok += 1;
        } else {
            busy += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    e.shutdown();
    let size = std::fs::metadata(&db).map_or(0, |m| m.len());
    println!(
        "{mode:?}: {ok} committed, {busy} refused, {secs:.2} s: {:.0} msg/s, {:.1} CPU us/msg, db {} MB",
        ok as f64 / secs,
        cpu * 1e6 / ok.max(1) as f64,
        size / 1_000_000
    );
}

/// CPU seconds of this process (user + system), from /proc.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
