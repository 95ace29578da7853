//! Fuzzes the messaging core's per-connection state machine (`ember_im::session::Session`):
//! a scripted valid CONNECT (3.1.1 or 5, chosen by the first input byte) is accepted, then
//! the rest of the input arrives in input-chosen pieces, with clock jumps, requests
//! completed in a scrambled order, events written and server-side closes.
//!
//! Checks: no panic; every output byte sequence frames into whole packets; tickets are
//! unique; every unanswered request counts in `in_flight`; a failed session stays inert.
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use ember_im::mqtt::frame_len;
use ember_im::session::{CloseReason, Session, SessionConfig, SessionEvent, Ticket};
use libfuzzer_sys::fuzz_target;

fn connect(v5: bool, keep_alive: u16) -> Vec<u8> {
    let mut b = vec![
        0x10,
        0,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        if v5 { 5 } else { 4 },
        0xC2,
    ];
    b.extend_from_slice(&keep_alive.to_be_bytes());
    if v5 {
        b.push(0);
    }
    for field in [&b"phone"[..], b"alice", b"tok"] {
        b.extend_from_slice(&(field.len() as u16).to_be_bytes());
        b.extend_from_slice(field);
    }
    b[1] = (b.len() - 2) as u8;
    b
}

/// Asserts that `out` is a sequence of whole packets.
fn frames(out: &[u8]) {
    let mut rest = out;
    while !rest.is_empty() {
        let n = frame_len(rest, usize::MAX)
            .expect("output framing")
            .expect("whole header");
        assert!(n <= rest.len(), "whole packet");
        rest = &rest[n..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, mut data)) = data.split_first() else {
        return;
    };
    let v5 = ctl & 1 == 1;
    let t0 = Instant::now();
    let mut now = t0;
    let cfg = SessionConfig {
        max_packet_bytes: 512,
        keepalive_max_secs: 30,
        receive_maximum: 4,
    };
    let mut s = Session::new(cfg, now);
    let mut buf = BytesMut::from(&connect(v5, u16::from(ctl >> 1))[..]);
    s.handle_bytes(now, &mut buf).expect("scripted CONNECT");
    assert!(matches!(s.poll_event(), Some(SessionEvent::Connect { .. })));
    s.accept_connect("alice", "phone");
    let mut out = Vec::new();
    s.poll_transmit(&mut out);
    frames(&out);

    let mut open: Vec<Ticket> = Vec::new();
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        match op >> 5 {
            0..=4 => {
                // Feed the next 1..=32 bytes.
                let n = (usize::from(op & 31) + 1).min(data.len());
                buf.extend_from_slice(&data[..n]);
                data = &data[n..];
                let r = s.handle_bytes(now, &mut buf);
                while let Some(e) = s.poll_event() {
                    if let SessionEvent::Request { ticket, .. } = e {
                        assert!(!open.contains(&ticket));
                        open.push(ticket);
                    }
                }
                if r.is_err() {
                    // The task writes what is queued and closes; the session stays inert.
                    out.clear();
                    s.poll_transmit(&mut out);
                    frames(&out);
                    buf.extend_from_slice(data);
                    let _ = s.handle_bytes(now, &mut buf);
                    assert!(s.poll_event().is_none());
                    return;
                }
            }
            5 => {
                // Complete one open request, chosen by the op.
                if !open.is_empty() {
                    let i = usize::from(op & 31) % open.len();
                    let t = open.swap_remove(i);
                    s.complete(t, &vec![b'r'; usize::from(op & 7) * 40]);
                    s.complete(t, b"again");
                }
            }
            6 => {
                now += Duration::from_millis(u64::from(op & 31) * 1500);
                if let Some(t) = s.poll_timeout() {
                    assert!(t >= t0);
                }
                if s.handle_timeout(now).is_err() {
                    out.clear();
                    s.poll_transmit(&mut out);
                    frames(&out);
                    return;
                }
            }
            _ => {
                let mut ev = Vec::new();
                s.write_event(&vec![b'e'; usize::from(op & 15) * 30], &mut ev);
                frames(&ev);
                if op & 31 == 31 {
                    s.close(CloseReason::Kicked);
                }
            }
        }
        // Every unanswered request is still in flight.
        assert!(s.in_flight() >= open.len());
        out.clear();
        s.poll_transmit(&mut out);
        frames(&out);
    }
});
