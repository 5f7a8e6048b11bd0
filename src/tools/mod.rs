//! Tools around the filter, never in it (feature `tools`, which only the
//! inspector turns on): one decision told check by check ([`explain`]),
//! and warnings about a configuration the filter accepts but that probably
//! does not do what its author meant ([`lint`]).

pub mod explain;
pub mod lint;
