//! Messaging core (MQTT long connections, routes, users, chat, offline sync, admin API).
//!
//! Not built yet: this crate is a placeholder in the workspace so the layout is fixed.
