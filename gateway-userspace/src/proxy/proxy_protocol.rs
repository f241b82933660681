//! PROXY protocol v1/v2 (stub).
