//! Countries from an .mmdb.
