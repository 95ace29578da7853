//! Model test: the same random command sequence (1:1 and group sends, recalls, reads,
//! membership changes) against an engine with the inline index and one with a write-behind
//! index flushed every few events; every read (sync pages, pulls, histories, receipts) must
//! answer the same, before and after reopening the databases.

use std::sync::Arc;
use std::time::Duration;

use ember_im::engine::{
    Caller, Delivery, Engine, EngineConfig, GroupSpec, IndexMode, MembershipChange, Sink,
    SqliteStore, UserSpec,
};
use ember_im::proto::{encode_response, parse_request, Method};

struct NullSink;
impl Sink for NullSink {
    fn deliver(&self, _: Delivery) {}
    fn membership(&self, _: MembershipChange) {}
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn open(db: &std::path::Path, mode: IndexMode) -> Engine {
    // Flushes of 5+ events in slices of 4 rows: reads meet live, frozen and table entries.
    let store = SqliteStore::open_with(Some(db), mode)
        .unwrap()
        .with_flush_slice(4);
    let cfg = EngineConfig {
        database: Some(db.to_owned()),
        rate_limit_per_sec: 0,
        group_max_members: 8,
        ..EngineConfig::default()
    };
    Engine::open_store(cfg, Box::new(store), Arc::new(NullSink), 1024).unwrap()
}

fn call(e: &Engine, user: &str, method: Method, json: &str) -> serde_json::Value {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let req = parse_request(method, json.as_bytes()).unwrap();
    e.submit(
        Caller {
            user: Some(user.into()),
            device: "d".into(),
        },
        req,
        Box::new(move |r| {
            let _ = tx.send(encode_response(None, &r));
        }),
    );
    let out = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    strip_ts(&mut v);
    v
}

/// Server times differ between the two runs.
fn strip_ts(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("ts");
            m.values_mut().for_each(strip_ts);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_ts),
        _ => {}
    }
}

const USERS: [&str; 8] = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"];
const GROUPS: [&str; 3] = ["g0", "g1", "g2"];

/// Everything a client could read, as one JSON list.
fn snapshot(e: &Engine) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for u in USERS {
        let mut seq = 0;
        loop {
            let r = call(
                e,
                u,
                Method::Sync,
                &format!(r#"{{"seq":{seq},"limit":7,"groups":true}}"#),
            );
            seq = r["seq"].as_u64().unwrap();
            let more = r["more"].as_bool().unwrap();
            out.push(r);
            if !more {
                break;
            }
        }
        for g in GROUPS {
            out.push(call(
                e,
                u,
                Method::Pull,
                &format!(r#"{{"g":"{g}","limit":500}}"#),
            ));
            out.push(call(
                e,
                u,
                Method::History,
                &format!(r#"{{"g":"{g}","limit":4}}"#),
            ));
            out.push(call(
                e,
                u,
                Method::Receipts,
                &format!(r#"{{"g":"{g}","seq":3}}"#),
            ));
        }
        for p in USERS {
            let mut before = u64::MAX;
            loop {
                let r = call(
                    e,
                    u,
                    Method::History,
                    &format!(r#"{{"peer":"{p}","before":{before},"limit":5}}"#),
                );
                let evs = r["events"].as_array().unwrap();
                let more = r["more"].as_bool().unwrap();
                if let Some(last) = evs.last() {
                    before = last["mid"].as_u64().unwrap();
                }
                out.push(r);
                if !more {
                    break;
                }
            }
        }
    }
    out
}

async fn run(e: &Engine, seed: u64, steps: usize) -> Vec<serde_json::Value> {
    let mut rng = Rng(seed);
    let mut answers = Vec::new();
    e.upsert_users(
        USERS
            .iter()
            .map(|u| UserSpec {
                uid: u.to_string(),
                name: None,
                extra: None,
            })
            .collect(),
    )
    .await
    .unwrap();
    for (i, g) in GROUPS.iter().enumerate() {
        e.create_group(GroupSpec {
            gid: g.to_string(),
            name: None,
            owner: Some(USERS[i].into()),
            extra: None,
            members: vec![USERS[i + 1].into(), USERS[i + 2].into()],
        })
        .await
        .unwrap();
    }
    let mut sent: Vec<(String, u64)> = Vec::new();
    for step in 0..steps {
        let u = USERS[rng.next(8) as usize];
        let v = match rng.next(10) {
            0..=3 => {
                let to = USERS[rng.next(8) as usize];
                call(
                    e,
                    u,
                    Method::Send,
                    &format!(r#"{{"to":"{to}","cid":"c{step}","body":{{"n":{step}}}}}"#),
                )
            }
            4..=6 => {
                let g = GROUPS[rng.next(3) as usize];
                call(
                    e,
                    u,
                    Method::Send,
                    &format!(r#"{{"g":"{g}","cid":"c{step}","body":{step}}}"#),
                )
            }
            7 => match sent.get(rng.next(sent.len().max(1) as u64) as usize) {
                Some((who, mid)) => call(e, who, Method::Recall, &format!(r#"{{"mid":{mid}}}"#)),
                None => continue,
            },
            8 => {
                let g = GROUPS[rng.next(3) as usize];
                let seq = 1 + rng.next(6);
                let p = USERS[rng.next(8) as usize];
                let mid = 1 + rng.next(step as u64 + 1);
                if rng.next(2) == 0 {
                    call(e, u, Method::Read, &format!(r#"{{"g":"{g}","seq":{seq}}}"#))
                } else {
                    call(
                        e,
                        u,
                        Method::Read,
                        &format!(r#"{{"peer":"{p}","mid":{mid}}}"#),
                    )
                }
            }
            _ => {
                let g = GROUPS[rng.next(3) as usize];
                let r = if rng.next(2) == 0 {
                    e.change_members(g, vec![u.into()], vec![]).await
                } else {
                    e.change_members(g, vec![], vec![u.into()]).await
                };
                serde_json::json!(format!("{r:?}"))
            }
        };
        if let Some(mid) = v["mid"].as_u64() {
            if v.get("seq").is_some() {
                sent.push((u.to_owned(), mid));
            }
        }
        answers.push(v);
    }
    answers
}

#[tokio::test]
async fn inline_and_write_behind_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("inline.db"), dir.path().join("behind.db"));
    let behind = IndexMode::Behind {
        events: 5,
        age: Duration::from_secs(3600),
    };
    for seed in [0x9e3779b97f4a7c15u64, 42] {
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
        let ea = open(&a, IndexMode::Inline);
        let eb = open(&b, behind);
        let ra = run(&ea, seed, 400).await;
        let rb = run(&eb, seed, 400).await;
        assert_eq!(ra, rb, "answers differ");
        let ok = ra.iter().filter(|v| v["code"] == 0).count();
        let refused = ra
            .iter()
            .filter(|v| v["code"].as_u64().is_some_and(|c| c > 0))
            .count();
        assert!(ok > 150 && refused > 20, "ok {ok}, refused {refused}");
        let sa = snapshot(&ea);
        assert_eq!(sa, snapshot(&eb), "reads differ");
        assert!(sa.len() > 100);
        // Reopen (the write-behind one without shutdown: its tail is replayed).
        ea.shutdown();
        drop(eb);
        std::thread::sleep(Duration::from_millis(100));
        let ea = open(&a, IndexMode::Inline);
        let eb = open(&b, behind);
        assert_eq!(snapshot(&ea), sa, "inline reopened");
        assert_eq!(snapshot(&eb), sa, "write-behind reopened");
        ea.shutdown();
        eb.shutdown();
    }
}
