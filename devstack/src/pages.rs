//! A static file server for the inspector page (`make inspect` and the
//! browser tests): the files of one folder, plus an optional `prefill.json`
//! held in memory, and a record of every path asked for.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::server::{Handler, HttpServer, Request, Response};
use crate::tokens::Error;

/// A running page server.
pub struct Pages {
    server: HttpServer,
    asked: Arc<Mutex<Vec<String>>>,
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

impl Pages {
    /// Serves `dir` on `bind`; `prefill`, when given, is `/prefill.json`.
    pub fn start(bind: &str, dir: PathBuf, prefill: Option<serde_json::Value>) -> Result<Self, Error> {
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = Arc::clone(&asked);
        let handler: Handler = Arc::new(move |request: &Request| {
            let path = request.path().to_owned();
            record.lock().unwrap_or_else(|e| e.into_inner()).push(path.clone());
            let name = if path == "/" {
                "index.html"
            } else {
                path.trim_start_matches('/')
            };
            if name == "prefill.json" {
                if let Some(prefill) = &prefill {
                    return Response::json(200, prefill);
                }
            }
            // One folder, no subfolders, no way out of it.
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Response::bytes(404, "text/plain", b"not found".to_vec());
            }
            let file = dir.join(name);
            match std::fs::read(&file) {
                Ok(bytes) => Response::bytes(200, content_type(&file), bytes),
                Err(_) => Response::bytes(404, "text/plain", b"not found".to_vec()),
            }
        });
        Ok(Self {
            server: HttpServer::start(bind, handler)?,
            asked,
        })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// Every path asked for so far.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What `make inspect` and the browser tests put in the form: the shipped
/// configuration, the emulator's key set and a fresh token with `read`.
pub fn prefill(idp: &crate::idp::Idp) -> Result<serde_json::Value, Error> {
    let config = crate::envoy::shipped_filter_config()?;
    Ok(serde_json::json!({
        "config": serde_json::to_string_pretty(&config)?,
        "jwks": serde_json::to_string_pretty(&idp.jwks())?,
        "token": idp.access_token(&["DomainApi", "read"]),
        "path": "/api/domain/odata/Customers?$top=10",
    }))
}

/// The folder `make inspector` builds the page into.
pub fn inspector_dir() -> PathBuf {
    crate::envoy::repo_root().join("target/inspector")
}
