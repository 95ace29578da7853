//! CDN edge and L4 access point (caching reverse proxy for bucket domains, port mapping).
//!
//! Not built yet: this crate is a placeholder in the workspace so the layout is fixed.
