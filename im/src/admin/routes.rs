//! Admin API endpoints (users, tokens, groups, members, messages, devices, history).
