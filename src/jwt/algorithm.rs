//! Signature algorithms the verifier can use, as a type: the configuration,
//! keys and tokens name them as strings, and each string is parsed once.
//!
//! HMAC and `none` are deliberately absent: an edge filter holding a shared
//! secret defeats asymmetric signing (RFC 8725 §2.1, §3.1).

use std::fmt;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    /// ECDSA on P-256 with SHA-256 (RFC 7518 §3.4).
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// ECDSA on P-521 with SHA-512.
    Es512,
    /// Ed25519 under its registered name (RFC 8037 §3.1).
    EdDsa,
    /// Ed25519 under its fully specified name (RFC 9864).
    Ed25519,
}

/// The key type (`kty`, and `crv` for curves) an algorithm verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    P256,
    P384,
    P521,
    Ed25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 11] = [
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
        Self::Es256,
        Self::Es384,
        Self::Es512,
        Self::EdDsa,
        Self::Ed25519,
    ];

    /// The JOSE name (`RS256`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::EdDsa => "EdDSA",
            Self::Ed25519 => "Ed25519",
        }
    }

    /// The only kind of key that verifies this algorithm's signatures.
    pub fn key_type(self) -> KeyType {
        match self {
            Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512 => KeyType::Rsa,
            Self::Es256 => KeyType::P256,
            Self::Es384 => KeyType::P384,
            Self::Es512 => KeyType::P521,
            Self::EdDsa | Self::Ed25519 => KeyType::Ed25519,
        }
    }

    /// The algorithm a JOSE name stands for, if the verifier supports it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
impl serde::Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::parse(&name).ok_or_else(|| {
            let choices: Vec<&str> = Self::ALL.iter().map(|a| a.as_str()).collect();
            serde::de::Error::custom(format!("`{name}` is not allowed; choose from {}", choices.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.as_str()), Some(a));
        }
    }

    #[test]
    fn hmac_and_none_do_not_parse() {
        for name in [
            "none", "HS256", "hs256", "rs256", "es256", "es384", "ES256K", "Ed448", "",
        ] {
            assert_eq!(Algorithm::parse(name), None, "{name}");
            let err = serde_json::from_value::<Algorithm>(serde_json::json!(name)).unwrap_err();
            assert!(err.to_string().contains("is not allowed"), "{err}");
        }
    }
}
