//! The inspector: what the filter does with one request, and what in a
//! configuration is probably not meant, told by the filter's own decision
//! core ([`erp_edge_validator::tools::explain`], [`erp_edge_validator::tools::lint`]).
//!
//! [`inspect`] takes and gives JSON, so the browser page (this crate built
//! for wasm32 with `wasm-bindgen`) and the `erp-edge-validator` command use
//! the same entry point. The page's module imports nothing but what
//! `wasm-bindgen` generates: no host, no network.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use erp_edge_validator::tools::explain::{self, Inputs, Trace};
use erp_edge_validator::tools::lint::{self, Warning};
use serde::{Deserialize, Serialize};

/// What the page sends.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// The filter configuration (JSON text).
    pub config: String,
    /// The key set (JWKS JSON text); empty for none.
    #[serde(default)]
    pub jwks: String,
    /// Seconds since the epoch (the page passes the browser's clock).
    pub now: u64,
    pub method: String,
    pub path: String,
    /// Request headers, one `Name: value` per line.
    #[serde(default)]
    pub headers: String,
    /// A token to send as `Authorization: Bearer` (added to `headers`).
    #[serde(default)]
    pub token: String,
    /// The identity service's introspection answer (JSON text); empty for none.
    #[serde(default)]
    pub introspection_answer: String,
}

/// What the page gets back.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `None` when the inputs are unusable (see `error`).
    pub trace: Option<Trace>,
    pub lint: Vec<Warning>,
    /// A configuration (or input) the filter would refuse, naming the field.
    pub error: Option<String>,
}

/// `Name: value` lines to header pairs, names lower-cased as Envoy gives them.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    text.lines()
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("header line `{line}` has no `:`"))?;
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("header line `{line}` has no valid name"));
            }
            Ok((name.to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect()
}

/// Explains one request and lints its configuration.
pub fn inspect_request(request: &Request) -> Report {
    let lint = lint::lint(request.config.as_bytes()).unwrap_or_default();
    let mut headers = match parse_headers(&request.headers) {
        Ok(headers) => headers,
        Err(e) => return failed(e, lint),
    };
    let token = request.token.trim();
    if !token.is_empty() {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    let jwks = request.jwks.trim();
    let answer = request.introspection_answer.trim();
    let inputs = Inputs {
        config: request.config.as_bytes(),
        jwks: (!jwks.is_empty()).then_some(jwks.as_bytes()),
        now: request.now,
        method: request.method.trim(),
        path: request.path.trim(),
        headers: &headers,
        introspection_answer: (!answer.is_empty()).then_some(answer.as_bytes()),
    };
    match explain::explain(&inputs) {
        Ok(trace) => Report {
            trace: Some(trace),
            lint,
            error: None,
        },
        Err(e) => failed(e.to_string(), lint),
    }
}

fn failed(error: String, lint: Vec<Warning>) -> Report {
    Report {
        trace: None,
        lint,
        error: Some(error),
    }
}

/// [`inspect_request`] from JSON text to JSON text.
pub fn inspect(input: &str) -> String {
    let report = match serde_json::from_str::<Request>(input) {
        Ok(request) => inspect_request(&request),
        Err(e) => failed(format!("the page sent unreadable input: {e}"), Vec::new()),
    };
    serde_json::to_string(&report).unwrap_or_else(|_| r#"{"error":"the report could not be written"}"#.into())
}

/// The browser's entry point.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn inspect_json(input: &str) -> String {
    inspect(input)
}

/// A trace as text, for the command line.
pub fn render(trace: &Trace, method: &str, path: &str) -> String {
    let mut out = String::new();
    let status = trace.status.map_or_else(|| "?".to_owned(), |s| s.to_string());
    let _ = writeln!(out, "{method} {path} -> {status}  {}", trace.summary);
    let width = trace.checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(0);
    for check in &trace.checks {
        let mark = if check.ok { "ok  " } else { "FAIL" };
        let pad = width.saturating_sub(check.name.chars().count());
        let _ = writeln!(out, "  {mark} {}{} {}", check.name, " ".repeat(pad), check.detail);
    }
    if let Some(pending) = &trace.pending {
        let _ = writeln!(out, "  next: {pending}");
    }
    if let Some(challenge) = &trace.www_authenticate {
        let _ = writeln!(out, "WWW-Authenticate: {challenge}");
    }
    for (name, value) in &trace.response_headers {
        let _ = writeln!(out, "{name}: {value}");
    }
    if let Some(body) = &trace.body {
        let _ = writeln!(out, "body: {body}");
    }
    if !trace.upstream_headers.is_empty() {
        let _ = writeln!(out, "upstream gets:");
        for (name, value) in &trace.upstream_headers {
            let _ = writeln!(out, "  {name}: {value}");
        }
    }
    if !trace.removed_headers.is_empty() {
        let _ = writeln!(out, "removed before upstream: {}", trace.removed_headers.join(", "));
    }
    out
}

/// Warnings as text.
pub fn render_lint(warnings: &[Warning]) -> String {
    let mut out = String::new();
    for w in warnings {
        let _ = writeln!(out, "warning: {}: {}", w.field, w.message);
    }
    out
}

/// The `--json` form of a trace: the trace's fields, with `status` and the
/// others always present.
pub fn trace_json(trace: &Trace) -> serde_json::Value {
    let upstream: BTreeMap<&String, &String> = trace.upstream_headers.iter().collect();
    serde_json::json!({
        "status": trace.status,
        "allowed": trace.allowed,
        "www_authenticate": trace.www_authenticate,
        "body": trace.body,
        "response_headers": trace.response_headers,
        "upstream_headers": upstream,
        "removed_headers": trace.removed_headers,
        "route_index": trace.route_index,
        "route": trace.route,
        "checks": trace.checks,
        "pending": trace.pending,
        "summary": trace.summary,
    })
}
