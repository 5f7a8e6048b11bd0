//! The fixed ports of `make run` and the compose stack: each has a variable
//! that moves it, and a port that cannot be had is reported with both the
//! address and that variable.

use std::net::TcpListener;

use crate::tokens::Error;

/// One listening service of the stack.
#[derive(Debug, Clone, Copy)]
pub struct ServicePort {
    /// What listens there, for messages.
    pub service: &'static str,
    /// The environment variable that moves it.
    pub var: &'static str,
    pub default: u16,
}

pub const IDP: ServicePort = ServicePort {
    service: "the identity service emulator",
    var: "IDP_PORT",
    default: 9080,
};
pub const ECHO: ServicePort = ServicePort {
    service: "the echo upstream",
    var: "ECHO_PORT",
    default: 9081,
};
pub const ENVOY: ServicePort = ServicePort {
    service: "Envoy's listener",
    var: "ENVOY_PORT",
    default: 10000,
};
pub const ENVOY_ADMIN: ServicePort = ServicePort {
    service: "Envoy's admin interface",
    var: "ENVOY_ADMIN_PORT",
    default: 9901,
};

impl ServicePort {
    /// The port: `$VAR`, or the default.
    pub fn port(&self) -> Result<u16, Error> {
        match std::env::var(self.var) {
            Ok(v) => Ok(v
                .trim()
                .parse()
                .map_err(|_| format!("{}={v} is not a port", self.var))?),
            Err(_) => Ok(self.default),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn loopback(&self) -> Result<String, Error> {
        Ok(format!("127.0.0.1:{}", self.port()?))
    }

    /// Turns a failure to listen on `addr` into a message that names the
    /// address and the variable; other errors pass unchanged.
    pub fn explain(&self, addr: &str, error: Error) -> Error {
        match error.downcast_ref::<std::io::Error>() {
            Some(io) if is_bind_error(io) => format!(
                "{} cannot listen on {addr}: {io}; set {} to a free port (e.g. {}={})",
                self.service,
                self.var,
                self.var,
                self.default.saturating_add(1000)
            )
            .into(),
            _ => error,
        }
    }

    /// For a port another process binds (Envoy's): fails with the same
    /// message when it cannot be had now.
    pub fn check_free(&self) -> Result<(), Error> {
        let addr = self.loopback()?;
        TcpListener::bind(&addr)
            .map(drop)
            .map_err(|e| self.explain(&addr, e.into()))
    }
}

fn is_bind_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{AddrInUse, AddrNotAvailable, PermissionDenied};
    matches!(error.kind(), AddrInUse | AddrNotAvailable | PermissionDenied)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_taken_port_is_named_with_its_address_and_variable() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let error = TcpListener::bind(&addr).map(drop).unwrap_err();
        let message = IDP.explain(&addr, error.into()).to_string();
        assert!(message.contains(&addr), "{message}");
        assert!(message.contains("IDP_PORT"), "{message}");
        assert!(message.contains("identity service emulator"), "{message}");
    }

    #[test]
    fn other_errors_pass_unchanged() {
        let message = ECHO.explain("127.0.0.1:1", "something else".into()).to_string();
        assert_eq!(message, "something else");
    }
}
