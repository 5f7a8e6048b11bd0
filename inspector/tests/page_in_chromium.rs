//! The inspector page in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `make test` installs), driven over WebDriver:
//! an allowed request, a 403 naming the missing scope, an expired token
//! saying how long ago it expired, lint warnings, and no request beyond the
//! page's own files. It saves a screenshot (`target/inspector/screenshot.png`;
//! docs/inspector.md shows a copy, `docs/inspector.png`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use erp_devstack::client;
use erp_devstack::idp::Idp;
use erp_devstack::pages::{self, Pages};
use serde_json::{json, Value};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// chromedriver and one session; both ended when dropped, even on failure.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    profile: std::path::PathBuf,
}

impl Browser {
    fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (make test installs Debian's chromium-driver)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready =
            || client::request(addr, "GET", "/status", &[], b"").is_ok_and(|r| r.json()["value"]["ready"] == true);
        while !ready() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = std::env::temp_dir().join(format!("erp-inspector-chromium-{}-{port}", std::process::id()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1050",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            profile,
        };
        let created = browser.call("POST", "/session", &capabilities);
        browser.session = created["value"]["sessionId"].as_str().expect("a session").to_owned();
        browser
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = client::request(
            self.addr,
            method,
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        let value = r.json();
        assert!(r.status == 200, "{method} {path}: {} {value}", r.status);
        value
    }

    fn session(&self, method: &str, path: &str, body: &Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)["value"].clone()
    }

    fn run(&self, script: &str) -> Value {
        self.session("POST", "/execute/sync", &json!({"script": script, "args": []}))
    }

    /// Sets form fields (id → value) and presses Explain; returns what the
    /// page shows.
    fn explain(&self, fields: &Value) -> Value {
        let script = format!(
            "const f = {fields};
             for (const [id, v] of Object.entries(f)) document.getElementById(id).value = v;
             document.getElementById('explain').click();
             return {{
               verdict: document.getElementById('verdict').textContent,
               failed: [...document.querySelectorAll('#checks li.failed')].map(li => li.dataset.check + ': ' + li.textContent),
               checks: [...document.querySelectorAll('#checks li')].map(li => li.dataset.check),
               response: document.getElementById('response').textContent,
               upstream: document.getElementById('upstream').textContent,
               warnings: [...document.querySelectorAll('#warnings li')].map(li => li.dataset.field).filter(Boolean),
               error: document.getElementById('error').textContent
             }};"
        );
        self.run(&script)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = client::request(self.addr, "DELETE", &path, &[], b"");
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[test]
fn the_page_explains_decisions_offline_in_chromium() {
    let dir = pages::inspector_dir();
    assert!(dir.join("inspector_bg.wasm").exists(), "run `make inspector` first");
    let idp = Idp::start("127.0.0.1:0").unwrap();
    let prefill = pages::prefill(&idp).unwrap();
    let token = prefill["token"].as_str().unwrap().to_owned();
    let server = Pages::start("127.0.0.1:0", dir.clone(), Some(prefill)).unwrap();
    let origin = format!("http://{}", server.addr());
    let browser = Browser::start();
    browser.session("POST", "/url", &json!({"url": format!("{origin}/")}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while browser.run("return window.inspectorReady === true;") != json!(true) {
        assert!(Instant::now() < deadline, "the page did not load its module");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The prefilled token has `read`: a GET passes.
    let shown = browser.explain(&json!({"method": "GET"}));
    assert!(shown["verdict"].as_str().unwrap().starts_with("200"), "{shown}");
    assert_eq!(shown["failed"], json!([]), "{shown}");
    assert!(
        shown["upstream"]
            .as_str()
            .unwrap()
            .contains("x-erp-client-id: my.trusted.app/first"),
        "{shown}"
    );

    // A POST needs `update`: 403, and the failing check names it.
    let shown = browser.explain(&json!({"method": "POST"}));
    assert!(shown["verdict"].as_str().unwrap().starts_with("403"), "{shown}");
    let failed = shown["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{shown}");
    assert!(failed[0].as_str().unwrap().starts_with("scopes") && failed[0].as_str().unwrap().contains("update"));
    assert!(
        shown["response"].as_str().unwrap().contains("insufficient_scope"),
        "{shown}"
    );

    // Two hours later the token (valid one hour) expired an hour ago.
    let later = erp_devstack::tokens::now() + 2 * 3600;
    let shown = browser.explain(&json!({"method": "GET", "now": later.to_string()}));
    assert!(shown["verdict"].as_str().unwrap().starts_with("401"), "{shown}");
    let failed = shown["failed"][0].as_str().unwrap();
    assert!(failed.starts_with("exp") && failed.contains("ago"), "{failed}");
    assert!(failed.contains("59 min") || failed.contains("1 h 0 min"), "{failed}");

    // Lint warnings name the field.
    let shown_config = browser.run("return document.getElementById('config').value;");
    let config: Value = serde_json::from_str(shown_config.as_str().unwrap()).unwrap();
    let mut risky = config.clone();
    risky["unmatched_routes"] = json!("authenticated");
    risky["require_at_jwt_typ"] = json!(false);
    let shown = browser.explain(&json!({"now": "", "config": risky.to_string()}));
    assert_eq!(
        shown["warnings"],
        json!(["unmatched_routes", "require_at_jwt_typ"]),
        "{shown}"
    );

    // Back to the shipped configuration and the allowed request for the picture.
    let shown = browser
        .explain(&json!({"method": "POST", "config": serde_json::to_string_pretty(&config).unwrap(), "token": token}));
    assert!(shown["verdict"].as_str().unwrap().starts_with("403"), "{shown}");
    let png = browser.session("GET", "/screenshot", &Value::Null);
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(dir.join("screenshot.png"), &png).unwrap();

    // Nothing left the page: every resource came from its own origin, and
    // the server saw only the page's own files.
    let resources = browser.run("return performance.getEntriesByType('resource').map(e => e.name);");
    for name in resources.as_array().unwrap() {
        assert!(name.as_str().unwrap().starts_with(&origin), "the page fetched {name}");
    }
    let own = ["/", "/app.js", "/inspector.js", "/inspector_bg.wasm", "/prefill.json"];
    for path in server.asked() {
        assert!(own.contains(&path.as_str()), "the page asked for {path}");
    }
}
