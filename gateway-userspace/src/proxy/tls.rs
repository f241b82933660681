//! TLS configuration (stub).
