//! A small threaded HTTP/1.1 server on tiny_http, stopped when dropped.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::tokens::Error;

/// What a handler sees of a request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path with query, as sent.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// First value of a header, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or_default()
    }
}

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::bytes(status, "application/json", value.to_string().into_bytes())
    }

    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body,
        }
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Largest request body read; more is cut (the emulator is not a sink).
const MAX_BODY: u64 = 1 << 20;

/// A running server; dropping it stops it and joins its threads.
pub struct HttpServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `bind` (port 0 for a free one) with `threads` workers.
    pub fn start(bind: &str, threads: usize, handler: Handler) -> Result<Self, Error> {
        let server = Arc::new(tiny_http::Server::http(bind)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or("the server is not on an IP socket")?;
        let workers = (0..threads.max(1))
            .map(|_| {
                let server = Arc::clone(&server);
                let handler = Arc::clone(&handler);
                std::thread::spawn(move || {
                    while let Ok(request) = server.recv() {
                        serve(request, &handler);
                    }
                })
            })
            .collect();
        Ok(Self {
            addr,
            server,
            workers,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn serve(mut request: tiny_http::Request, handler: &Handler) {
    let mut body = Vec::new();
    let _ = request.as_reader().take(MAX_BODY).read_to_end(&mut body);
    let seen = Request {
        method: request.method().as_str().to_owned(),
        url: request.url().to_owned(),
        headers: request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_owned(),
                    h.value.as_str().to_owned(),
                )
            })
            .collect(),
        body,
    };
    let answer = handler(&seen);
    let mut response = tiny_http::Response::from_data(answer.body).with_status_code(answer.status);
    for (name, value) in answer.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    let _ = request.respond(response);
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
