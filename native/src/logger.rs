//! The `log` crate's lines (the core's and this crate's) into Envoy's log,
//! at the levels Envoy has enabled for dynamic modules.

use crate::ffi;
use crate::filter::envoy_level;

struct EnvoyLog;

impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        ffi::log_enabled(envoy_level(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = envoy_level(record.level());
        if ffi::log_enabled(level) {
            ffi::log(level, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Sends the process's `log` lines to Envoy (once; later calls keep it).
pub(crate) fn install() {
    static LOGGER: EnvoyLog = EnvoyLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}
