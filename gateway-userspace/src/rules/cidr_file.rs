//! Files of one CIDR per line.
