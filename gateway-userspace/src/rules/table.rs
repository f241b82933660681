//! Table compiler.
