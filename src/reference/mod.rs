//! `enrt_` reference tokens: the RFC 7662 introspection callout and its
//! answers ([`introspection`]), and the cache of answers every worker
//! shares, with the claims that let one callout answer them all
//! ([`cache`]).

pub(crate) mod cache;
pub(crate) mod introspection;
