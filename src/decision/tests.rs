//! The engine's tests: one request's rules, and keys from the identity service.

mod rules {
    use super::super::*;
    use crate::testing::{self as testkit, NOW};
    use crate::token_problem::TokenProblem;
    use serde_json::json;

    #[test]
    fn report_only_passes_refusals_of_its_rules_without_identity_and_keeps_503() {
        let read = format!("Bearer {}", testkit::token(&["read"]));
        let run = |patch: serde_json::Value, method: &str, headers: &[(&str, &str)]| {
            let engine = Engine::new(testkit::config_from(|c| {
                if let (Some(c), Some(p)) = (c.as_object_mut(), patch.as_object()) {
                    c.extend(p.clone());
                }
            }));
            let head = RequestHead {
                method,
                path: "/api/domain/x",
                headers,
                has_body: false,
            };
            engine.decide(&head, &engine.config().inline_keys, &mut Remembered::new(10, 10), NOW)
        };
        let passed = |step: &Step| match step {
            Step::Done(Verdict::Allow(a)) => a.would_deny.clone().filter(|_| a.identity.is_none()),
            _ => None,
        };
        // The POST rule in report-only: a read-only token's POST passes.
        let rules = json!({"routes": [
            {"prefix": "/api/domain/", "methods": ["GET"], "all_of": ["read"]},
            {"prefix": "/api/domain/", "methods": ["POST"], "all_of": ["update"], "report_only": true}
        ]});
        let step = run(rules.clone(), "POST", &[("authorization", &read)]);
        assert!(
            matches!(passed(&step), Some(Rejection::InsufficientScope { .. })),
            "{step:?}"
        );
        assert_eq!(
            passed(&run(rules.clone(), "POST", &[])),
            Some(Rejection::MissingCredential)
        );
        // The GET rule is not: its refusals stand, its passes are plain.
        assert_eq!(
            run(rules.clone(), "GET", &[]),
            Step::Done(Verdict::Deny(Rejection::MissingCredential))
        );
        let step = run(rules, "GET", &[("authorization", &read)]);
        assert!(matches!(&step, Step::Done(Verdict::Allow(a)) if a.would_deny.is_none() && a.identity.is_some()));
        // Globally: every refusal passes, but not a 503 (no keys: not judged).
        let global = json!({"report_only": true});
        assert!(passed(&run(global.clone(), "DELETE", &[("authorization", &read)])).is_some());
        let no_keys =
            json!({"report_only": true, "jwks": null, "remote_jwks": {"cluster": "identity", "authority": "idp"}});
        let step = run(no_keys, "GET", &[("authorization", &read)]);
        assert!(
            matches!(step, Step::Done(Verdict::Deny(Rejection::Unavailable(_)))),
            "{step:?}"
        );
    }

    #[test]
    fn a_rules_report_only_never_softens_the_request_wide_checks() {
        let engine = Engine::new(testkit::config_from(|c| {
            c["routes"] = json!([
                {"prefix": "/api/domain/", "methods": ["GET"], "all_of": ["read"], "report_only": true}
            ]);
        }));
        let read = format!("Bearer {}", testkit::token(&["read"]));
        let decide = |method: &str, headers: &[(&str, &str)]| {
            let head = RequestHead {
                method,
                path: "/api/domain/x",
                headers,
                has_body: false,
            };
            engine.decide(&head, &engine.config().inline_keys, &mut Remembered::new(10, 10), NOW)
        };
        for (method, headers) in [
            (
                "GET",
                vec![("authorization", read.as_str()), ("x-http-method-override", "DELETE")],
            ),
            ("GET", vec![("x-original-url", "/api/domain/admin")]),
            ("get", vec![("authorization", read.as_str())]),
        ] {
            let step = decide(method, &headers);
            assert!(
                matches!(step, Step::Done(Verdict::Deny(Rejection::InvalidRequest(_)))),
                "{method} {headers:?}: {step:?}"
            );
        }
        // The rule's own refusals still pass, reported.
        let step = decide("GET", &[]);
        assert!(
            matches!(&step, Step::Done(Verdict::Allow(a)) if a.would_deny == Some(Rejection::MissingCredential)),
            "{step:?}"
        );
        // The whole filter in report-only mode reports them too.
        let global = Engine::new(testkit::config_from(|c| c["report_only"] = json!(true)));
        let head = RequestHead {
            method: "GET",
            path: "/api/domain/x",
            headers: &[("x-http-method-override", "DELETE")],
            has_body: false,
        };
        let step = global.decide(&head, &global.config().inline_keys, &mut Remembered::new(10, 10), NOW);
        assert!(
            matches!(&step, Step::Done(Verdict::Allow(a)) if matches!(a.would_deny, Some(Rejection::InvalidRequest(_)))),
            "{step:?}"
        );
    }

    #[test]
    fn mapped_claims_that_cannot_be_read_or_would_blur_refuse_the_token() {
        let engine = Engine::new(testkit::config_from(|c| {
            c["claims_to_headers"] = json!([{"claim": "groups", "header": "x-groups"}])
        }));
        let decide = |token: &str| {
            let auth = format!("Bearer {token}");
            let head = RequestHead {
                method: "GET",
                path: "/api/domain/x",
                headers: &[("authorization", &auth)],
                has_body: false,
            };
            engine.decide(&head, &engine.config().inline_keys, &mut Remembered::new(10, 10), NOW)
        };
        // Invalid UTF-8 in a claim nobody names: never a pass without the
        // mapped headers (the JWT reader already refuses it; were it to
        // verify, the re-reading would: `TokenProblem::UnreadableClaims`).
        let claims = erp_devstack::tokens::claims(NOW, &["read"]).to_string();
        let mut payload = claims.trim_end_matches('}').as_bytes().to_vec();
        payload.extend_from_slice(b",\"note\":\"\xff\"}");
        let token =
            erp_devstack::tokens::sign_payload(&erp_devstack::tokens::header(testkit::KID), &payload, testkit::key());
        let step = decide(&token);
        assert!(
            matches!(step, Step::Done(Verdict::Deny(Rejection::InvalidToken(_)))),
            "{step:?}"
        );
        let blurred = testkit::token_with(|_, c| c["groups"] = json!(["admins", "read only"]));
        assert_eq!(
            decide(&blurred),
            Step::Done(Verdict::Deny(Rejection::InvalidToken(TokenProblem::AmbiguousClaimList)))
        );
        let fine = testkit::token_with(|_, c| c["groups"] = json!(["admins", "readers"]));
        assert!(matches!(decide(&fine), Step::Done(Verdict::Allow(_))));
    }

    /// Forged ES256 and EdDSA signatures cost a worker at most
    /// `max_module_verifications_per_second` verifications a second; past it,
    /// 503 without verifying, and the next second verifies again.
    #[test]
    fn module_verifications_are_held_to_their_budget_and_counted() {
        use erp_devstack::tokens::CurveKey;
        use testkit::{curve_token, ed25519_key, p256_key};
        let mut doc = testkit::config_json();
        doc["algorithms"] = json!(["ES256", "EdDSA"]);
        doc["jwks"] = json!({"keys": [p256_key().jwk(), ed25519_key().jwk()]});
        doc["max_module_verifications_per_second"] = json!(3);
        let engine = Engine::new(crate::config::Config::from_json(doc.to_string().as_bytes()).unwrap());
        let decide = |token: &str, now: u64| {
            let auth = format!("Bearer {token}");
            let head = RequestHead {
                method: "GET",
                path: "/api/domain/x",
                headers: &[("authorization", &auth)],
                has_body: false,
            };
            engine.decide(&head, &engine.config().inline_keys, &mut Remembered::new(10, 10), now)
        };
        let forged = |key: &CurveKey, i: usize| {
            let token = curve_token(key, |_, c| c["jti"] = json!(format!("f{i}")));
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            use base64::Engine as _;
            let (input, signature) = token.rsplit_once('.').unwrap();
            let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
            signature[5] ^= 1;
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
        };
        let mut refused = Vec::new();
        for i in 0..5 {
            let key = if i % 2 == 0 { p256_key() } else { ed25519_key() };
            refused.push(match decide(&forged(&key, i), NOW) {
                Step::Done(Verdict::Deny(r)) => r.status(),
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(refused, [401, 401, 401, 503, 503]);
        assert_eq!(engine.take_counts().over_budget, 2);
        // ES384 and ES512 count eight each.
        let mut doc = testkit::config_json();
        doc["algorithms"] = json!(["ES384", "ES512"]);
        doc["jwks"] = json!({"keys": [testkit::p384_key().jwk(), testkit::p521_key().jwk()]});
        doc["max_module_verifications_per_second"] = json!(16);
        let heavy = Engine::new(crate::config::Config::from_json(doc.to_string().as_bytes()).unwrap());
        let statuses: Vec<u32> = [testkit::p384_key(), testkit::p521_key(), testkit::p384_key()]
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let auth = format!("Bearer {}", forged(key, i));
                let head = RequestHead {
                    method: "GET",
                    path: "/api/domain/x",
                    headers: &[("authorization", &auth)],
                    has_body: false,
                };
                match heavy.decide(&head, &heavy.config().inline_keys, &mut Remembered::new(10, 10), NOW) {
                    Step::Done(Verdict::Deny(r)) => r.status(),
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(statuses, [401, 401, 503]);
        doc["max_module_verifications_per_second"] = json!(7);
        let error = crate::config::Config::from_json(doc.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.field, "max_module_verifications_per_second");
        // A new second, new verifications: a valid token passes.
        let valid = curve_token(&p256_key(), |_, _| {});
        assert!(matches!(decide(&valid, NOW + 1), Step::Done(Verdict::Allow(_))));
    }

    #[test]
    fn claims_to_headers_carry_jwt_claims_upstream() {
        let engine = Engine::new(testkit::config_from(|c| {
            c["claims_to_headers"] = json!([
                {"claim": "client_system_user_type", "header": "x-erp-user-type"},
                {"claim": "aud", "header": "x-audiences"},
                {"claim": "absent", "header": "x-absent"}
            ])
        }));
        let auth = format!("Bearer {}", testkit::token(&["read"]));
        let head = RequestHead {
            method: "GET",
            path: "/api/domain/x",
            headers: &[("authorization", &auth)],
            has_body: false,
        };
        let mut memory = Remembered::new(10, 10);
        for pass in 0..2 {
            // The second time from the worker's memory, with the same headers.
            let step = engine.decide(&head, &engine.config().inline_keys, &mut memory, NOW);
            let Step::Done(Verdict::Allow(allowed)) = step else {
                panic!("{step:?}")
            };
            let headers = allowed.set_headers();
            assert!(
                headers.contains(&("x-erp-user-type".into(), "Internal".into())),
                "pass {pass}: {headers:?}"
            );
            assert!(headers
                .iter()
                .any(|(n, v)| n == "x-audiences" && v.contains("DomainAPI")));
            assert!(!headers.iter().any(|(n, _)| n == "x-absent"));
        }
    }

    #[test]
    fn claims_to_headers_names_are_checked() {
        let bad = |mapping: serde_json::Value| {
            let mut doc = testkit::config_json();
            doc["claims_to_headers"] = json!([mapping]);
            Config::from_json(doc.to_string().as_bytes()).unwrap_err().to_string()
        };
        assert!(bad(json!({"claim": "a", "header": "x-erp-client-id"})).contains("claims_to_headers[0].header"));
        assert!(bad(json!({"claim": "a", "header": "authorization"})).contains("claims_to_headers[0].header"));
        assert!(bad(json!({"claim": "a", "header": "X-Upper"})).contains("claims_to_headers[0].header"));
        assert!(bad(json!({"claim": "a..b", "header": "x-a"})).contains("claims_to_headers[0].claim"));
        assert!(bad(json!({"claim": "a", "header": "x-a", "other": 1})).contains("claims_to_headers"));
    }

    #[test]
    fn cors_preflights_pass_without_a_credential_only_when_configured() {
        let preflight: &[(&str, &str)] = &[
            ("origin", "https://app.erp.test"),
            ("access-control-request-method", "POST"),
        ];
        let run = |bypass: bool, method: &str, headers: &[(&str, &str)]| {
            let engine = Engine::new(testkit::config_from(|c| c["bypass_cors_preflight"] = json!(bypass)));
            engine.decide(
                &RequestHead {
                    method,
                    path: "/api/domain/x",
                    headers,
                    has_body: false,
                },
                &engine.config().inline_keys,
                &mut Remembered::new(10, 10),
                NOW,
            )
        };
        let passed = |step: &Step| matches!(step, Step::Done(Verdict::Allow(a)) if a.identity.is_none());
        assert!(passed(&run(true, "OPTIONS", preflight)));
        // Off (the default): decided like any request; no rule names OPTIONS.
        assert_eq!(
            run(false, "OPTIONS", preflight),
            Step::Done(Verdict::Deny(Rejection::RouteNotAllowed))
        );
        // Not a preflight: another method, or a header missing or empty.
        assert!(!passed(&run(true, "GET", preflight)));
        assert!(!passed(&run(true, "OPTIONS", &preflight[..1])));
        assert!(!passed(&run(
            true,
            "OPTIONS",
            &[("origin", "x"), ("access-control-request-method", "")]
        )));
        // Not a way around the request checks.
        let smuggled = [preflight[0], preflight[1], ("x-http-method-override", "DELETE")];
        assert!(matches!(
            run(true, "OPTIONS", &smuggled),
            Step::Done(Verdict::Deny(Rejection::InvalidRequest(_)))
        ));
    }

    fn decide(method: &str, path: &str, headers: &[(&str, &str)]) -> Step {
        let engine = testkit::engine();
        engine.decide(
            &RequestHead {
                method,
                path,
                headers,
                has_body: false,
            },
            &engine.config().inline_keys,
            &mut Remembered::new(10, 10),
            NOW,
        )
    }

    fn denied(d: Step) -> Rejection {
        match d {
            Step::Done(Verdict::Deny(r)) => r,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn read_token_may_get_with_identity_headers() {
        let auth = format!("Bearer {}", testkit::token(&["DomainApi", "read"]));
        let Step::Done(Verdict::Allow(allowed)) = decide(
            "GET",
            "/api/domain/odata/Customers?$top=10",
            &[("authorization", &auth)],
        ) else {
            panic!("denied")
        };
        assert!(allowed
            .set_headers()
            .contains(&("x-erp-client-id".into(), "my.trusted.app/first".into())));
        assert!(allowed
            .set_headers()
            .contains(&("x-erp-token-kind".into(), "jwt".into())));
        assert_eq!(allowed.remove_header, None);
    }

    #[test]
    fn read_token_may_not_post() {
        let auth = format!("Bearer {}", testkit::token(&["read"]));
        assert_eq!(
            denied(decide(
                "POST",
                "/api/domain/odata/Customers",
                &[("authorization", &auth)]
            )),
            Rejection::InsufficientScope {
                required: "update".into()
            }
        );
    }

    #[test]
    fn a_method_not_in_upper_case_is_an_invalid_request() {
        let auth = format!("Bearer {}", testkit::token(&["read", "update"]));
        for method in ["post", "Post", "get", "", "GET "] {
            assert!(
                matches!(
                    denied(decide(method, "/api/domain/x", &[("authorization", &auth)])),
                    Rejection::InvalidRequest(_)
                ),
                "{method:?}"
            );
        }
        assert!(matches!(
            decide("PROPFIND", "/api/domain/x", &[("authorization", &auth)]),
            Step::Done(Verdict::Deny(Rejection::RouteNotAllowed))
        ));
    }

    #[test]
    fn method_and_url_override_headers_are_refused_even_on_public_routes() {
        let auth = format!("Bearer {}", testkit::token(&["read", "update"]));
        for name in [
            "x-http-method-override",
            "X-HTTP-Method",
            "x-method-override",
            "x_http_method_override",
            "x-original-url",
            "x-rewrite-url",
        ] {
            let r = denied(decide(
                "POST",
                "/api/domain/x",
                &[("authorization", &auth), (name, "DELETE")],
            ));
            assert_eq!(r.status(), 400, "{name}");
            assert_eq!(
                denied(decide("GET", "/healthz", &[(name, "/admin")])).status(),
                400,
                "{name}"
            );
        }
    }

    #[test]
    fn unmatched_route_is_refused_before_the_token_is_read() {
        assert_eq!(denied(decide("GET", "/admin", &[])), Rejection::RouteNotAllowed);
    }

    #[test]
    fn public_route_needs_no_credential() {
        assert!(matches!(
            decide("GET", "/healthz", &[]),
            Step::Done(Verdict::Allow(Allowed { identity: None, .. }))
        ));
    }

    #[test]
    fn missing_credential_is_refused() {
        assert_eq!(
            denied(decide("GET", "/api/domain/x", &[])),
            Rejection::MissingCredential
        );
    }

    const PAT: &str = testkit::EXAMPLE_PAT;

    #[test]
    fn reference_tokens_are_refused_when_introspection_is_not_configured() {
        assert!(matches!(
            denied(decide("GET", "/api/domain/x", &[("x-api-key", PAT)])),
            Rejection::InvalidToken(_)
        ));
    }

    fn introspecting() -> Engine {
        Engine::new(testkit::config_from(|d| {
            d["introspection"] = testkit::introspection_json()
        }))
    }

    fn pending(engine: &Engine, method: &str, header: (&str, &str)) -> PendingReference {
        match engine.decide(
            &RequestHead {
                method,
                path: "/api/domain/x",
                headers: &[header],
                has_body: false,
            },
            &engine.config().inline_keys,
            &mut Remembered::new(10, 10),
            NOW,
        ) {
            Step::Introspect(pending) => {
                assert_eq!(pending.token().expose(), PAT);
                pending
            }
            other => panic!("expected introspection, got {other:?}"),
        }
    }

    #[test]
    fn reference_token_in_any_credential_header_is_introspected() {
        let engine = introspecting();
        let bearer = format!("Bearer {PAT}");
        for header in [("authorization", bearer.as_str()), ("x-api-key", PAT), ("api-key", PAT)] {
            let p = pending(&engine, "GET", header);
            assert_eq!(p.hash, secret::hash_token(PAT));
        }
    }

    #[test]
    fn malformed_reference_token_is_refused_without_a_call() {
        let engine = introspecting();
        for token in [
            "enrt_XYZ",
            "enrt_",
            concat!(
                "enrt_",
                "445659C00F83CCA2D427BF113EFB355319346865C0B4FE5A3C76C16271B06AFF",
                "AA"
            ),
        ] {
            let d = engine.decide(
                &RequestHead {
                    method: "GET",
                    path: "/api/domain/x",
                    headers: &[("x-api-key", token)],
                    has_body: false,
                },
                &engine.config().inline_keys,
                &mut Remembered::new(10, 10),
                NOW,
            );
            assert_eq!(
                d,
                Step::Done(Verdict::Deny(Rejection::InvalidToken(TokenProblem::MalformedReference))),
                "{token}"
            );
        }
    }

    /// An introspection answer for client `app` with scope `read`: a user's
    /// token with a subject, a service's without.
    fn reference_principal(subject: Option<&str>, expires_at: u64) -> crate::principal::Principal {
        use crate::principal::{Principal, PrincipalKind};
        Principal {
            kind: if subject.is_some() {
                PrincipalKind::ReferenceUser
            } else {
                PrincipalKind::ReferenceService
            },
            client_id: Some("app".into()),
            subject: subject.map(Into::into),
            client_db: None,
            system_user: None,
            scopes: vec!["read".into()],
            expires_at,
            claims: Vec::new(),
        }
    }

    #[test]
    fn reference_answer_is_checked_against_the_route() {
        let engine = introspecting();
        let answer = Answer::Active(reference_principal(Some("u1"), NOW + 100));
        let get = pending(&engine, "GET", ("x-api-key", PAT));
        let mut references = VerifiedCache::new(10);
        let Verdict::Allow(allowed) = engine.finish_reference(&get, Ok(&answer), &mut references, None) else {
            panic!()
        };
        assert!(allowed
            .set_headers()
            .contains(&("x-erp-token-kind".into(), "reference-user".into())));
        assert!(allowed.set_headers().contains(&("x-erp-subject".into(), "u1".into())));
        let post = pending(&engine, "POST", ("x-api-key", PAT));
        assert_eq!(
            engine.finish_reference(&post, Ok(&answer), &mut references, None),
            Verdict::Deny(Rejection::InsufficientScope {
                required: "update".into()
            })
        );
        assert_eq!(
            engine.finish_reference(&get, Ok(&Answer::Inactive), &mut references, Some(NOW + 10)),
            Verdict::Deny(Rejection::InvalidToken(TokenProblem::Inactive))
        );
        let down = crate::reference::introspection::UNAVAILABLE;
        assert_eq!(
            engine.finish_reference(&get, Err(&down), &mut references, Some(NOW + 10)),
            Verdict::Deny(down.clone())
        );
        assert!(
            references.is_empty(),
            "only active answers the cache keeps are remembered"
        );
    }

    #[test]
    fn a_remembered_reference_answer_skips_the_shared_cache_until_its_expiry() {
        let engine = introspecting();
        let principal = reference_principal(None, NOW + 1000);
        let mut memory = Remembered::new(10, 10);
        let get = pending(&engine, "GET", ("x-api-key", PAT));
        let until = NOW + 30;
        assert!(matches!(
            engine.finish_reference(
                &get,
                Ok(&Answer::Active(principal)),
                &mut memory.references,
                Some(until)
            ),
            Verdict::Allow(_)
        ));
        let request = |method| RequestHead {
            method,
            path: "/api/domain/x",
            headers: &[("x-api-key", PAT)],
            has_body: false,
        };
        let keys = &engine.config().inline_keys;
        let Step::Done(Verdict::Allow(allowed)) = engine.decide(&request("GET"), keys, &mut memory, until) else {
            panic!("not remembered")
        };
        assert_eq!(allowed.principal().and_then(|p| p.client_id.as_deref()), Some("app"));
        assert!(
            matches!(
                engine.decide(&request("POST"), keys, &mut memory, NOW),
                Step::Done(Verdict::Deny(Rejection::InsufficientScope { .. }))
            ),
            "scopes are checked on every request"
        );
        assert!(
            matches!(
                engine.decide(&request("GET"), keys, &mut memory, until + 1),
                Step::Introspect(_)
            ),
            "past the shared entry's expiry, ask again"
        );
    }

    #[test]
    fn a_repeated_jwt_is_verified_once() {
        let engine = testkit::engine();
        let mut verified = Remembered::new(10, 10);
        let auth = format!("Bearer {}", testkit::token(&["read"]));
        let headers = [("authorization", auth.as_str())];
        let request = RequestHead {
            method: "GET",
            path: "/api/domain/x",
            headers: &headers,
            has_body: false,
        };
        assert!(matches!(
            engine.decide(&request, &engine.config().inline_keys, &mut verified, NOW),
            Step::Done(Verdict::Allow(_))
        ));
        assert_eq!(verified.jwts.len(), 1);
        // With no keys at all, only the cache can allow it.
        assert!(matches!(
            engine.decide(&request, &KeySet::default(), &mut verified, NOW),
            Step::Done(Verdict::Allow(_))
        ));
        let post = RequestHead {
            method: "POST",
            ..request
        };
        assert!(
            matches!(
                engine.decide(&post, &engine.config().inline_keys, &mut verified, NOW),
                Step::Done(Verdict::Deny(Rejection::InsufficientScope { .. }))
            ),
            "scopes are checked on every request"
        );
        let later = NOW + 3600 + 61;
        assert!(matches!(
            engine.decide(&request, &engine.config().inline_keys, &mut verified, later),
            Step::Done(Verdict::Deny(Rejection::InvalidToken(TokenProblem::Jwt(
                JwtError::Expired
            ))))
        ));
    }

    #[test]
    fn debug_of_the_configuration_and_pending_steps_shows_no_secret() {
        let engine = introspecting();
        let secret = erp_devstack::idp::INTROSPECTION_SECRET;
        let introspect = engine.decide(
            &RequestHead {
                method: "GET",
                path: "/api/domain/x",
                headers: &[("x-api-key", PAT)],
                has_body: false,
            },
            &engine.config().inline_keys,
            &mut Remembered::new(10, 10),
            NOW,
        );
        let remote = Engine::new(testkit::config_from(|d| {
            d["remote_jwks"] = json!({"cluster": "identity", "authority": "idp"});
        }));
        let jwt = testkit::token_with(|h, _| h["kid"] = json!("rotated"));
        let auth = format!("Bearer {jwt}");
        let await_keys = remote.decide(
            &RequestHead {
                method: "GET",
                path: "/api/domain/x",
                headers: &[("authorization", &auth)],
                has_body: false,
            },
            &remote.config().inline_keys,
            &mut Remembered::new(10, 10),
            NOW,
        );
        assert!(matches!(introspect, Step::Introspect(_)) && matches!(await_keys, Step::AwaitKeys(_)));
        let shown = format!(
            "{:?} {introspect:?} {await_keys:?} {:#?}",
            engine.config(),
            engine.config()
        );
        assert!(!shown.contains(secret), "the client secret is shown");
        assert!(!shown.contains(&PAT[5..]), "the reference token is shown");
        assert!(!shown.contains(&jwt[..20]), "the JWT is shown");
        assert!(shown.contains("Secret("), "redacted, not dropped");
    }

    #[test]
    fn strip_credential_removes_the_header_it_came_in() {
        let engine = Engine::new(testkit::config_from(|d| d["strip_credential"] = json!(true)));
        let token = testkit::token(&["read"]);
        let headers = [("x-api-key", token.as_str())];
        let Step::Done(Verdict::Allow(allowed)) = engine.decide(
            &RequestHead {
                method: "GET",
                path: "/api/domain/x",
                headers: &headers,
                has_body: false,
            },
            &engine.config().inline_keys,
            &mut Remembered::new(10, 10),
            NOW,
        ) else {
            panic!("denied")
        };
        assert_eq!(allowed.remove_header.as_deref(), Some("x-api-key"));
    }
}

mod remote_keys {
    use super::super::*;
    use crate::testing::{self as testkit, NOW};
    use crate::token_problem::TokenProblem;
    use serde_json::json;

    fn remote_engine() -> Engine {
        Engine::new(testkit::config_from(|d| {
            d["remote_jwks"] = json!({"cluster": "identity", "authority": "idp"});
        }))
    }

    fn request(token: &str) -> (String, Vec<(&'static str, String)>) {
        ("GET".into(), vec![("authorization", format!("Bearer {token}"))])
    }

    fn decide(engine: &Engine, token: &str, keys: &KeySet) -> Step {
        let (method, headers) = request(token);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        engine.decide(
            &RequestHead {
                method: &method,
                path: "/api/domain/x",
                headers: &headers,
                has_body: false,
            },
            keys,
            &mut Remembered::new(10, 10),
            NOW,
        )
    }

    #[test]
    fn unknown_kid_waits_for_keys_when_they_come_from_the_identity_service() {
        let engine = remote_engine();
        let token = testkit::token_with(|h, _| h["kid"] = json!("rotated"));
        let Step::AwaitKeys(pending) = decide(&engine, &token, &engine.config().inline_keys) else {
            panic!()
        };
        assert_eq!(
            engine.finish_jwt(
                &pending,
                &engine.config().inline_keys,
                &mut Remembered::new(10, 10),
                NOW
            ),
            Verdict::Deny(Rejection::InvalidToken(TokenProblem::Jwt(JwtError::UnknownKey)))
        );
    }

    #[test]
    fn unknown_kid_is_final_with_inline_keys_only() {
        let engine = testkit::engine();
        let token = testkit::token_with(|h, _| h["kid"] = json!("rotated"));
        assert!(matches!(
            decide(&engine, &token, &engine.config().inline_keys),
            Step::Done(Verdict::Deny(Rejection::InvalidToken(_)))
        ));
    }

    #[test]
    fn no_keys_yet_is_unavailable_not_invalid() {
        let engine = remote_engine();
        let token = testkit::token(&["read"]);
        let d = decide(&engine, &token, &KeySet::default());
        assert!(
            matches!(d, Step::Done(Verdict::Deny(Rejection::Unavailable(_)))),
            "{d:?}"
        );
    }
}
