//! Object-store gateway (S3/MinIO- and Qiniu-compatible, on https bucket domains).
//!
//! Not built yet: this crate is a placeholder in the workspace so the layout is fixed.
//! The object-store issue fills it; nothing here pretends to serve requests.
