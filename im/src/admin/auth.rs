//! Admin request signatures: Wildfire's `sha1(nonce|secret|timestamp)` and Ember's
//! HMAC-SHA256 over method, path, timestamp, nonce and body; time window and nonce cache.
