//! Signing keys and JWT minting, honest and hostile.
//!
//! The emulator issues tokens with these; tests use them directly to build
//! every malformed variant a careful verifier must refuse.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rsa::pkcs1v15::SigningKey as Pkcs1SigningKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::Sha256;

/// Issuer the emulator puts in `iss`, and the filter configurations accept.
pub const ISSUER: &str = "https://idp.erp.test/id";
/// Audiences an ERP.net access token carries.
pub const AUDIENCES: &[&str] = &["DomainAPI", "TableAPI", "OLAP", "AppServer"];

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// An RSA signing key with its `kid`.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    private: RsaPrivateKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, {} bits)", self.kid, self.private.size() * 8)
    }
}

impl SigningKey {
    /// A fresh key. 2048 bits for real keys; smaller only to test refusal.
    pub fn generate(kid: &str, bits: usize) -> Result<Self, Error> {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)?;
        Ok(Self {
            kid: kid.to_owned(),
            private,
        })
    }

    /// The public half as a JWK (`use: sig`, `alg: RS256`).
    pub fn jwk(&self) -> Value {
        let public = self.private.to_public_key();
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        })
    }

    /// The public key as PEM: what an HS256 key-confusion attack uses as secret.
    pub fn public_pem(&self) -> Result<String, Error> {
        Ok(self.private.to_public_key().to_public_key_pem(LineEnding::LF)?)
    }

    fn sign_rs256(&self, message: &[u8]) -> Vec<u8> {
        Pkcs1SigningKey::<Sha256>::new(self.private.clone())
            .sign(message)
            .to_vec()
    }

    /// A signature by the RSA algorithm `alg` (RS256/384/512, PS256/384/512)
    /// of `message`.
    pub fn sign_as(&self, alg: &str, message: &[u8]) -> Result<Vec<u8>, Error> {
        use rsa::pkcs1v15::SigningKey as Pkcs1;
        use rsa::pss::BlindedSigningKey as Pss;
        use sha2::{Sha384, Sha512};
        let key = self.private.clone();
        let mut rng = rand::rngs::OsRng;
        Ok(match alg {
            "RS256" => Pkcs1::<Sha256>::new(key).sign(message).to_vec(),
            "RS384" => Pkcs1::<Sha384>::new(key).sign(message).to_vec(),
            "RS512" => Pkcs1::<Sha512>::new(key).sign(message).to_vec(),
            "PS256" => Pss::<Sha256>::new(key).sign_with_rng(&mut rng, message).to_vec(),
            "PS384" => Pss::<Sha384>::new(key).sign_with_rng(&mut rng, message).to_vec(),
            "PS512" => Pss::<Sha512>::new(key).sign_with_rng(&mut rng, message).to_vec(),
            other => return Err(format!("{other} is not an RSA algorithm").into()),
        })
    }

    /// A PS256 signature (RSASSA-PSS, SHA-256, MGF1-SHA-256, a 32-byte
    /// random salt) of `message`.
    pub fn sign_ps256(&self, message: &[u8]) -> Vec<u8> {
        rsa::pss::BlindedSigningKey::<Sha256>::new(self.private.clone())
            .sign_with_rng(&mut rand::rngs::OsRng, message)
            .to_vec()
    }

    /// The raw private-key operation `em^d mod n`, as `k` bytes: signs any
    /// encoded message, well-formed or not.
    pub fn raw(&self, em: &[u8]) -> Vec<u8> {
        let n = self.private.n();
        let s = rsa::BigUint::from_bytes_be(em).modpow(self.private.d(), n);
        left_pad(&s.to_bytes_be(), self.private.size())
    }

    /// The modulus, `k` bytes.
    pub fn modulus(&self) -> Vec<u8> {
        left_pad(&self.private.n().to_bytes_be(), self.private.size())
    }

    /// Signatures of `input` that a PKCS#1 v1.5 SHA-256 verifier must refuse,
    /// each with what is wrong with it: every way an RS256 check has been
    /// got wrong.
    pub fn forged_signatures(&self, input: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
        const SHA256_INFO: [u8; 19] = [
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04,
            0x20,
        ];
        let k = self.private.size();
        let digest: Vec<u8> = {
            use sha2::Digest as _;
            Sha256::digest(input).to_vec()
        };
        // 00 01 FF..FF 00 || info || digest, with `block` as the block type.
        let encode = |block: u8, pad: u8, info: &[u8], digest: &[u8]| {
            let mut em = vec![0x00, block];
            em.extend(std::iter::repeat_n(pad, k - 3 - info.len() - digest.len()));
            em.push(0x00);
            em.extend_from_slice(info);
            em.extend_from_slice(digest);
            em
        };
        let valid = self.sign_rs256(input);
        let mut flipped = valid.clone();
        flipped[k / 2] ^= 0x01;
        let mut longer = vec![0u8];
        longer.extend_from_slice(&valid);
        let mut wrong_oid = SHA256_INFO;
        wrong_oid[14] ^= 0x01;
        let mut bad_padding = encode(0x01, 0xff, &SHA256_INFO, &digest);
        bad_padding[10] = 0xfe;
        let mut n_plus_one = rsa::BigUint::from_bytes_be(&self.modulus());
        n_plus_one += 1u32;
        let mut other = input.to_vec();
        other.push(b'x');
        vec![
            ("one bit flipped", flipped),
            ("s = n", self.modulus()),
            ("s = n + 1", left_pad(&n_plus_one.to_bytes_be(), k)),
            ("one byte longer", longer),
            ("one byte shorter", valid[1..].to_vec()),
            ("wrong DigestInfo", self.raw(&encode(0x01, 0xff, &wrong_oid, &digest))),
            ("no DigestInfo", self.raw(&encode(0x01, 0xff, &[], &digest))),
            ("bad padding", self.raw(&bad_padding)),
            ("block type 2", self.raw(&encode(0x02, 0x5a, &SHA256_INFO, &digest))),
            ("another message's signature", self.sign_rs256(&other)),
        ]
    }
}

fn left_pad(bytes: &[u8], k: usize) -> Vec<u8> {
    let mut out = vec![0u8; k.saturating_sub(bytes.len())];
    out.extend_from_slice(bytes);
    out
}

/// A P-256 (ES256) or Ed25519 (EdDSA) signing key with its `kid`, made
/// from a seed: the same seed gives the same key.
#[derive(Clone)]
pub enum CurveKey {
    P256 {
        kid: String,
        key: p256::ecdsa::SigningKey,
    },
    P384 {
        kid: String,
        key: p384::ecdsa::SigningKey,
    },
    P521 {
        kid: String,
        key: p521::ecdsa::SigningKey,
    },
    Ed25519 {
        kid: String,
        key: ed25519_dalek::SigningKey,
    },
}

impl std::fmt::Debug for CurveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CurveKey({}, {})", self.kid(), self.alg())
    }
}

/// The order of P-256's base point, big-endian.
pub const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// The order of P-384's base point, big-endian.
pub const P384_ORDER: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf, 0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0,
    0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];
/// The order of P-521's base point, big-endian, in 66 bytes.
pub const P521_ORDER: [u8; 66] = [
    0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfa, 0x51, 0x86, 0x87, 0x83,
    0xbf, 0x2f, 0x96, 0x6b, 0x7f, 0xcc, 0x01, 0x48, 0xf7, 0x09, 0xa5, 0xd0, 0x3b, 0xb5, 0xc9, 0xb8, 0x89, 0x9c, 0x47,
    0xae, 0xbb, 0x6f, 0xb7, 0x1e, 0x91, 0x38, 0x64, 0x09,
];
/// The order L of Ed25519's base point, little-endian.
pub const ED25519_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

/// 32 bytes derived from a seed.
fn seed_bytes(seed: &str, round: u8) -> [u8; 32] {
    use sha2::Digest;
    Sha256::new().chain_update(seed).chain_update([round]).finalize().into()
}

impl CurveKey {
    /// A P-256 key for ES256.
    pub fn p256(kid: &str, seed: &str) -> Result<Self, Error> {
        // A hash is a valid scalar but for a chance of about 2^-32.
        let key = (0..=u8::MAX)
            .find_map(|round| p256::ecdsa::SigningKey::from_bytes(&seed_bytes(seed, round).into()).ok())
            .ok_or("no P-256 scalar from this seed")?;
        Ok(Self::P256 {
            kid: kid.to_owned(),
            key,
        })
    }

    /// A P-384 key for ES384.
    pub fn p384(kid: &str, seed: &str) -> Result<Self, Error> {
        let key = (0..=u8::MAX)
            .find_map(|round| {
                let bytes = [seed_bytes(seed, round), seed_bytes(seed, round.wrapping_add(128))].concat();
                p384::ecdsa::SigningKey::from_slice(&bytes[..48]).ok()
            })
            .ok_or("no P-384 scalar from this seed")?;
        Ok(Self::P384 {
            kid: kid.to_owned(),
            key,
        })
    }

    /// A P-521 key for ES512.
    pub fn p521(kid: &str, seed: &str) -> Result<Self, Error> {
        let key = (0..=u8::MAX)
            .find_map(|round| {
                let mut bytes = [
                    seed_bytes(seed, round),
                    seed_bytes(seed, round.wrapping_add(64)),
                    seed_bytes(seed, round.wrapping_add(128)),
                ]
                .concat();
                bytes[0] &= 0x01; // below 2^521
                p521::ecdsa::SigningKey::from_slice(&bytes[..66]).ok()
            })
            .ok_or("no P-521 scalar from this seed")?;
        Ok(Self::P521 {
            kid: kid.to_owned(),
            key,
        })
    }

    /// An Ed25519 key for EdDSA.
    pub fn ed25519(kid: &str, seed: &str) -> Self {
        Self::Ed25519 {
            kid: kid.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed_bytes(seed, 0)),
        }
    }

    pub fn kid(&self) -> &str {
        match self {
            Self::P256 { kid, .. } | Self::P384 { kid, .. } | Self::P521 { kid, .. } | Self::Ed25519 { kid, .. } => kid,
        }
    }

    /// The JOSE algorithm it signs with: `ES256`, `ES384`, `ES512` or `EdDSA`.
    pub fn alg(&self) -> &'static str {
        match self {
            Self::P256 { .. } => "ES256",
            Self::P384 { .. } => "ES384",
            Self::P521 { .. } => "ES512",
            Self::Ed25519 { .. } => "EdDSA",
        }
    }

    /// The JWK `crv` and the bytes of one coordinate (and of r or s).
    fn curve(&self) -> (&'static str, usize) {
        match self {
            Self::P256 { .. } => ("P-256", 32),
            Self::P384 { .. } => ("P-384", 48),
            Self::P521 { .. } => ("P-521", 66),
            Self::Ed25519 { .. } => ("Ed25519", 32),
        }
    }

    /// The public half as a JWK (`use: sig`, with `alg`).
    pub fn jwk(&self) -> Value {
        let ec = |x: Option<Vec<u8>>, y: Option<Vec<u8>>| {
            json!({
                "kty": "EC", "crv": self.curve().0, "use": "sig", "alg": self.alg(), "kid": self.kid(),
                "x": URL_SAFE_NO_PAD.encode(x.unwrap_or_default()),
                "y": URL_SAFE_NO_PAD.encode(y.unwrap_or_default()),
            })
        };
        match self {
            Self::P256 { key, .. } => {
                let point = key.verifying_key().to_encoded_point(false);
                ec(point.x().map(|x| x.to_vec()), point.y().map(|y| y.to_vec()))
            }
            Self::P384 { key, .. } => {
                let point = key.verifying_key().to_encoded_point(false);
                ec(point.x().map(|x| x.to_vec()), point.y().map(|y| y.to_vec()))
            }
            Self::P521 { key, .. } => {
                let point = p521::ecdsa::VerifyingKey::from(key).to_encoded_point(false);
                ec(point.x().map(|x| x.to_vec()), point.y().map(|y| y.to_vec()))
            }
            Self::Ed25519 { kid, key } => json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
            }),
        }
    }

    /// The JWS signature of `input`: R || S (64 bytes) for ES256, the
    /// 64-byte signature for EdDSA.
    pub fn sign_raw(&self, input: &[u8]) -> Vec<u8> {
        match self {
            Self::P256 { key, .. } => {
                let signature: p256::ecdsa::Signature = Signer::sign(key, input);
                signature.to_bytes().to_vec()
            }
            Self::P384 { key, .. } => {
                let signature: p384::ecdsa::Signature = Signer::sign(key, input);
                signature.to_bytes().to_vec()
            }
            Self::P521 { key, .. } => {
                let signature: p521::ecdsa::Signature = Signer::sign(key, input);
                signature.to_bytes().to_vec()
            }
            Self::Ed25519 { key, .. } => ed25519_dalek::Signer::sign(key, input).to_bytes().to_vec(),
        }
    }

    /// Signatures of `input` no verifier may accept, each with what it is:
    /// bit flips, wrong lengths and encodings, scalars out of range,
    /// another message's and another key's signature.
    pub fn forged_signatures(&self, input: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
        let good = self.sign_raw(input);
        let half = good.len() / 2;
        let (first, second) = good.split_at(half);
        let mut flipped_first = good.clone();
        flipped_first[10] ^= 0x01;
        let mut flipped_second = good.clone();
        flipped_second[half + 8] ^= 0x01;
        let other_message = self.sign_raw(&[input, b"x"].concat());
        let mut forged = vec![
            ("one bit flipped in the first half", flipped_first),
            ("one bit flipped in the second half", flipped_second),
            ("one byte shorter", good[..good.len() - 1].to_vec()),
            ("one byte longer", [good.as_slice(), &[0]].concat()),
            ("empty", Vec::new()),
            ("zeros", vec![0; good.len()]),
            ("all ones", vec![0xff; good.len()]),
            ("halves swapped", [second, first].concat()),
            ("another message's signature", other_message),
        ];
        let zero = vec![0u8; half];
        let ecdsa =
            |forged: &mut Vec<(&'static str, Vec<u8>)>, order: &[u8], der: Option<Vec<u8>>, impostor: Option<Self>| {
                forged.push(("DER instead of R || S", der.unwrap_or_default()));
                forged.push(("r = 0", [&zero[..], second].concat()));
                forged.push(("s = 0", [first, &zero[..]].concat()));
                forged.push(("r = n", [order, second].concat()));
                forged.push(("s = n", [first, order].concat()));
                if let Some(impostor) = impostor {
                    forged.push(("another key's signature", impostor.sign_raw(input)));
                }
            };
        match self {
            Self::P256 { kid, .. } => {
                let der = p256::ecdsa::Signature::from_slice(&good).map(|s| s.to_der().as_bytes().to_vec());
                ecdsa(&mut forged, &P256_ORDER, der.ok(), Self::p256(kid, "an impostor").ok());
            }
            Self::P384 { kid, .. } => {
                let der = p384::ecdsa::Signature::from_slice(&good).map(|s| s.to_der().as_bytes().to_vec());
                ecdsa(&mut forged, &P384_ORDER, der.ok(), Self::p384(kid, "an impostor").ok());
            }
            Self::P521 { kid, .. } => {
                let der = p521::ecdsa::Signature::from_slice(&good).map(|s| s.to_der().as_bytes().to_vec());
                ecdsa(&mut forged, &P521_ORDER, der.ok(), Self::p521(kid, "an impostor").ok());
            }
            Self::Ed25519 { kid, .. } => {
                // S + L: the same S mod L, encoded non-canonically.
                let mut s_plus_l = second.to_vec();
                let mut carry = 0u16;
                for (byte, l) in s_plus_l.iter_mut().zip(ED25519_ORDER) {
                    let sum = u16::from(*byte) + u16::from(l) + carry;
                    *byte = (sum & 0xff) as u8;
                    carry = sum >> 8;
                }
                forged.push(("S + L", [first, s_plus_l.as_slice()].concat()));
                forged.push(("S = L", [first, &ED25519_ORDER[..]].concat()));
                let impostor = Self::ed25519(kid, "an impostor");
                forged.push(("another key's signature", impostor.sign_raw(input)));
            }
        }
        forged
    }

    /// Signs `header.claims`, whatever the header says.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(self.sign_raw(input.as_bytes())))
    }

    /// The JOSE header of an access token signed by this key.
    pub fn header(&self) -> Value {
        json!({"alg": self.alg(), "kid": self.kid(), "typ": "at+jwt"})
    }
}

/// A JWKS document of these keys.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    json!({ "keys": keys.into_iter().map(SigningKey::jwk).collect::<Vec<_>>() })
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// Signs `header.claims` with RS256, whatever the header says.
pub fn sign(header: &Value, claims: &Value, key: &SigningKey) -> String {
    let input = signing_input(header, claims);
    let signature = key.sign_rs256(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Signs a payload given as bytes (which need not be valid JSON or UTF-8)
/// with RS256.
pub fn sign_payload(header: &Value, payload: &[u8], key: &SigningKey) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = key.sign_rs256(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Signs with HMAC-SHA256 under `secret` (the key-confusion attack).
pub fn sign_hs256(header: &Value, claims: &Value, secret: &[u8]) -> Result<String, Error> {
    let input = signing_input(header, claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)?;
    mac.update(input.as_bytes());
    Ok(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    ))
}

/// `alg: none` with an empty signature.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.", signing_input(header, claims))
}

/// The JOSE header ERP.net puts on access tokens.
pub fn header(kid: &str) -> Value {
    json!({"alg": "RS256", "kid": kid, "typ": "at+jwt"})
}

/// Claims shaped like an ERP.net client-credentials access token.
pub fn claims(now: u64, scopes: &[&str]) -> Value {
    json!({
        "nbf": now,
        "iat": now,
        "exp": now + 3600,
        "iss": ISSUER,
        "aud": AUDIENCES,
        "client_id": "my.trusted.app/first",
        "client_system_user": "p.kostov@erp.bg",
        "client_system_user_type": "Internal",
        "client_db": "E1_DEV",
        "jti": random_hex(16),
        "scope": scopes,
    })
}

/// Flips one bit in the signature part of a JWT.
pub fn flip_signature_byte(token: &str) -> String {
    let (input, signature) = token.rsplit_once('.').unwrap_or((token, ""));
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap_or_default();
    if let Some(b) = bytes.get_mut(10) {
        *b ^= 0x01;
    }
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// `n` random bytes as upper-case hex.
pub fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
