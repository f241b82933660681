//! JWT validation (stub).
