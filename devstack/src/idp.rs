//! An ERP.net identity service emulator: a real HTTP server on loopback.
//!
//! | path | what |
//! |---|---|
//! | `GET /id/.well-known/openid-configuration` | discovery |
//! | `GET /id/.well-known/openid-configuration/jwks` | the published signing keys |
//! | `POST /id/connect/token` | client_credentials grant: RS256 `at+jwt` access tokens |
//! | `POST /id/connect/introspect` | RFC 7662 introspection, HTTP Basic client auth |
//! | `POST /admin/reference-tokens` | issue a PAT or SAT: `{"kind":"pat"\|"sat","scopes":[..],"expires_in":s}` |
//! | `POST /admin/reference-tokens/revoke` | `{"token":"enrt_..."}` |
//! | `POST /admin/keys/rotate` | sign with a new key, keep publishing the old ones |
//! | `POST /admin/keys/retire` | stop publishing every key but the signing one |
//! | `POST /admin/faults` | `{"introspection": fault, "jwks": fault}`, see [`Fault`] |
//! | `GET /admin/stats` | counters of requests served |
//!
//! Tests call the same operations directly on [`Idp`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::server::{Handler, HttpServer, Request, Response};
use crate::tokens::{self, Error, SigningKey};

/// Client authentication the filter uses at the introspection endpoint
/// (the API resource `DomainAPI`).
pub const INTROSPECTION_CLIENT: &str = "erp-edge-validator";
pub const INTROSPECTION_SECRET: &str = "edge-introspection-secret";
/// A second API resource, for tests of two APIs behind one Envoy.
pub const TABLE_API_CLIENT: &str = "table-api-validator";
pub const TABLE_API_SECRET: &str = "table-introspection-secret";

/// API resources allowed to introspect: client id, secret, resource name.
/// As with IdentityServer, a token is `active` only to a resource it was
/// issued for.
const RESOURCES: [(&str, &str, &str); 2] = [
    (INTROSPECTION_CLIENT, INTROSPECTION_SECRET, "DomainAPI"),
    (TABLE_API_CLIENT, TABLE_API_SECRET, "TableAPI"),
];

/// The trusted app the token endpoint knows (as in ERP.net's docs).
pub const CLIENT_ID: &str = "my.trusted.app/first";
pub const CLIENT_SECRET: &str = "my-plain-app-secret";
/// Scopes the trusted app may ask for; all of them when it names none.
pub const CLIENT_SCOPES: &[&str] = &["DomainApi", "read", "update", "sec"];

/// How an endpoint misbehaves on demand.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    /// Answer properly.
    #[default]
    None,
    /// Wait this long, then answer properly.
    Slow(Duration),
    /// Answer with this status and a small JSON error.
    Status(u16),
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Answer 200 with a JSON body of this many bytes.
    Oversized(usize),
    /// Answer 200 with valid JSON that lacks the fields a peer needs.
    Incomplete,
}

impl Fault {
    /// `ok`, `slow:MS`, `status:N`, `garbage`, `oversized:BYTES`, `incomplete`.
    pub fn parse(text: &str) -> Option<Self> {
        let (name, arg) = text.split_once(':').unwrap_or((text, ""));
        Some(match name {
            "ok" | "none" => Self::None,
            "slow" => Self::Slow(Duration::from_millis(arg.parse().ok()?)),
            "status" => Self::Status(arg.parse().ok()?),
            "garbage" => Self::Garbage,
            "oversized" => Self::Oversized(arg.parse().ok()?),
            "incomplete" => Self::Incomplete,
            _ => return None,
        })
    }
}

/// PAT (acts as a user) or SAT (acts as a trusted app's system user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceKind {
    Pat,
    Sat,
}

#[derive(Debug, Clone)]
struct ReferenceToken {
    kind: ReferenceKind,
    scopes: Vec<String>,
    /// API resources the token is for.
    audiences: Vec<String>,
    expires_at: u64,
    revoked: bool,
}

/// Counters of what the emulator served.
#[derive(Debug, Default)]
pub struct Stats {
    pub introspections: AtomicU64,
    pub jwks_requests: AtomicU64,
    pub token_requests: AtomicU64,
}

struct State {
    /// Published keys; the last one signs.
    keys: Vec<SigningKey>,
    /// Published after them: ES256 and EdDSA keys, as JWKs.
    curve_keys: Vec<Value>,
    next_kid: u32,
    reference_tokens: HashMap<String, ReferenceToken>,
    introspection_fault: Fault,
    jwks_fault: Fault,
    /// Answer `active` to any resource (an identity service that does not
    /// check), with the token's `aud`, so the filter's own check shows.
    lenient_resources: bool,
}

struct Shared {
    state: Mutex<State>,
    stats: Stats,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running emulator; dropping it stops the server.
pub struct Idp {
    shared: Arc<Shared>,
    server: Mutex<Option<HttpServer>>,
    addr: std::net::SocketAddr,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl Idp {
    /// Starts on `bind` (`127.0.0.1:0` for a free port) with one fresh key,
    /// plain HTTP: a development setting only.
    pub fn start(bind: &str) -> Result<Self, Error> {
        Self::start_with(bind, None)
    }

    /// Starts serving HTTPS with this server configuration.
    pub fn start_tls(bind: &str, tls: std::sync::Arc<rustls::ServerConfig>) -> Result<Self, Error> {
        Self::start_with(bind, Some(tls))
    }

    fn start_with(bind: &str, tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> Result<Self, Error> {
        let key = SigningKey::generate("key-1", 2048)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                keys: vec![key],
                curve_keys: Vec::new(),
                next_kid: 2,
                reference_tokens: HashMap::new(),
                introspection_fault: Fault::None,
                jwks_fault: Fault::None,
                lenient_resources: false,
            }),
            stats: Stats::default(),
        });
        let server = serve(&shared, bind, tls.clone())?;
        Ok(Self {
            shared,
            addr: server.addr(),
            server: Mutex::new(Some(server)),
            tls,
        })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops serving, as a killed process would: the port refuses
    /// connections and open ones are closed. Keys and tokens are kept.
    pub fn stop(&self) {
        drop(self.server.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Serves again on the same address after [`Idp::stop`].
    pub fn restart(&self) -> Result<(), Error> {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if server.is_none() {
            *server = Some(serve(&self.shared, &self.addr.to_string(), self.tls.clone())?);
        }
        Ok(())
    }

    /// The published JWKS.
    pub fn jwks(&self) -> Value {
        published(&self.shared.state())
    }

    /// Publishes another key (ES256, EdDSA) beside the RSA keys; tests sign
    /// with it themselves.
    pub fn publish_curve_key(&self, key: &tokens::CurveKey) {
        self.shared.state().curve_keys.push(key.jwk());
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> SigningKey {
        signing_key(&self.shared.state())
    }

    /// A fresh access token for the trusted app with these scopes.
    pub fn access_token(&self, scopes: &[&str]) -> String {
        let key = self.signing_key();
        tokens::sign(&tokens::header(&key.kid), &tokens::claims(tokens::now(), scopes), &key)
    }

    /// Issues a PAT or SAT for the Domain API, valid for `expires_in` seconds.
    pub fn issue_reference(&self, kind: ReferenceKind, scopes: &[&str], expires_in: u64) -> String {
        self.issue_reference_for(kind, scopes, expires_in, &["DomainAPI"])
    }

    /// Issues a PAT or SAT for these API resources.
    pub fn issue_reference_for(
        &self,
        kind: ReferenceKind,
        scopes: &[&str],
        expires_in: u64,
        audiences: &[&str],
    ) -> String {
        issue_reference(
            &self.shared,
            kind,
            scopes.iter().map(|s| (*s).to_owned()).collect(),
            expires_in,
            audiences.iter().map(|s| (*s).to_owned()).collect(),
        )
    }

    /// Whether `active` is answered to resources a token was not issued for.
    pub fn set_lenient_resources(&self, lenient: bool) {
        self.shared.state().lenient_resources = lenient;
    }

    pub fn revoke(&self, token: &str) -> bool {
        revoke(&self.shared, token)
    }

    /// Starts signing with a new key; the old ones stay published.
    pub fn rotate(&self) -> Result<String, Error> {
        rotate(&self.shared)
    }

    /// Stops publishing every key but the signing one.
    pub fn retire_old_keys(&self) {
        retire(&self.shared);
    }

    pub fn set_introspection_fault(&self, fault: Fault) {
        self.shared.state().introspection_fault = fault;
    }

    pub fn set_jwks_fault(&self, fault: Fault) {
        self.shared.state().jwks_fault = fault;
    }

    pub fn introspections(&self) -> u64 {
        self.shared.stats.introspections.load(Ordering::SeqCst)
    }

    pub fn jwks_requests(&self) -> u64 {
        self.shared.stats.jwks_requests.load(Ordering::SeqCst)
    }
}

fn serve(shared: &Arc<Shared>, bind: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Result<HttpServer, Error> {
    let handler_state = Arc::clone(shared);
    let handler: Handler = Arc::new(move |request| handle(&handler_state, request));
    HttpServer::start_with(bind, handler, tls)
}

fn signing_key(state: &State) -> SigningKey {
    // `keys` is never empty: retire keeps the signing key.
    state.keys[state.keys.len() - 1].clone()
}

fn issue_reference(
    shared: &Shared,
    kind: ReferenceKind,
    scopes: Vec<String>,
    expires_in: u64,
    audiences: Vec<String>,
) -> String {
    let token = format!("enrt_{}", tokens::random_hex(32));
    shared.state().reference_tokens.insert(
        token.clone(),
        ReferenceToken {
            kind,
            scopes,
            audiences,
            expires_at: tokens::now() + expires_in,
            revoked: false,
        },
    );
    token
}

fn revoke(shared: &Shared, token: &str) -> bool {
    match shared.state().reference_tokens.get_mut(token) {
        Some(t) => {
            t.revoked = true;
            true
        }
        None => false,
    }
}

fn rotate(shared: &Shared) -> Result<String, Error> {
    let kid = {
        let mut state = shared.state();
        let kid = format!("key-{}", state.next_kid);
        state.next_kid += 1;
        kid
    };
    let key = SigningKey::generate(&kid, 2048)?;
    shared.state().keys.push(key);
    Ok(kid)
}

fn retire(shared: &Shared) {
    let mut state = shared.state();
    let last = signing_key(&state);
    state.keys = vec![last];
}

fn handle(shared: &Shared, request: &Request) -> Response {
    let result = match (request.method.as_str(), request.path()) {
        ("GET", "/id/.well-known/openid-configuration") => Ok(discovery(request)),
        ("GET", "/id/.well-known/openid-configuration/jwks") => Ok(jwks(shared)),
        ("POST", "/id/connect/token") => token_endpoint(shared, request),
        ("POST", "/id/connect/introspect") => Ok(introspect(shared, request)),
        ("POST", "/admin/reference-tokens") => admin_issue(shared, request),
        ("POST", "/admin/reference-tokens/revoke") => admin_revoke(shared, request),
        ("POST", "/admin/keys/rotate") => rotate(shared).map(|kid| Response::json(200, &json!({"signing_kid": kid}))),
        ("POST", "/admin/keys/retire") => {
            retire(shared);
            Ok(Response::json(200, &json!({"published": shared.state().keys.len()})))
        }
        ("POST", "/admin/faults") => admin_faults(shared, request),
        ("GET", "/admin/stats") => Ok(Response::json(
            200,
            &json!({
                "introspections": shared.stats.introspections.load(Ordering::SeqCst),
                "jwks_requests": shared.stats.jwks_requests.load(Ordering::SeqCst),
                "token_requests": shared.stats.token_requests.load(Ordering::SeqCst),
            }),
        )),
        _ => Ok(Response::json(404, &json!({"error": "not_found"}))),
    };
    result.unwrap_or_else(|e| {
        Response::json(
            400,
            &json!({"error": "invalid_request", "error_description": e.to_string()}),
        )
    })
}

fn discovery(request: &Request) -> Response {
    let host = request.header("host").unwrap_or("127.0.0.1");
    let base = format!("https://{host}/id");
    Response::json(
        200,
        &json!({
            "issuer": tokens::ISSUER,
            "jwks_uri": format!("{base}/.well-known/openid-configuration/jwks"),
            "token_endpoint": format!("{base}/connect/token"),
            "introspection_endpoint": format!("{base}/connect/introspect"),
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": CLIENT_SCOPES,
            "id_token_signing_alg_values_supported": ["RS256"],
        }),
    )
}

/// Applies a fault; `None` means answer normally.
fn faulty(fault: &Fault) -> Option<Response> {
    match fault {
        Fault::None | Fault::Incomplete => None,
        Fault::Slow(delay) => {
            std::thread::sleep(*delay);
            None
        }
        Fault::Status(status) => Some(Response::json(*status, &json!({"error": "server_error"}))),
        Fault::Garbage => Some(Response::bytes(
            200,
            "text/html",
            b"<html>upstream error</html>".to_vec(),
        )),
        Fault::Oversized(bytes) => Some(Response::json(
            200,
            &json!({"active": true, "padding": "x".repeat(*bytes)}),
        )),
    }
}

fn jwks(shared: &Shared) -> Response {
    shared.stats.jwks_requests.fetch_add(1, Ordering::SeqCst);
    let (fault, body) = {
        let state = shared.state();
        (state.jwks_fault.clone(), published(&state))
    };
    if let Some(response) = faulty(&fault) {
        return response;
    }
    if fault == Fault::Incomplete {
        return Response::json(200, &json!({"keys": []}));
    }
    Response::json(200, &body)
}

/// The JWKS document: the RSA keys, then the curve keys.
fn published(state: &State) -> Value {
    let mut doc = tokens::jwks(state.keys.iter());
    if let Some(keys) = doc["keys"].as_array_mut() {
        keys.extend(state.curve_keys.iter().cloned());
    }
    doc
}

fn form(request: &Request) -> HashMap<String, String> {
    form_urlencoded::parse(&request.body).into_owned().collect()
}

fn token_endpoint(shared: &Shared, request: &Request) -> Result<Response, Error> {
    shared.stats.token_requests.fetch_add(1, Ordering::SeqCst);
    let form = form(request);
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some("client_credentials") {
        return Ok(Response::json(400, &json!({"error": "unsupported_grant_type"})));
    }
    let (id, secret) = match basic_credentials(request) {
        Some(pair) => pair,
        None => (
            field("client_id").unwrap_or_default().to_owned(),
            field("client_secret").unwrap_or_default().to_owned(),
        ),
    };
    if id != CLIENT_ID || secret != CLIENT_SECRET {
        return Ok(Response::json(401, &json!({"error": "invalid_client"})));
    }
    let requested: Vec<&str> =
        field("scope").map_or_else(|| CLIENT_SCOPES.to_vec(), |s| s.split_ascii_whitespace().collect());
    if let Some(bad) = requested.iter().find(|s| !CLIENT_SCOPES.contains(s)) {
        return Ok(Response::json(
            400,
            &json!({"error": "invalid_scope", "error_description": format!("unknown scope {bad}")}),
        ));
    }
    let key = signing_key(&shared.state());
    let token = tokens::sign(
        &tokens::header(&key.kid),
        &tokens::claims(tokens::now(), &requested),
        &key,
    );
    Ok(Response::json(
        200,
        &json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer", "scope": requested.join(" ")}),
    ))
}

fn basic_credentials(request: &Request) -> Option<(String, String)> {
    let value = request.header("authorization")?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

fn introspect(shared: &Shared, request: &Request) -> Response {
    shared.stats.introspections.fetch_add(1, Ordering::SeqCst);
    let fault = shared.state().introspection_fault.clone();
    if let Some(response) = faulty(&fault) {
        return response;
    }
    let resource = match basic_credentials(request) {
        Some((id, secret)) => RESOURCES
            .iter()
            .find(|(i, s, _)| *i == id && *s == secret)
            .map(|(_, _, resource)| *resource),
        None => None,
    };
    let Some(resource) = resource else {
        return Response::json(401, &json!({"error": "invalid_client"}));
    };
    if fault == Fault::Incomplete {
        return Response::json(200, &json!({"scope": "read"}));
    }
    let form = form(request);
    let Some(token) = form.get("token") else {
        return Response::json(400, &json!({"error": "invalid_request"}));
    };
    let now = tokens::now();
    let state = shared.state();
    let for_caller = |t: &ReferenceToken| state.lenient_resources || t.audiences.iter().any(|a| a == resource);
    let Some(t) = state
        .reference_tokens
        .get(token)
        .filter(|t| !t.revoked && t.expires_at > now && for_caller(t))
    else {
        return Response::json(200, &json!({"active": false}));
    };
    let mut answer = json!({
        "active": true,
        "token_type": "Bearer",
        "scope": t.scopes.join(" "),
        "exp": t.expires_at,
        "iat": now,
        "iss": tokens::ISSUER,
        "aud": t.audiences,
        "client_id": CLIENT_ID,
        "client_db": "E1_DEV",
    });
    match t.kind {
        ReferenceKind::Pat => answer["sub"] = json!("user-7f3a"),
        ReferenceKind::Sat => answer["client_system_user"] = json!("integration@erp.test"),
    }
    Response::json(200, &answer)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    kind: ReferenceKind,
    scopes: Vec<String>,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
    /// API resources; default `["DomainAPI"]`.
    #[serde(default = "default_audiences")]
    audiences: Vec<String>,
}

fn default_audiences() -> Vec<String> {
    vec!["DomainAPI".into()]
}

fn default_expires_in() -> u64 {
    86_400
}

fn admin_issue(shared: &Shared, request: &Request) -> Result<Response, Error> {
    let issue: IssueRequest = serde_json::from_slice(&request.body)?;
    let token = issue_reference(shared, issue.kind, issue.scopes, issue.expires_in, issue.audiences);
    Ok(Response::json(200, &json!({"token": token})))
}

fn admin_revoke(shared: &Shared, request: &Request) -> Result<Response, Error> {
    let body: Value = serde_json::from_slice(&request.body)?;
    let token = body["token"].as_str().ok_or("give {\"token\": \"enrt_...\"}")?;
    let revoked = revoke(shared, token);
    Ok(Response::json(
        if revoked { 200 } else { 404 },
        &json!({"revoked": revoked}),
    ))
}

fn admin_faults(shared: &Shared, request: &Request) -> Result<Response, Error> {
    let body: HashMap<String, String> = serde_json::from_slice(&request.body)?;
    let mut state = shared.state();
    for (endpoint, text) in &body {
        let fault = Fault::parse(text).ok_or_else(|| format!("unknown fault `{text}`"))?;
        match endpoint.as_str() {
            "introspection" => state.introspection_fault = fault,
            "jwks" => state.jwks_fault = fault,
            other => return Err(format!("unknown endpoint `{other}`").into()),
        }
    }
    Ok(Response::json(200, &json!({"ok": true})))
}
