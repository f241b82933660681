//! Kernel control.
