//! Fuzzes the client side (`ember_turn::client`, used by `ember selftest`) with server
//! responses: whatever a server sends, interpreting it never panics, a challenge is
//! followed at most twice per request, and requests built afterwards parse and carry the
//! credentials only once realm and nonce are known.
#![no_main]

use ember_turn::client::{
    error_code, mapped_address, Allocation, Answer, ClientAuth, ClientCredentials,
};
use ember_turn::stun::{attr, method, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut auth = ClientAuth::new(Some(ClientCredentials {
        username: "alice".into(),
        password: "pw".into(),
    }));
    // The input is a sequence of responses, each prefixed by a 2-byte length.
    let mut rest = data;
    let mut retries = 0;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (resp, tail) = rest[2..].split_at(n);
        rest = tail;
        let Ok(m) = Message::parse(resp) else { continue };
        let _ = (error_code(&m), mapped_address(&m), Allocation::from_response(&m));
        match auth.on_response(&m) {
            Answer::Retry => {
                retries += 1;
                assert!(retries <= 2, "challenges are followed at most twice per request");
            }
            _ => {
                retries = 0;
                auth.start_request();
            }
        }
        let req = auth.request(method::ALLOCATE, &[1; 12], |w| {
            w.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        });
        let r = Message::parse(&req).expect("built requests parse");
        assert_eq!(r.has(attr::USERNAME), auth.realm().is_some() && r.has(attr::NONCE));
    }
});
