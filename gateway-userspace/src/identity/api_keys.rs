//! API keys (stub).
