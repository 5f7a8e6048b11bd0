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
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
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
        for name in ["none", "HS256", "hs256", "rs256", "ES256", ""] {
            assert_eq!(Algorithm::parse(name), None, "{name}");
            let err = serde_json::from_value::<Algorithm>(serde_json::json!(name)).unwrap_err();
            assert!(err.to_string().contains("is not allowed"), "{err}");
        }
    }
}
