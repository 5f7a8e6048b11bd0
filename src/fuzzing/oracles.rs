//! The independent judges a target holds the filter to: the `rsa` crate's
//! RS256, a JWT verified without the filter's code, what a request with no
//! acceptable credential may never get, and a model of route matching.

use super::*;

/// The `rsa` crate's verdict: the reference every accepted signature must meet.
pub(super) fn rsa_crate_accepts(public: &RsaPublicKey, message: &[u8], signature: &[u8]) -> bool {
    let scheme = Pkcs1v15Sign {
        hash_len: Some(32),
        prefix: DIGEST_INFO.into(),
    };
    public.verify(scheme, &Sha256::digest(message), signature).is_ok()
}

/// Whether `token` is a JWT whose signature the `rsa` crate accepts under
/// one of the committed keys, and whose claims hold at [`NOW`] when read
/// by plain JSON (the independent account of what may pass).
pub(super) fn independently_valid_jwt(token: &str) -> bool {
    let Some((input, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let claims: Option<Value> = input
        .split_once('.')
        .and_then(|(_, claims)| URL_SAFE_NO_PAD.decode(claims).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let Some(claims) = claims else {
        return false;
    };
    let skew = with_engine(|e| e.config().clock_skew_seconds);
    let time_ok = claims["exp"].as_u64().is_some_and(|exp| exp + skew > NOW)
        && claims["nbf"].as_u64().is_none_or(|nbf| nbf <= NOW + skew)
        && claims["iss"] == ISSUER;
    let header: Value = input
        .split_once('.')
        .and_then(|(header, _)| URL_SAFE_NO_PAD.decode(header).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let signed_by = |alg: &str, kid: &str| header["alg"] == alg && header["kid"] == kid;
    let curves = curve_keys();
    let signature_ok = if signed_by("ES256", P256_KID) {
        use p256::ecdsa::signature::Verifier;
        p256::ecdsa::Signature::from_slice(&signature)
            .is_ok_and(|s| curves.p256.verifying_key().verify(input.as_bytes(), &s).is_ok())
    } else if signed_by("EdDSA", ED25519_KID) {
        // The strict check: stricter than what the filter must meet.
        ed25519_dalek::Signature::from_slice(&signature).is_ok_and(|s| {
            curves
                .ed25519
                .verifying_key()
                .verify_strict(input.as_bytes(), &s)
                .is_ok()
        })
    } else {
        keys()
            .iter()
            .any(|k| rsa_crate_accepts(&k.public, input.as_bytes(), &signature))
    };
    time_ok && signature_ok
}

pub(super) fn decide_and_check(engine: &Engine, method: &str, path: &str, pairs: &[(&str, &str)]) {
    let request = RequestHead {
        method,
        path,
        headers: pairs,
        has_body: false,
    };
    let mut memory = Remembered::new(4, 4);
    let step = engine.decide(&request, &engine.config().inline_keys, &mut memory, NOW);
    match &step {
        Step::Done(Verdict::Allow(allowed)) => {
            if allowed.principal().is_some() {
                let tokens: Vec<&str> = pairs.iter().flat_map(|(_, v)| v.split([' ', '\t'])).collect();
                assert!(
                    tokens.iter().any(|t| independently_valid_jwt(t)),
                    "allowed without a valid credential: {step:?}"
                );
            } else {
                let access = engine.config().policy.access(method, path);
                assert!(
                    matches!(access, Ok(Access::Public)),
                    "allowed without identity on {path}"
                );
            }
        }
        Step::Introspect(pending) => {
            let token = pending.token().expose();
            assert!(
                crate::decision::credential::is_well_formed_reference(token),
                "introspecting a malformed token"
            );
        }
        Step::AwaitKeys(_) => panic!("inline keys never wait for a fetch"),
        Step::Done(Verdict::Deny(_)) => {}
    }
    // The decision is a function of the request: the same input, the same answer.
    let again = engine.decide(&request, &engine.config().inline_keys, &mut Remembered::new(4, 4), NOW);
    assert_eq!(step, again, "the decision changed between two passes");
    // Memory changes no decision: with every token of the request that
    // verifies already remembered (each sent alone first), a request is
    // decided from memory exactly as it was without.
    let mut warm = Remembered::new(8, 8);
    let pieces = pairs
        .iter()
        .flat_map(|(_, v)| v.split([' ', '\t', ',']))
        .filter(|t| !t.is_empty());
    for piece in pieces.take(8) {
        let alone = format!("Bearer {piece}");
        let head = RequestHead {
            method: "GET",
            path: "/api/domain/x",
            headers: &[("authorization", &alone)],
            has_body: false,
        };
        engine.decide(&head, &engine.config().inline_keys, &mut warm, NOW);
    }
    let warmed = engine.decide(&request, &engine.config().inline_keys, &mut warm, NOW);
    // The module's verifications of a second are shared by every decision
    // of the engine (and the clock stands still here): once spent, a
    // decision is 503 unjudged, which memory may well spare the other.
    let spent = |s: &Step| matches!(s, Step::Done(Verdict::Deny(r)) if *r == Rejection::from(JwtError::VerificationBudgetSpent));
    if !spent(&step) && !spent(&warmed) {
        assert_eq!(step, warmed, "a remembered token changed the decision");
    }
    // What the memory is looked up by: where it could be a remembered
    // token, it is the credential `locate` finds.
    let api_keys = &engine.config().api_key_headers;
    if let Some(found) = crate::decision::credential::candidate(pairs.iter().copied(), api_keys) {
        let max = engine.config().max_token_bytes;
        if !found.token.is_empty() && found.token.len() <= max && crate::decision::credential::classify(found).is_ok() {
            assert_eq!(
                crate::decision::credential::locate(pairs.iter().copied(), api_keys, max),
                Ok(found)
            );
        }
    }
}

/// A policy from `(path, exact, case_insensitive, methods)`; rule `i`
/// requires scope `i` (rule 0 is public) so a match names its rule.
pub(super) fn policy(rules: &[(&str, bool, bool, Option<&[&str]>)]) -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, (path, exact, folded, methods))| {
                serde_json::from_value::<RouteRule>(json!({
                    (if *exact { "exact" } else { "prefix" }): path,
                    "case_insensitive": folded,
                    "methods": methods,
                    "public": i == 0,
                    "all_of": if i == 0 { vec![] } else { vec![i.to_string()] },
                }))
                .expect("rule")
            })
            .collect();
        Policy::new(compiled, UnmatchedRoutes::Deny).expect("policy")
    })
}
