//! Prometheus metrics of the messaging core (connections, messages, deliveries, store).
