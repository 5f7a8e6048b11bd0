//! The echo upstream standing in for the Domain API: answers 200 with the
//! method, path and headers it received, and remembers every request so a
//! test can prove what never arrived.

use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use crate::server::{Handler, HttpServer, Request, Response};
use crate::tokens::Error;

/// A running echo server.
pub struct Echo {
    seen: Arc<Mutex<Vec<Request>>>,
    server: HttpServer,
}

impl Echo {
    pub fn start(bind: &str) -> Result<Self, Error> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let handler: Handler = Arc::new(move |request: &Request| {
            log.lock().unwrap_or_else(|e| e.into_inner()).push(request.clone());
            Response::json(200, &describe(request))
        });
        Ok(Self {
            seen,
            server: HttpServer::start(bind, handler)?,
        })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The requests seen so far, forgotten here (a long run reads them as
    /// it goes, so the record never grows).
    pub fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// `{"method", "path", "headers": {name: value}}`; repeated headers joined
/// with `, `.
pub fn describe(request: &Request) -> Value {
    let mut headers = Map::new();
    for (name, value) in &request.headers {
        let name = name.to_ascii_lowercase();
        let joined = match headers.get(&name).and_then(Value::as_str) {
            Some(previous) => format!("{previous}, {value}"),
            None => value.clone(),
        };
        headers.insert(name, Value::String(joined));
    }
    json!({"method": request.method, "path": request.url, "headers": headers})
}
