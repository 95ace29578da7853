//! A connection's outbox: what other threads (the engine's replies, the router's pushes,
//! takeovers and kicks) hand to one connection task, bounded in bytes.
//!
//! Pushers lock, append and wake the task; the task drains everything per wake into one
//! write. A pushed event that would take the queue over its byte limit empties it and
//! closes the connection (a slow consumer resyncs by sequence; the server's memory never
//! grows with it).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::session::{CloseReason, Ticket};

/// One queued item.
#[derive(Debug)]
pub enum Item {
    /// The answer to a request (already JSON).
    Response(Ticket, Vec<u8>),
    /// A pushed event (JSON shared by all recipients) and when it was handed over.
    Event(Bytes, Instant),
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Item>,
    bytes: usize,
    /// Events are accepted once the client has subscribed.
    subscribed: bool,
    close: Option<CloseReason>,
}

/// Result of pushing an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Not subscribed yet, or closing: dropped silently (the client syncs).
    Ignored,
    /// Over the limit: the queue was emptied and the connection told to close.
    Overflow,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            limit,
        }
    }

    /// Starts (true) or stops (false) accepting events; stopping drops queued ones.
    pub fn set_subscribed(&self, on: bool) {
        let mut g = self.inner.lock();
        g.subscribed = on;
        if !on {
            let before = g.items.len();
            g.items.retain(|i| matches!(i, Item::Response(..)));
            if g.items.len() != before {
                g.bytes = 0;
            }
        }
    }

    /// Queues a response. Responses are never dropped and do not count towards the event
    /// limit (a healthy client's large sync page must not get it disconnected): they are
    /// bounded by the requests in flight (the connection stops reading at the session's
    /// receive maximum, and at a few reads) times the page size cap.
    pub fn push_response(&self, ticket: Ticket, json: Vec<u8>) {
        let mut g = self.inner.lock();
        if g.close.is_some() {
            return;
        }
        let wake = g.items.is_empty();
        g.items.push_back(Item::Response(ticket, json));
        drop(g);
        if wake {
            self.notify.notify_one();
        }
    }

    /// Queues a pushed event.
    pub fn push_event(&self, event: &Bytes, since: Instant) -> Pushed {
        let mut g = self.inner.lock();
        if !g.subscribed || g.close.is_some() {
            return Pushed::Ignored;
        }
        if g.bytes + event.len() > self.limit {
            g.items.clear();
            g.bytes = 0;
            g.close = Some(CloseReason::SlowConsumer);
            drop(g);
            self.notify.notify_one();
            return Pushed::Overflow;
        }
        g.bytes += event.len();
        let wake = g.items.is_empty();
        g.items.push_back(Item::Event(event.clone(), since));
        drop(g);
        if wake {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Tells the connection to close (takeover, kick, shutdown). The first reason wins.
    pub fn close(&self, why: CloseReason) {
        let mut g = self.inner.lock();
        if g.close.is_none() {
            g.close = Some(why);
        }
        drop(g);
        self.notify.notify_one();
    }

    /// Moves everything queued into `into`; returns the close reason, if any.
    pub fn drain(&self, into: &mut VecDeque<Item>) -> Option<CloseReason> {
        let mut g = self.inner.lock();
        into.append(&mut g.items);
        g.bytes = 0;
        g.close
    }

    /// Resolves when something was queued since the last drain.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_need_subscription_and_overflow_closes() {
        let o = Outbox::new(100);
        let ev = Bytes::from(vec![b'x'; 40]);
        let now = Instant::now();
        assert_eq!(o.push_event(&ev, now), Pushed::Ignored);
        o.set_subscribed(true);
        assert_eq!(o.push_event(&ev, now), Pushed::Queued);
        assert_eq!(o.push_event(&ev, now), Pushed::Queued);
        assert_eq!(o.push_event(&ev, now), Pushed::Overflow);
        let mut q = VecDeque::new();
        assert_eq!(o.drain(&mut q), Some(CloseReason::SlowConsumer));
        assert!(q.is_empty(), "the queue is dropped on overflow");
        assert_eq!(o.push_event(&ev, now), Pushed::Ignored);
    }

    #[test]
    fn responses_do_not_count_against_events() {
        let o = Outbox::new(100);
        o.set_subscribed(true);
        o.push_response(Ticket(1), vec![b'r'; 1000]);
        let ev = Bytes::from(vec![b'x'; 60]);
        assert_eq!(o.push_event(&ev, Instant::now()), Pushed::Queued);
        let mut q = VecDeque::new();
        assert_eq!(o.drain(&mut q), None);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn drain_resets_the_byte_count() {
        let o = Outbox::new(100);
        o.set_subscribed(true);
        let ev = Bytes::from(vec![b'x'; 60]);
        let mut q = VecDeque::new();
        for _ in 0..10 {
            assert_eq!(o.push_event(&ev, Instant::now()), Pushed::Queued);
            assert_eq!(o.drain(&mut q), None);
        }
        assert_eq!(q.len(), 10);
        o.close(CloseReason::Kicked);
        o.close(CloseReason::SessionTakenOver);
        assert_eq!(o.drain(&mut q), Some(CloseReason::Kicked));
    }
}
