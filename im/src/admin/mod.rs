//! The admin API for the app's back end: signed requests (admin secret, nonce, timestamp),
//! JSON in and out, with an OpenAPI document.

pub mod auth;
pub mod routes;
