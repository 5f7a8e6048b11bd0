//! `make soak`: real Envoy (two workers), the identity emulator and the echo
//! upstream under a paced mixed load for `SOAK_SECONDS`, while the identity
//! service is slowed, made to fail, to answer garbage, stopped and started,
//! and its signing key is rotated and the old one retired.
//!
//! Every request carries `x-soak-id`; the echo's own record of what arrived
//! is read as the run goes, so a request that reached the upstream without
//! a valid credential is found by id. At the end one table: statuses per
//! class against what the class allows (in calm times and while a fault it
//! depends on is on, plus two seconds), requests upstream without a valid
//! credential, VM restarts, Envoy's allocated memory after warm-up, midway
//! and at the end, latency per class, and the identity-service calls
//! against what the cache settings allow. Any broken bound is a violation.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;

use crate::client;
use crate::envoy::{EnvoyOptions, Host};
use crate::idp::{Fault, ReferenceKind};
use crate::stack::{Stack, StackOptions};
use crate::tokens::{self, Error, SigningKey};

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub seconds: u64,
    /// Requests per second, all classes together.
    pub rate: u32,
    /// Client threads.
    pub threads: usize,
}

impl SoakOptions {
    /// `SOAK_SECONDS` (600), `SOAK_RATE` (300).
    pub fn from_env() -> Result<Self, Error> {
        let number = |name: &str, default: u64| -> Result<u64, Error> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name} must be a number, not `{v}`").into()),
                Err(_) => Ok(default),
            }
        };
        let seconds = number("SOAK_SECONDS", 600)?;
        if seconds < 30 {
            return Err("SOAK_SECONDS must be at least 30 (the fault schedule needs room)".into());
        }
        Ok(Self {
            seconds,
            rate: u32::try_from(number("SOAK_RATE", 300)?).unwrap_or(u32::MAX).max(10),
            threads: 8,
        })
    }
}

/// The filter settings the soak runs with: the shipped configuration, keys
/// refreshed every 5 s (so rotation and retirement are seen within the
/// run) and small caches (so they are full early and memory can plateau).
fn filter_patch() -> serde_json::Value {
    json!({
        "remote_jwks": {"refresh_seconds": REFRESH_SECONDS, "unknown_kid_cooldown_seconds": COOLDOWN_SECONDS},
        "jwt_cache_max_entries": 256,
        "introspection": {"cache_max_entries": 256, "cache_max_ttl_seconds": TTL_SECONDS}
    })
}

const REFRESH_SECONDS: u64 = 5;
const COOLDOWN_SECONDS: u64 = 30;
const TTL_SECONDS: u64 = 30;
/// After a fault ends, answers are normal again within this.
const RECOVERY: Duration = Duration::from_secs(2);
const POOL: usize = 12;

/// What a request is, and which statuses it may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Class {
    JwtRepeat,
    JwtFresh,
    JwtScope,
    PatRepeat,
    SatRepeat,
    PatFresh,
    Revoked,
    BadSignature,
    UnknownKid,
    RetiredKid,
    RandomReference,
    Malformed,
    TwoCredentials,
    NoCredential,
    Public,
}

/// Which faults a class's answer depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depends {
    Nothing,
    Introspection,
    Keys,
}

impl Class {
    const ALL: [Class; 15] = [
        Class::JwtRepeat,
        Class::JwtFresh,
        Class::JwtScope,
        Class::PatRepeat,
        Class::SatRepeat,
        Class::PatFresh,
        Class::Revoked,
        Class::BadSignature,
        Class::UnknownKid,
        Class::RetiredKid,
        Class::RandomReference,
        Class::Malformed,
        Class::TwoCredentials,
        Class::NoCredential,
        Class::Public,
    ];

    fn name(self) -> &'static str {
        match self {
            Class::JwtRepeat => "jwt repeated",
            Class::JwtFresh => "jwt fresh",
            Class::JwtScope => "jwt no scope",
            Class::PatRepeat => "pat repeated",
            Class::SatRepeat => "sat repeated",
            Class::PatFresh => "pat fresh",
            Class::Revoked => "revoked pat",
            Class::BadSignature => "bad signature",
            Class::UnknownKid => "unknown kid",
            Class::RetiredKid => "retired kid",
            Class::RandomReference => "random enrt_",
            Class::Malformed => "malformed",
            Class::TwoCredentials => "two credentials",
            Class::NoCredential => "no credential",
            Class::Public => "public route",
        }
    }

    /// Share of the load (out of the sum).
    fn weight(self) -> u32 {
        match self {
            Class::JwtRepeat => 30,
            Class::PatRepeat | Class::SatRepeat => 10,
            Class::JwtFresh => 6,
            Class::PatFresh | Class::Revoked | Class::RandomReference | Class::UnknownKid | Class::RetiredKid => 3,
            _ => 4,
        }
    }

    fn depends(self) -> Depends {
        match self {
            Class::PatRepeat | Class::SatRepeat | Class::PatFresh | Class::Revoked | Class::RandomReference => {
                Depends::Introspection
            }
            Class::UnknownKid | Class::RetiredKid => Depends::Keys,
            _ => Depends::Nothing,
        }
    }

    /// The status in calm times.
    fn expected(self) -> u16 {
        match self {
            Class::JwtRepeat
            | Class::JwtFresh
            | Class::PatRepeat
            | Class::SatRepeat
            | Class::PatFresh
            | Class::Public => 200,
            Class::JwtScope => 403,
            Class::Malformed | Class::TwoCredentials => 400,
            _ => 401,
        }
    }

    /// Whether the upstream may see it.
    fn may_pass(self) -> bool {
        self.expected() == 200
    }
}

/// A fault the schedule turned on: what it touches, from when to when
/// (seconds since the start).
#[derive(Debug, Clone)]
struct Window {
    what: &'static str,
    introspection: bool,
    keys: bool,
    from: f64,
    to: f64,
}

/// One request's outcome.
#[derive(Debug, Clone)]
struct Record {
    class: Class,
    at: f64,
    status: u16,
    micros: u64,
    retry_after: bool,
}

/// What the load threads draw tokens from; the schedule changes it.
struct World {
    minting: Mutex<SigningKey>,
    jwt_pool: Mutex<Vec<String>>,
    pats: Mutex<Vec<String>>,
    sats: Vec<String>,
    revoked: Mutex<Vec<(String, Instant)>>,
    /// Tokens of the retired key, usable once the filter has dropped it.
    retired: Mutex<Option<Vec<String>>>,
    /// Tokens the first key signed, kept for after its retirement.
    first_key_tokens: Vec<String>,
    first_key: SigningKey,
    /// PATs issued ahead for the fresh class, each sent once.
    fresh_pats: Mutex<Vec<String>>,
    foreign: SigningKey,
}

/// Everything measured.
pub struct Report {
    pub table: String,
    pub violations: Vec<String>,
}

/// `make soak`.
pub fn run() -> Result<(), Error> {
    let options = SoakOptions::from_env()?;
    let report = soak(&options)?;
    println!("{}", report.table);
    if report.violations.is_empty() {
        println!("soak passed: every bound held");
        Ok(())
    } else {
        for v in &report.violations {
            eprintln!("violation: {v}");
        }
        Err(format!("{} bound(s) broken", report.violations.len()).into())
    }
}

fn mint(key: &SigningKey, scopes: &[&str]) -> String {
    tokens::sign(&tokens::header(&key.kid), &tokens::claims(tokens::now(), scopes), key)
}

fn jwt_pool(key: &SigningKey) -> Vec<String> {
    (0..POOL).map(|_| mint(key, &["DomainApi", "read", "update"])).collect()
}

/// Runs the soak and judges it.
pub fn soak(options: &SoakOptions) -> Result<Report, Error> {
    let stack = Stack::start(StackOptions {
        filter_config: Some(filter_patch()),
        envoy: EnvoyOptions {
            concurrency: 2,
            ..EnvoyOptions::default()
        },
        ..StackOptions::default()
    })?;
    let idp = &stack.idp;
    let lifetime = options.seconds + 300;
    let issue = |kind| idp.issue_reference(kind, &["DomainApi", "read", "update"], lifetime);
    let world = Arc::new(World {
        minting: Mutex::new(idp.signing_key()),
        jwt_pool: Mutex::new(jwt_pool(&idp.signing_key())),
        pats: Mutex::new((0..POOL).map(|_| issue(ReferenceKind::Pat)).collect()),
        sats: (0..POOL).map(|_| issue(ReferenceKind::Sat)).collect(),
        revoked: Mutex::new(Vec::new()),
        retired: Mutex::new(None),
        first_key_tokens: jwt_pool(&idp.signing_key()),
        first_key: idp.signing_key(),
        fresh_pats: Mutex::new(Vec::new()),
        foreign: SigningKey::generate("foreign", 2048)?,
    });
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let host = Host::current()?;
    let vm_created_at_start = vm_stat(&stack, "created");

    // The load.
    let mut threads = Vec::new();
    let threads_f64 = options.threads as f64;
    for t in 0..options.threads {
        let world = Arc::clone(&world);
        let stop = Arc::clone(&stop);
        let sent = Arc::clone(&sent);
        let addr = stack.envoy.listener;
        let interval = Duration::from_secs_f64(options.threads as f64 / f64::from(options.rate));
        threads.push(std::thread::spawn(move || {
            let mut rng = rand::thread_rng();
            let mut records = Vec::new();
            let mut next = start + interval.mul_f64(t as f64 / threads_f64);
            while !stop.load(Ordering::SeqCst) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                next += interval;
                let id = sent.fetch_add(1, Ordering::SeqCst);
                if let Some(record) = one_request(&world, addr, id, start, &mut rng) {
                    records.push((id, record));
                }
            }
            records
        }));
    }

    // The upstream's record, read as it goes.
    let arrived: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
    let (windows, memory, notes) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(500));
                collect(&stack, &arrived);
            }
        });
        let result = schedule(&stack, &world, options.seconds, start);
        stop.store(true, Ordering::SeqCst);
        let _ = reader.join();
        result
    });
    let mut records: HashMap<u64, Record> = HashMap::new();
    for thread in threads {
        records.extend(thread.join().map_err(|_| "a load thread panicked")?);
    }
    std::thread::sleep(Duration::from_millis(300));
    collect(&stack, &arrived);
    let vm_created_at_end = vm_stat(&stack, "created");
    let arrived = std::mem::take(&mut *arrived.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(judge(&Judged {
        options,
        records: &records,
        arrived: &arrived,
        windows: &windows,
        memory: &memory,
        notes: &notes,
        vm_restarts: match (vm_created_at_start, vm_created_at_end) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        },
        introspections: idp.introspections(),
        jwks_requests: idp.jwks_requests(),
        host,
        envoy_alive: stack.envoy.pid().is_some()
            && match host {
                Host::Wasm => vm_stat(&stack, "active").is_some(),
                Host::Native => stack.envoy.stat("server.live") == Some(1),
            },
    }))
}

fn vm_stat(stack: &Stack, which: &str) -> Option<u64> {
    stack.envoy.stat(&format!("wasm.envoy.wasm.runtime.v8.{which}"))
}

/// Moves the soak ids of what the echo received into `arrived` (`None`: a
/// request without one, which no soak client sent), key probes left out.
fn collect(stack: &Stack, arrived: &Mutex<Vec<Option<u64>>>) {
    let seen = stack.echo.take();
    let mut arrived = arrived.lock().unwrap_or_else(|e| e.into_inner());
    let loads = seen.iter().filter(|r| r.header("x-soak-probe").is_none());
    arrived.extend(loads.map(|r| r.header("x-soak-id").and_then(|v| v.parse().ok())));
}

fn one_request(
    world: &World,
    addr: std::net::SocketAddr,
    id: u64,
    start: Instant,
    rng: &mut impl Rng,
) -> Option<Record> {
    let weights: u32 = Class::ALL.iter().map(|c| c.weight()).sum();
    let mut pick = rng.gen_range(0..weights);
    let mut class = Class::Public;
    for c in Class::ALL {
        if pick < c.weight() {
            class = c;
            break;
        }
        pick -= c.weight();
    }
    let lock = |m: &Mutex<Vec<String>>| m.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let bearer = |t: &str| format!("Bearer {t}");
    let mut path = "/api/domain/items";
    let mut method = "GET";
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut auth = |v: String| headers.push(("authorization".into(), v));
    match class {
        Class::JwtRepeat => auth(bearer(lock(&world.jwt_pool).choose(rng)?)),
        Class::JwtFresh => {
            let key = world.minting.lock().unwrap_or_else(|e| e.into_inner()).clone();
            auth(bearer(&mint(&key, &["read"])));
        }
        Class::JwtScope => {
            method = "POST";
            let key = world.minting.lock().unwrap_or_else(|e| e.into_inner()).clone();
            auth(bearer(&mint(&key, &["read"])));
        }
        Class::PatRepeat => auth(bearer(lock(&world.pats).choose(rng)?)),
        Class::SatRepeat => headers.push(("x-api-key".into(), world.sats.choose(rng)?.clone())),
        Class::PatFresh => {
            let token = world.fresh_pats.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            auth(bearer(&token));
        }
        Class::Revoked => {
            let revoked = world.revoked.lock().unwrap_or_else(|e| e.into_inner());
            // Only once the cache may no longer hold it.
            let due: Vec<&String> = revoked
                .iter()
                .filter(|(_, at)| at.elapsed() > Duration::from_secs(TTL_SECONDS + 1))
                .map(|(t, _)| t)
                .collect();
            let token = (*due.choose(rng)?).clone();
            drop(revoked);
            auth(bearer(&token));
        }
        Class::BadSignature => auth(bearer(&tokens::flip_signature_byte(lock(&world.jwt_pool).choose(rng)?))),
        Class::UnknownKid => {
            let header = tokens::header(&format!("kid-{}", tokens::random_hex(8)));
            auth(bearer(&tokens::sign(
                &header,
                &tokens::claims(tokens::now(), &["read"]),
                &world.foreign,
            )));
        }
        Class::RetiredKid => {
            let retired = world.retired.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
            auth(bearer(retired.choose(rng)?));
        }
        Class::RandomReference => auth(bearer(&format!("enrt_{}", tokens::random_hex(32)))),
        Class::Malformed => auth("Bearer not!a*token".into()),
        Class::TwoCredentials => {
            let pool = lock(&world.jwt_pool);
            auth(bearer(pool.choose(rng)?));
            headers.push(("x-api-key".into(), pool.choose(rng)?.clone()));
        }
        Class::NoCredential => {}
        Class::Public => path = "/healthz",
    }
    send(addr, id, class, method, path, &headers, start)
}

fn send(
    addr: std::net::SocketAddr,
    id: u64,
    class: Class,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    start: Instant,
) -> Option<Record> {
    let id_text = id.to_string();
    let mut all: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    all.push(("x-soak-id", &id_text));
    let at = start.elapsed().as_secs_f64();
    let began = Instant::now();
    let response = client::request(addr, method, path, &all, b"");
    let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
    let (status, retry_after) = match &response {
        Ok(r) => (r.status, r.header("retry-after").is_some()),
        Err(_) => (0, false),
    };
    Some(Record {
        class,
        at,
        status,
        micros,
        retry_after,
    })
}

/// Memory samples: (label, bytes).
type Memory = Vec<(&'static str, Option<u64>)>;

/// Turns faults on and off, rotates and retires keys, revokes tokens,
/// issues fresh PATs, and samples memory. Returns the fault windows.
fn schedule(stack: &Stack, world: &World, seconds: u64, start: Instant) -> (Vec<Window>, Memory, Vec<String>) {
    let idp = &stack.idp;
    let t = |share: f64| Duration::from_secs_f64(seconds as f64 * share);
    let until = |at: Duration| {
        while start.elapsed() < at {
            std::thread::sleep(Duration::from_millis(50).min(at.saturating_sub(start.elapsed())));
        }
    };
    let now = || start.elapsed().as_secs_f64();
    let mut windows = Vec::new();
    let mut memory: Memory = Vec::new();
    let mut notes = Vec::new();
    let mut fault = |what: &'static str, from: f64, to: f64, introspection: Fault, jwks: Fault, stopped: bool| {
        until(t(from));
        let began = now();
        if stopped {
            idp.stop();
        } else {
            idp.set_introspection_fault(introspection.clone());
            idp.set_jwks_fault(jwks.clone());
        }
        until(t(to));
        let mut problem = None;
        if stopped {
            if let Err(e) = idp.restart() {
                problem = Some(format!("the identity service did not restart: {e}"));
            }
        }
        idp.set_introspection_fault(Fault::None);
        idp.set_jwks_fault(Fault::None);
        windows.push(Window {
            what,
            introspection: stopped || introspection != Fault::None,
            keys: stopped || jwks != Fault::None,
            from: began,
            to: now(),
        });
        problem
    };
    // A revocation every few seconds, and a fresh PAT pool, run beside.
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(3));
                let mut pats = world.pats.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(victim) = pats.pop() {
                    idp.revoke(&victim);
                    world
                        .revoked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((victim, Instant::now()));
                }
                pats.insert(0, idp.issue_reference(ReferenceKind::Pat, &["read"], seconds + 300));
            }
        });
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let mut fresh = world.fresh_pats.lock().unwrap_or_else(|e| e.into_inner());
                while fresh.len() < 64 {
                    fresh.push(idp.issue_reference(ReferenceKind::Pat, &["read"], seconds + 300));
                }
                drop(fresh);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        fault(
            "introspection slower than its timeout",
            0.15,
            0.21,
            Fault::Slow(Duration::from_millis(1500)),
            Fault::None,
            false,
        );
        until(t(0.24));
        memory.push(("after warm-up", stack.envoy.stat("server.memory_allocated")));
        fault(
            "introspection answers 500",
            0.26,
            0.31,
            Fault::Status(500),
            Fault::None,
            false,
        );
        until(t(0.33));
        match rotate(stack, world, t(0.46), start) {
            Ok(note) => notes.push(note),
            Err(e) => notes.push(format!("rotation: {e}")),
        }
        fault(
            "garbage from both endpoints",
            0.47,
            0.52,
            Fault::Garbage,
            Fault::Garbage,
            false,
        );
        until(t(0.55));
        memory.push(("midway", stack.envoy.stat("server.memory_allocated")));
        if let Some(problem) = fault("identity service stopped", 0.56, 0.64, Fault::None, Fault::None, true) {
            notes.push(problem);
        }
        until(t(0.67));
        match retire(stack, world, t(0.80), start) {
            Ok(note) => notes.push(note),
            Err(e) => notes.push(format!("retirement: {e}")),
        }
        fault(
            "key set answers garbage",
            0.82,
            0.88,
            Fault::None,
            Fault::Garbage,
            false,
        );
        until(t(1.0) - Duration::from_millis(200));
        memory.push(("at the end", stack.envoy.stat("server.memory_allocated")));
        until(t(1.0));
        done.store(true, Ordering::SeqCst);
    });
    (windows, memory, notes)
}

/// Waits (until `deadline` at most) until Envoy answers `want` to a probe
/// carrying `token`, then a second for every worker's tick to pick the set
/// up. Probes carry `x-soak-probe` and are not judged (one may pass while
/// the filter still has the keys it may use).
fn wait_for_answer(stack: &Stack, token: &str, want: u16, deadline: Duration, start: Instant) -> bool {
    let auth = format!("Bearer {token}");
    while start.elapsed() < deadline {
        let headers = [("authorization", auth.as_str()), ("x-soak-probe", "1")];
        if client::request(stack.envoy.listener, "GET", "/api/domain/items", &headers, b"")
            .is_ok_and(|r| r.status == want)
        {
            std::thread::sleep(Duration::from_secs(1));
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Publishes a new signing key; once the filter has fetched the set, new
/// tokens are signed with it (as an identity service pre-publishes keys).
fn rotate(stack: &Stack, world: &World, deadline: Duration, start: Instant) -> Result<String, Error> {
    let kid = stack.idp.rotate()?;
    let key = stack.idp.signing_key();
    if !wait_for_answer(stack, &mint(&key, &["read"]), 200, deadline, start) {
        return Err(format!("key {kid} published but never accepted").into());
    }
    *world.jwt_pool.lock().unwrap_or_else(|e| e.into_inner()) = jwt_pool(&key);
    *world.minting.lock().unwrap_or_else(|e| e.into_inner()) = key;
    Ok(format!("rotated to {kid} at {:.1} s", start.elapsed().as_secs_f64()))
}

/// Stops publishing the old key; once the filter has fetched the new set,
/// tokens it signed must be refused.
fn retire(stack: &Stack, world: &World, deadline: Duration, start: Instant) -> Result<String, Error> {
    let old: Vec<_> = stack.idp.jwks()["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let current = stack.idp.signing_key().kid;
    if old.iter().all(|kid| *kid == current) {
        return Err("no old key to retire (the rotation did not happen)".into());
    }
    if world.minting.lock().unwrap_or_else(|e| e.into_inner()).kid != current {
        return Err("the new key was never fetched: the old one did not retire".into());
    }
    stack.idp.retire_old_keys();
    // A fresh copy is verified again, not found in a worker's memory.
    let probe = mint(&world.first_key, &["read"]);
    if !wait_for_answer(stack, &probe, 401, deadline, start) {
        return Err("the retired key was never refused".into());
    }
    *world.retired.lock().unwrap_or_else(|e| e.into_inner()) = Some(world.first_key_tokens.clone());
    Ok(format!("retired the old key at {:.1} s", start.elapsed().as_secs_f64()))
}

struct Judged<'a> {
    options: &'a SoakOptions,
    records: &'a HashMap<u64, Record>,
    arrived: &'a [Option<u64>],
    windows: &'a [Window],
    memory: &'a Memory,
    notes: &'a [String],
    /// VMs created during the run (`None`: the stat could not be read).
    vm_restarts: Option<u64>,
    /// The native module has no VM to restart.
    host: Host,
    introspections: u64,
    jwks_requests: u64,
    envoy_alive: bool,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn judge(j: &Judged<'_>) -> Report {
    let mut violations = Vec::new();
    let mut table = String::new();
    let disturbed = |class: Class, at: f64| {
        j.windows.iter().any(|w| {
            let touches = match class.depends() {
                Depends::Nothing => false,
                Depends::Introspection => w.introspection,
                Depends::Keys => w.keys,
            };
            touches && at >= w.from - 0.05 && at <= w.to + RECOVERY.as_secs_f64()
        })
    };
    let allowed =
        |class: Class, at: f64, status: u16| status == class.expected() || (disturbed(class, at) && status == 503);
    let _ = writeln!(
        table,
        "soak: {} s at {} req/s, Envoy --concurrency 2, {} requests",
        j.options.seconds,
        j.options.rate,
        j.records.len()
    );
    for w in j.windows {
        let _ = writeln!(table, "  fault {:<40} {:>6.1} s .. {:>6.1} s", w.what, w.from, w.to);
    }
    for note in j.notes {
        let _ = writeln!(table, "  {note}");
        if note.starts_with("rotation") || note.starts_with("retirement") || note.contains("did not") {
            violations.push(note.clone());
        }
    }
    let _ = writeln!(
        table,
        "\n{:<16} {:>7} {:>9} {:>22} {:>9} {:>9} {:>9}",
        "class", "sent", "expected", "got (calm | faulted)", "wrong", "p50 ms", "p99 ms"
    );
    let mut by_class: BTreeMap<Class, Vec<&Record>> = BTreeMap::new();
    for record in j.records.values() {
        by_class.entry(record.class).or_default().push(record);
    }
    for class in Class::ALL {
        let records = by_class.get(&class).map(Vec::as_slice).unwrap_or_default();
        let mut calm: BTreeMap<u16, u64> = BTreeMap::new();
        let mut faulted: BTreeMap<u16, u64> = BTreeMap::new();
        let mut wrong = 0;
        for r in records {
            let bucket = if disturbed(class, r.at) {
                &mut faulted
            } else {
                &mut calm
            };
            *bucket.entry(r.status).or_default() += 1;
            if !allowed(class, r.at, r.status) {
                wrong += 1;
                if wrong <= 3 {
                    violations.push(format!(
                        "{} at {:.2} s got {} (expected {})",
                        class.name(),
                        r.at,
                        r.status,
                        class.expected()
                    ));
                }
            }
            if r.status == 503 && !r.retry_after {
                violations.push(format!("{} at {:.2} s: 503 without Retry-After", class.name(), r.at));
            }
        }
        if wrong > 3 {
            violations.push(format!("{}: {wrong} wrong statuses in all", class.name()));
        }
        let show = |m: &BTreeMap<u16, u64>| m.iter().map(|(s, n)| format!("{s}×{n}")).collect::<Vec<_>>().join(" ");
        let mut micros: Vec<u64> = records.iter().map(|r| r.micros).collect();
        micros.sort_unstable();
        let _ = writeln!(
            table,
            "{:<16} {:>7} {:>9} {:>22} {:>9} {:>9.1} {:>9.1}",
            class.name(),
            records.len(),
            class.expected(),
            format!("{} | {}", show(&calm), show(&faulted)),
            wrong,
            percentile(&micros, 0.5) as f64 / 1000.0,
            percentile(&micros, 0.99) as f64 / 1000.0,
        );
        let floor = (j.records.len() as u64 * u64::from(class.weight())) / 2000;
        if records.is_empty() && floor > 5 && !matches!(class, Class::RetiredKid | Class::Revoked) {
            violations.push(format!("{}: never sent", class.name()));
        }
    }
    // The upstream's own record.
    let mut unauthenticated = 0;
    for id in j.arrived {
        let ok = id
            .and_then(|id| j.records.get(&id))
            .is_some_and(|r| r.class.may_pass() && r.status == 200);
        if !ok {
            unauthenticated += 1;
        }
    }
    let passed = j.records.values().filter(|r| r.status == 200).count();
    let _ = writeln!(
        table,
        "\nupstream: {} requests arrived ({} answered 200 to clients); without a valid credential: {unauthenticated}",
        j.arrived.len(),
        passed
    );
    if unauthenticated > 0 {
        violations.push(format!(
            "{unauthenticated} request(s) reached the upstream without a valid credential"
        ));
    }
    match (j.host, j.vm_restarts) {
        (Host::Native, _) => {
            let _ = writeln!(
                table,
                "VM restarts: none to count (the native module runs in Envoy itself)"
            );
        }
        (Host::Wasm, Some(restarts)) => {
            let _ = writeln!(
                table,
                "VM restarts (wasm.envoy.wasm.runtime.v8.created during the run): {restarts}"
            );
            if restarts > 0 {
                violations.push(format!("the VM was restarted {restarts} time(s)"));
            }
        }
        (Host::Wasm, None) => violations.push("the VM counter could not be read".into()),
    }
    if !j.envoy_alive {
        violations.push("Envoy is not running at the end".into());
    }
    let samples: Vec<String> = j
        .memory
        .iter()
        .map(|(label, bytes)| match bytes {
            Some(b) => format!("{label} {:.1} MiB", *b as f64 / 1_048_576.0),
            None => format!("{label} ?"),
        })
        .collect();
    let _ = writeln!(table, "Envoy memory (server.memory_allocated): {}", samples.join(", "));
    let warm = j.memory.first().and_then(|(_, b)| *b);
    let later: Vec<u64> = j.memory.iter().skip(1).filter_map(|(_, b)| *b).collect();
    match warm {
        Some(warm) if later.len() == 2 => {
            let worst = later.iter().copied().max().unwrap_or(warm);
            let growth = worst as f64 / warm as f64 - 1.0;
            let _ = writeln!(table, "  growth after warm-up: {:+.1} % (bound +5 %)", growth * 100.0);
            if growth > 0.05 {
                violations.push(format!("memory grew {:.1} % after warm-up", growth * 100.0));
            }
        }
        _ => violations.push("memory could not be read".into()),
    }
    // Identity-service calls against what the settings allow.
    let sent = |c: Class| by_class.get(&c).map_or(0, Vec::len) as u64;
    let seconds = j.options.seconds;
    // While introspection fails, a pooled token may be asked about on every
    // request (after the 250 ms a failure is shared): at most those requests.
    let pooled_while_failing = j
        .records
        .values()
        .filter(|r| matches!(r.class, Class::PatRepeat | Class::SatRepeat) && disturbed(r.class, r.at))
        .count() as u64;
    let pool = (2 * POOL) as u64 + seconds / 3; // the pools, and a new PAT every 3 s
    let introspection_bound = sent(Class::PatFresh)
        + sent(Class::RandomReference)
        + sent(Class::Revoked)
        + pool * (seconds / TTL_SECONDS + 2)
        + pooled_while_failing;
    let _ = writeln!(
        table,
        "introspection calls: {} (bound {introspection_bound}: fresh, revoked and unknown tokens, each pooled token once per {TTL_SECONDS} s TTL, pooled requests while failing)",
        j.introspections
    );
    if j.introspections > introspection_bound {
        violations.push(format!(
            "{} introspection calls, bound {introspection_bound}",
            j.introspections
        ));
    }
    let key_faults: f64 = j.windows.iter().filter(|w| w.keys).map(|w| w.to - w.from).sum();
    let jwks_bound = seconds / REFRESH_SECONDS + seconds / COOLDOWN_SECONDS + 4 + key_faults.ceil() as u64;
    let _ = writeln!(
        table,
        "key-set fetches: {} (bound {jwks_bound}: one per {REFRESH_SECONDS} s refresh, one forced per {COOLDOWN_SECONDS} s cooldown, one retry a second while failing)",
        j.jwks_requests
    );
    if j.jwks_requests > jwks_bound {
        violations.push(format!("{} key-set fetches, bound {jwks_bound}", j.jwks_requests));
    }
    Report { table, violations }
}
