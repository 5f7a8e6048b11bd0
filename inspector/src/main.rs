//! `erp-edge-validator`: the filter's decision for one request, and
//! warnings about a configuration, on the command line.
//!
//! ```text
//! erp-edge-validator explain --config FILE [--jwks FILE] [--now UNIX_SECONDS]
//!     [-H 'Name: value']... [--introspection-answer FILE] [--json] METHOD PATH
//! erp-edge-validator lint --config FILE
//! ```
//!
//! Exit status: `explain` 0 when the request would be allowed, 1 when it
//! would be refused (or needs an introspection answer to decide); `lint` 1
//! when there is any warning; 2 for a usage or configuration error.

use std::process::ExitCode;

use erp_edge_inspector::{parse_headers, render, render_lint, trace_json};
use erp_edge_validator::tools::explain::{explain, Inputs};
use erp_edge_validator::tools::lint::lint;

const USAGE: &str = "usage:
  erp-edge-validator explain --config FILE [--jwks FILE] [--now UNIX_SECONDS]
      [-H 'Name: value']... [--introspection-answer FILE] [--json] METHOD PATH
  erp-edge-validator lint --config FILE";

#[derive(Default)]
struct Args {
    config: Option<String>,
    jwks: Option<String>,
    now: Option<u64>,
    headers: Vec<String>,
    answer: Option<String>,
    json: bool,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args::default();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let mut value = |name: &str| -> Result<String, String> {
            i += 1;
            args.get(i).cloned().ok_or_else(|| format!("{name} needs a value"))
        };
        match arg {
            "--config" => out.config = Some(value("--config")?),
            "--jwks" => out.jwks = Some(value("--jwks")?),
            "--now" => {
                let v = value("--now")?;
                out.now = Some(
                    v.parse()
                        .map_err(|_| format!("--now must be seconds since the epoch, not `{v}`"))?,
                );
            }
            "-H" | "--header" => out.headers.push(value("-H")?),
            "--introspection-answer" => out.answer = Some(value("--introspection-answer")?),
            "--json" => out.json = true,
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with('-') && flag.len() > 1 => return Err(format!("unknown option `{flag}`")),
            _ => out.positional.push(arg.to_owned()),
        }
        i += 1;
    }
    Ok(out)
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} `{path}`: {e}"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn run(argv: &[String]) -> Result<ExitCode, String> {
    let (command, rest) = argv.split_first().ok_or_else(String::new)?;
    let args = parse(rest)?;
    let config_path = args.config.as_deref().ok_or("--config FILE is required")?;
    let config = read(config_path, "--config")?;
    match command.as_str() {
        "lint" => {
            if !args.positional.is_empty() {
                return Err(format!("lint takes no arguments, got `{}`", args.positional.join(" ")));
            }
            let warnings = lint(&config).map_err(|e| format!("{config_path}: {e}"))?;
            if warnings.is_empty() {
                println!("{config_path}: no warnings");
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", render_lint(&warnings));
            Ok(ExitCode::from(1))
        }
        "explain" => {
            let [method, path] = args.positional.as_slice() else {
                return Err("explain needs METHOD and PATH".into());
            };
            let headers = parse_headers(&args.headers.join("\n"))?;
            let jwks = args.jwks.as_deref().map(|p| read(p, "--jwks")).transpose()?;
            let answer = args
                .answer
                .as_deref()
                .map(|p| read(p, "--introspection-answer"))
                .transpose()?;
            let trace = explain(&Inputs {
                config: &config,
                jwks: jwks.as_deref(),
                now: args.now.unwrap_or_else(now),
                method,
                path,
                headers: &headers,
                introspection_answer: answer.as_deref(),
            })
            .map_err(|e| format!("{config_path}: {e}"))?;
            if args.json {
                println!("{}", trace_json(&trace));
            } else {
                print!("{}", render(&trace, method, path));
            }
            Ok(if trace.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        other => Err(format!("unknown command `{other}`")),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(code) => code,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("erp-edge-validator: {message}");
            }
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
