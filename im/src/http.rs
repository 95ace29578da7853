//! Short-link HTTP API: `GET /api/version` and `POST /route` (which node to connect to).
