//! Configuration: raw TOML, compiled into a validated form.
