//! The userspace proxy: listeners, the request phases, routing to backend pools.
//! Phases of a request, in order (one module each): connection (peer address, userspace
//! backstop, PROXY protocol) -> TLS -> client IP -> route -> upstream -> response checks -> log.

pub mod client_ip;
pub mod proxy_protocol;
pub mod tls;
