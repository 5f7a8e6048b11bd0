//! The keys the targets sign with: the RSA keys of `fuzz/keys.json` (public
//! parts for the filter, private parts to sign crafted encodings) and the
//! ES256 and EdDSA keys, with the configuration that trusts them all.

use super::*;

/// An RSA key of `fuzz/keys.json`: public parts for the filter, private
/// parts to sign crafted encodings (RFC 8017 §5.2.1 with CRT).
pub struct FuzzKey {
    pub kid: String,
    pub public: RsaPublicKey,
    pub prepared: PreparedKey,
    /// CRT parameters: d mod (p-1), d mod (q-1), q⁻¹ mod p.
    pub(super) dp: BigUint,
    pub(super) dq: BigUint,
    pub(super) q_inv: BigUint,
    pub(super) p: BigUint,
    pub(super) q: BigUint,
    pub(super) jwk: Value,
}

pub(super) fn uint(value: &Value, field: &str) -> BigUint {
    let text = value[field].as_str().expect("keys.json field");
    BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(text).expect("keys.json base64url"))
}

/// The three committed keys: 2048, 3072 and 4096 bits.
pub fn keys() -> &'static [FuzzKey] {
    static KEYS: OnceLock<Vec<FuzzKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let file: Value = serde_json::from_str(include_str!("../../fuzz/keys.json")).expect("keys.json");
        ["2048", "3072", "4096"]
            .iter()
            .map(|bits| {
                let k = &file[*bits];
                let (n, e) = (uint(k, "n"), uint(k, "e"));
                let public = RsaPublicKey::new(n.clone(), e.clone()).expect("a valid public key");
                let kid = k["kid"].as_str().expect("kid").to_owned();
                let (d, p, q) = (uint(k, "d"), uint(k, "p"), uint(k, "q"));
                let one = BigUint::from(1u8);
                FuzzKey {
                    prepared: PreparedKey::new(&n.to_bytes_be(), &e.to_bytes_be()).expect("an F4 key"),
                    jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": k["n"], "e": k["e"]}),
                    kid,
                    public,
                    dp: &d % (&p - &one),
                    dq: &d % (&q - &one),
                    // p is prime: q^(p-2) = q⁻¹ mod p.
                    q_inv: q.modpow(&(&p - BigUint::from(2u8)), &p),
                    p,
                    q,
                }
            })
            .collect()
    })
}

impl FuzzKey {
    /// `em^d mod n` by the Chinese remainder theorem, `k` bytes.
    pub fn raw_sign(&self, em: &[u8]) -> Vec<u8> {
        let m = BigUint::from_bytes_be(em);
        let s1 = m.modpow(&self.dp, &self.p);
        let s2 = m.modpow(&self.dq, &self.q);
        let h = (&self.q_inv * ((&s1 + &self.p) - (&s2 % &self.p))) % &self.p;
        let s = s2 + h * &self.q;
        let bytes = s.to_bytes_be();
        let k = self.public.size();
        [vec![0u8; k.saturating_sub(bytes.len())], bytes].concat()
    }

    /// A compact JWS over `header.claims`, RS256.
    pub fn sign_jwt(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let em = pkcs1_sha256(self.public.size(), &Sha256::digest(input.as_bytes()));
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(self.raw_sign(&em)))
    }
}

/// DER of the SHA-256 `DigestInfo` prefix (RFC 8017 §9.2 note 1).
pub(super) const DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
];

/// EMSA-PKCS1-v1_5 of a SHA-256 digest in `k` bytes.
pub fn pkcs1_sha256(k: usize, digest: &[u8]) -> Vec<u8> {
    let mut em = vec![0x00, 0x01];
    em.extend(std::iter::repeat_n(0xff, k - 3 - DIGEST_INFO.len() - digest.len()));
    em.push(0x00);
    em.extend_from_slice(&DIGEST_INFO);
    em.extend_from_slice(digest);
    em
}

/// `kid`s of the curve keys of the request and JWT targets.
pub(super) const P256_KID: &str = "fuzz-p256";
pub(super) const ED25519_KID: &str = "fuzz-ed25519";

/// A P-256 (ES256) and an Ed25519 (EdDSA) key from fixed bytes: the same
/// on every run, so committed seeds stay valid.
pub struct CurveKeys {
    pub p256: p256::ecdsa::SigningKey,
    pub ed25519: ed25519_dalek::SigningKey,
}

pub fn curve_keys() -> &'static CurveKeys {
    static KEYS: OnceLock<CurveKeys> = OnceLock::new();
    KEYS.get_or_init(|| CurveKeys {
        p256: p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).expect("a valid P-256 scalar"),
        ed25519: ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]),
    })
}

pub(super) fn curve_jwks() -> [Value; 2] {
    let keys = curve_keys();
    let point = keys.p256.verifying_key().to_encoded_point(false);
    let coordinate = |c: Option<&p256::FieldBytes>| URL_SAFE_NO_PAD.encode(c.map(|c| c.to_vec()).unwrap_or_default());
    [
        json!({"kty": "EC", "crv": "P-256", "kid": P256_KID, "alg": "ES256",
               "x": coordinate(point.x()), "y": coordinate(point.y())}),
        json!({"kty": "OKP", "crv": "Ed25519", "kid": ED25519_KID, "alg": "EdDSA",
               "x": URL_SAFE_NO_PAD.encode(keys.ed25519.verifying_key().as_bytes())}),
    ]
}
