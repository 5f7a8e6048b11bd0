//! A small HTTP/1.1 server for the emulator and the echo upstream: keep-alive,
//! content-length and chunked bodies, one thread per connection, stopped when dropped;
//! plain or over TLS.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::tokens::Error;

/// What a handler sees of a request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path with query, as sent.
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Header values as the bytes that arrived (`headers` decodes them
    /// lossily).
    pub raw_values: Vec<Vec<u8>>,
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

/// Largest request head and body read.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1 << 20;

/// A running server, one thread per connection (so a burst of keep-alive
/// connections never waits for a free worker). Dropping it stops accepting
/// and closes every open connection, as a killed process would.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// A handle on each open connection, by number, to close them all on
    /// drop; each connection's thread removes its own when it ends.
    open: Arc<Mutex<HashMap<u64, TcpStream>>>,
}

impl HttpServer {
    /// Listens on `bind` (port 0 for a free one), plain HTTP.
    pub fn start(bind: &str, handler: Handler) -> Result<Self, Error> {
        Self::start_with(bind, handler, None)
    }

    /// Listens on `bind`; with `tls`, every connection is HTTPS (a client
    /// that does not complete the handshake is never read from).
    pub fn start_with(bind: &str, handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> Result<Self, Error> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let open: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let connections = Arc::clone(&open);
        let numbers = AtomicU64::new(0);
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let number = numbers.fetch_add(1, Ordering::SeqCst);
                if let Ok(copy) = stream.try_clone() {
                    connections
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(number, copy);
                }
                let connections = Arc::clone(&connections);
                let handler = Arc::clone(&handler);
                let stopping = Arc::clone(&stopping);
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                    let _ = stream.set_nodelay(true);
                    match tls.map(rustls::ServerConnection::new) {
                        None => serve_connection(stream, &handler, &stopping),
                        Some(Ok(connection)) => {
                            serve_connection(rustls::StreamOwned::new(connection, stream), &handler, &stopping)
                        }
                        Some(Err(_)) => {}
                    }
                    // The handle kept for `drop` is a second descriptor of the
                    // socket: without this the connection would stay open,
                    // unserved, after its thread ended.
                    if let Some(handle) = connections.lock().unwrap_or_else(|e| e.into_inner()).remove(&number) {
                        let _ = handle.shutdown(std::net::Shutdown::Both);
                    }
                });
            }
        });
        Ok(Self {
            addr,
            stop,
            accept: Some(accept),
            open,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (_, stream) in self.open.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn serve_connection<S: Read + Write>(mut stream: S, handler: &Handler, stop: &AtomicBool) {
    let mut buffer = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Some((request, keep_alive)) = read_request(&mut stream, &mut buffer) else {
            return;
        };
        let response = handler(&request);
        if write_response(&mut stream, &response, keep_alive).is_err() || !keep_alive {
            return;
        }
    }
}

/// A chunked body (RFC 9112 §7.1) from the start of `buffer`, reading
/// more as needed; its bytes (trailers included) are drained from `buffer`.
fn read_chunked<S: Read>(stream: &mut S, buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut more = |buffer: &mut Vec<u8>| -> Option<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buffer.extend_from_slice(&chunk[..n]);
        Some(())
    };
    loop {
        let (start, size) = match httparse::parse_chunk_size(buffer) {
            Ok(httparse::Status::Complete((start, size))) => (start, usize::try_from(size).ok()?),
            Ok(httparse::Status::Partial) => {
                more(buffer)?;
                continue;
            }
            Err(_) => return None,
        };
        if body.len() + size > MAX_BODY {
            return None;
        }
        // The chunk and its CRLF; the last (empty) one ends with the
        // trailer section's blank line.
        let end = if size == 0 {
            loop {
                if let Some(at) = buffer[start..].windows(2).position(|w| w == b"\r\n") {
                    if at == 0 {
                        break start + 2;
                    }
                    // A trailer field: skip it.
                    buffer.drain(start..start + at + 2);
                    continue;
                }
                more(buffer)?;
            }
        } else {
            while buffer.len() < start + size + 2 {
                more(buffer)?;
            }
            body.extend_from_slice(&buffer[start..start + size]);
            start + size + 2
        };
        buffer.drain(..end);
        if size == 0 {
            return Some(body);
        }
    }
}

/// Reads one request; leftover bytes (a pipelined next request) stay in `buffer`.
fn read_request<S: Read>(stream: &mut S, buffer: &mut Vec<u8>) -> Option<(Request, bool)> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let raw_values: Vec<Vec<u8>> = parsed.headers.iter().map(|h| h.value.to_vec()).collect();
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_str())
                };
                let length: usize = header("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if length > MAX_BODY {
                    return None;
                }
                let keep_alive =
                    parsed.version == Some(1) && !header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let method = parsed.method.unwrap_or("GET").to_owned();
                let url = parsed.path.unwrap_or("/").to_owned();
                let chunked = header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let body = if chunked {
                    buffer.drain(..head_len);
                    read_chunked(stream, buffer)?
                } else {
                    while buffer.len() < head_len + length {
                        let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    let body = buffer[head_len..head_len + length].to_vec();
                    buffer.drain(..head_len + length);
                    body
                };
                return Some((
                    Request {
                        method,
                        url,
                        headers,
                        raw_values,
                        body,
                    },
                    keep_alive,
                ));
            }
            Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD => {
                let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
                buffer.extend_from_slice(&chunk[..n]);
            }
            _ => return None,
        }
    }
}

fn write_response<S: Write>(stream: &mut S, response: &Response, keep_alive: bool) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", response.status, reason(response.status)).into_bytes();
    for (name, value) in &response.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n", response.body.len()).as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.body);
    stream.write_all(&out)?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
