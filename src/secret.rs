//! Secrets and the only forms in which tokens are kept.
//!
//! A token is never logged, never a cache key and never echoed. Where the
//! filter must hold one for a while (a callout to make again, a JWT waiting
//! for keys), it sits in a [`Secret`], whose `Debug` prints a redaction; a
//! cache finds a token by its SHA-256 ([`TokenHash`]); a log line names it by
//! a short [`fingerprint`].

use std::fmt;

use sha2::{Digest, Sha256};

/// SHA-256 of a token: the only form in which a token outlives its request.
pub(crate) type TokenHash = [u8; 32];

pub(crate) fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A short, non-reversible label for logs and the access log: the first 12
/// hex digits of the SHA-256 (`printf %s "$TOKEN" | sha256sum | cut -c1-12`).
pub(crate) fn fingerprint(hash: &TokenHash) -> String {
    hash[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// A value that must never reach a log: a token, a client secret. `Debug`
/// prints `Secret(<n> bytes)`; there is no `Display`. The value is reached
/// only through [`Secret::expose`], so every use is visible in review.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Tests compare configurations as JSON; a secret shows as a redaction.
#[cfg(test)]
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// A secret of the wrong type is refused without its value in the message
/// (serde's own message would quote it).
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)
            .map(Self)
            .map_err(|_| serde::de::Error::custom("must be a string (its value is not shown)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("s3cret-value");
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("Secret(12 bytes)"), "{shown}");
        assert_eq!(s.expose(), "s3cret-value");
    }

    #[test]
    fn fingerprint_is_short_and_not_the_token() {
        let token = crate::testing::EXAMPLE_PAT;
        let f = fingerprint(&hash_token(token));
        assert_eq!(f.len(), 12);
        assert!(!token.to_ascii_lowercase().contains(&f));
        // What an operator computes with sha256sum.
        assert_eq!(fingerprint(&hash_token("abc")), "ba7816bf8f01");
    }
}
