//! Portcullis library.
