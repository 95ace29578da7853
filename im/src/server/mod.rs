//! The tokio shell of the messaging core: MQTT listeners over TCP, TLS, WebSocket and WSS,
//! one task per connection driving a [`crate::session::Session`].
