//! Who is online where: the registry of connected devices, their outboxes, and which online
//! users are in which group; fans committed events out on its own thread (`im-router`) so
//! the engine's writer never waits for thousands of pushes.
//!
//! Group fan-out visits only the *online* members of a group (`groups`: group -> online
//! users), kept up to date when a user's first device registers or its last leaves (from the
//! engine's directory) and on every committed membership change, which the engine emits
//! before any later event of that group. A change and a registration racing each other end
//! in the same state either way: the registration reads the directory after the writer
//! updated it, and the router applies the change after that update.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::RwLock;
use smallvec::SmallVec;

use crate::engine::{Delivery, MembershipChange, Sink};
use crate::metrics::ImMetrics;
use crate::server::outbox::{Outbox, Pushed};
use crate::session::CloseReason;

/// One online device, as the admin API reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    pub device: Arc<str>,
    /// "tcp", "tls", "ws", "wss".
    pub transport: &'static str,
    /// "3.1.1" or "5".
    pub version: &'static str,
    pub remote: String,
    /// Unix milliseconds.
    pub since: i64,
}

/// What the admin API needs from the online registry.
pub trait Presence: Send + Sync + 'static {
    /// The online devices of a user.
    fn devices(&self, uid: &str) -> Vec<DeviceInfo>;
    /// Disconnects one device (or all of the user's when `device` is None); how many.
    fn kick(&self, uid: &str, device: Option<&str>) -> usize;
}

/// The groups a user is in (the engine's directory).
pub type GroupsOf = Box<dyn Fn(&str) -> Vec<Arc<str>> + Send + Sync>;

struct Conn {
    id: u64,
    info: DeviceInfo,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct State {
    users: HashMap<Arc<str>, SmallVec<[Conn; 2]>>,
    groups: HashMap<Arc<str>, HashSet<Arc<str>>>,
    next_id: u64,
}

enum Msg {
    Deliver(Delivery, Instant),
    Membership(MembershipChange),
    Stop,
}

/// See the module documentation.
pub struct Router {
    state: RwLock<State>,
    tx: Sender<Msg>,
    groups_of: OnceLock<GroupsOf>,
    metrics: Arc<ImMetrics>,
}

/// A registered connection; pass it back to [`Router::unregister`].
#[derive(Debug, Clone)]
pub struct Registration {
    pub user: Arc<str>,
    pub device: Arc<str>,
    id: u64,
}

/// Committed events waiting for the router; the writer blocks beyond this (back-pressure).
const QUEUE: usize = 65_536;

impl Router {
    /// Starts the router thread.
    pub fn start(metrics: Arc<ImMetrics>) -> std::io::Result<Arc<Router>> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let router = Arc::new(Router {
            state: RwLock::new(State::default()),
            tx,
            groups_of: OnceLock::new(),
            metrics,
        });
        let r = router.clone();
        thread::Builder::new()
            .name("im-router".into())
            .spawn(move || r.run(rx))?;
        Ok(router)
    }

    /// Connects the router to the engine's directory (once, before connections arrive).
    pub fn set_groups_of(&self, f: GroupsOf) {
        let _ = self.groups_of.set(f);
    }

    /// Stops the router thread after the queued deliveries.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }

    /// Registers an accepted connection. A connection of the same user and device is told to
    /// close (takeover); returns whether that happened.
    pub fn register(&self, info: DeviceInfo, user: Arc<str>, outbox: Arc<Outbox>) -> (Registration, bool) {
        let mut st = self.state.write();
        st.next_id += 1;
        let id = st.next_id;
        let device = info.device.clone();
        let first = !st.users.contains_key(&user);
        let list = st.users.entry(user.clone()).or_default();
        let mut took_over = false;
        if let Some(pos) = list.iter().position(|c| c.info.device == device) {
            let old = list.remove(pos);
            old.outbox.close(CloseReason::SessionTakenOver);
            took_over = true;
        }
        list.push(Conn { id, info, outbox });
        if first {
            if let Some(groups_of) = self.groups_of.get() {
                for g in groups_of(&user) {
                    st.groups.entry(g).or_default().insert(user.clone());
                }
            }
        }
        (Registration { user, device, id }, took_over)
    }

    /// Removes a connection (no-op if it was already replaced).
    pub fn unregister(&self, reg: &Registration) {
        let mut st = self.state.write();
        let Some(list) = st.users.get_mut(&reg.user) else {
            return;
        };
        list.retain(|c| c.id != reg.id);
        if !list.is_empty() {
            return;
        }
        st.users.remove(&reg.user);
        // Its last device left: it is no longer an online member of any group.
        st.groups.retain(|_, set| {
            set.remove(&reg.user);
            !set.is_empty()
        });
    }

    /// Number of online connections.
    pub fn online(&self) -> usize {
        self.state.read().users.values().map(|l| l.len()).sum()
    }

    /// Tells every connection to close (shutdown).
    pub fn close_all(&self, why: CloseReason) {
        for list in self.state.read().users.values() {
            for c in list {
                c.outbox.close(why);
            }
        }
    }

    fn run(&self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Deliver(d, since) => self.deliver_now(d, since),
                Msg::Membership(m) => self.apply_membership(m),
                Msg::Stop => break,
            }
        }
    }

    fn push(&self, c: &Conn, payload: &Bytes, since: Instant) {
        match c.outbox.push_event(payload, since) {
            Pushed::Queued => self.metrics.deliveries.inc(),
            Pushed::Ignored => {}
            Pushed::Overflow => self.metrics.slow_consumers.inc(),
        }
    }

    fn deliver_now(&self, d: Delivery, since: Instant) {
        let st = self.state.read();
        let skips = |skip: &Option<(Arc<str>, Arc<str>)>, user: &Arc<str>, c: &Conn| {
            matches!(skip, Some((u, dev)) if u == user && *dev == c.info.device)
        };
        match d {
            Delivery::Users { to, skip } => {
                for (user, payload) in &to {
                    if let Some(list) = st.users.get(user) {
                        for c in list.iter().filter(|c| !skips(&skip, user, c)) {
                            self.push(c, payload, since);
                        }
                    }
                }
            }
            Delivery::Group {
                group,
                payload,
                skip,
            } => {
                if let Some(members) = st.groups.get(&group) {
                    for user in members {
                        if let Some(list) = st.users.get(user) {
                            for c in list.iter().filter(|c| !skips(&skip, user, c)) {
                                self.push(c, &payload, since);
                            }
                        }
                    }
                }
            }
        }
    }

    fn apply_membership(&self, m: MembershipChange) {
        let mut st = self.state.write();
        match m {
            MembershipChange::Added { group, users } => {
                for u in users {
                    if st.users.contains_key(&u) {
                        st.groups.entry(group.clone()).or_default().insert(u);
                    }
                }
            }
            MembershipChange::Removed { group, users } => {
                if let Some(set) = st.groups.get_mut(&group) {
                    for u in &users {
                        set.remove(u);
                    }
                    if set.is_empty() {
                        st.groups.remove(&group);
                    }
                }
            }
            MembershipChange::Dismissed { group } => {
                st.groups.remove(&group);
            }
        }
    }
}

impl Sink for Router {
    fn deliver(&self, delivery: Delivery) {
        let _ = self.tx.send(Msg::Deliver(delivery, Instant::now()));
    }

    fn membership(&self, change: MembershipChange) {
        let _ = self.tx.send(Msg::Membership(change));
    }
}

impl Presence for Router {
    fn devices(&self, uid: &str) -> Vec<DeviceInfo> {
        self.state
            .read()
            .users
            .get(uid)
            .map(|l| l.iter().map(|c| c.info.clone()).collect())
            .unwrap_or_default()
    }

    fn kick(&self, uid: &str, device: Option<&str>) -> usize {
        let st = self.state.read();
        let Some(list) = st.users.get(uid) else {
            return 0;
        };
        let mut n = 0;
        for c in list.iter().filter(|c| device.is_none_or(|d| *c.info.device == *d)) {
            c.outbox.close(CloseReason::Kicked);
            n += 1;
        }
        n
    }
}
