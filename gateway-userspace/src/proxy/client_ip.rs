//! Real client IP (stub).
