//! `make verify-costs`: what one signature verification costs the filter's
//! code in V8, for every algorithm it verifies in the module. The decision
//! core, built for the browser (`make inspector`), runs in node's V8: each
//! algorithm's valid token is explained against one whose `kid` is unknown
//! (refused before any signature work), in alternating rounds; `explain`
//! verifies a valid token twice (the decision and its narration), so the
//! cost of one verification is half the difference of the medians.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::envoy::{repo_root, shipped_filter_config};
use crate::tokens::{self, CurveKey, Error, SigningKey};

const SCRIPT: &str = r#"
import { readFileSync } from 'node:fs';
const [inspector, wasm, inputs] = process.argv.slice(2);
const { initSync, inspect_json } = await import(inspector);
initSync({ module: readFileSync(wasm) });
const cases = JSON.parse(readFileSync(inputs, 'utf8'));
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[s.length >> 1]; };
const time = (input, n) => {
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) inspect_json(input);
  return Number(process.hrtime.bigint() - start) / 1000 / n;
};
const out = [];
for (const c of cases) {
  const ok = JSON.parse(inspect_json(c.valid));
  if (!ok.trace || !ok.trace.allowed) throw new Error(`${c.alg}: the valid token was not allowed: ${JSON.stringify(ok).slice(0, 300)}`);
  for (let i = 0; i < 30; i++) { inspect_json(c.valid); inspect_json(c.baseline); }
  const valid = [], baseline = [];
  for (let round = 0; round < 15; round++) {
    valid.push(time(c.valid, 20));
    baseline.push(time(c.baseline, 20));
  }
  out.push({ alg: c.alg, valid: median(valid), baseline: median(baseline) });
}
console.log(JSON.stringify(out));
"#;

fn input(config: &Value, jwks: &Value, token: &str) -> String {
    json!({
        "config": config.to_string(),
        "jwks": jwks.to_string(),
        "now": tokens::now(),
        "method": "GET",
        "path": "/api/domain/odata/Customers",
        "token": token,
    })
    .to_string()
}

fn rsa_token(key: &SigningKey, alg: &str, kid: &str) -> Result<String, Error> {
    let header = json!({"alg": alg, "kid": kid, "typ": "at+jwt"});
    let claims = tokens::claims(tokens::now(), &["read"]);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign_as(alg, input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// Runs the measurement and prints a table (also returned).
pub fn run() -> Result<String, Error> {
    let dir = repo_root().join("target/inspector");
    let (inspector, wasm) = (dir.join("inspector.js"), dir.join("inspector_bg.wasm"));
    if !wasm.exists() {
        return Err(format!("{} not found: run `make inspector`", wasm.display()).into());
    }
    let rsa = SigningKey::generate("rsa", 2048)?;
    let curves = [
        CurveKey::p256("p256", "verify-costs")?,
        CurveKey::p384("p384", "verify-costs")?,
        CurveKey::p521("p521", "verify-costs")?,
        CurveKey::ed25519("ed25519", "verify-costs"),
    ];
    let mut cases = Vec::new();
    let base = shipped_filter_config()?;
    let mut add = |alg: &str, jwk: Value, valid: String, unknown: String| {
        let mut config = base.clone();
        config["algorithms"] = json!([alg]);
        config["remote_jwks"] = Value::Null;
        config["introspection"] = Value::Null;
        config["access_log_fields"] = json!(false);
        let jwks = json!({"keys": [jwk]});
        config["jwks"] = jwks.clone();
        cases.push(
            json!({"alg": alg, "valid": input(&config, &jwks, &valid), "baseline": input(&config, &jwks, &unknown)}),
        );
    };
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let mut jwk = rsa.jwk();
        jwk["alg"] = json!(alg);
        add(alg, jwk, rsa_token(&rsa, alg, "rsa")?, rsa_token(&rsa, alg, "unknown")?);
    }
    for key in &curves {
        let claims = tokens::claims(tokens::now(), &["read"]);
        let mut other = key.header();
        other["kid"] = json!("unknown");
        add(
            key.alg(),
            key.jwk(),
            key.sign(&key.header(), &claims),
            key.sign(&other, &claims),
        );
    }
    let work = std::env::temp_dir().join(format!("erp-verify-costs-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (script, inputs) = (work.join("measure.mjs"), work.join("inputs.json"));
    std::fs::write(&script, SCRIPT)?;
    std::fs::write(&inputs, serde_json::to_vec(&cases)?)?;
    let url = |p: &Path| format!("file://{}", p.display());
    let out = Command::new("node")
        .arg(&script)
        .arg(url(&inspector))
        .arg(&wasm)
        .arg(&inputs)
        .output()
        .map_err(|e| format!("node: {e}"))?;
    let _ = std::fs::remove_dir_all(&work);
    if !out.status.success() {
        return Err(format!("node failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let results: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let mut table = String::from(
        "One signature verification in V8 (node), the module's code, RSA-2048 / P-256 / P-384 / P-521 / Ed25519:\n\n\
         | algorithm | µs per verification | verifications per second per worker |\n|---|---:|---:|\n",
    );
    for r in &results {
        let cost = ((r["valid"].as_f64().unwrap_or(0.0) - r["baseline"].as_f64().unwrap_or(0.0)) / 2.0).max(0.0);
        let per_second = if cost > 0.0 { 1e6 / cost } else { f64::INFINITY };
        let _ = writeln!(
            table,
            "| {} | {cost:.0} | {per_second:.0} |",
            r["alg"].as_str().unwrap_or("?")
        );
    }
    print!("{table}");
    Ok(table)
}
