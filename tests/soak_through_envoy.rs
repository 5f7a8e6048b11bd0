//! A 60-second soak (`make soak` runs the 10-minute one): mixed and hostile
//! load through real Envoy while the identity service is slowed, fails,
//! answers garbage, stops and starts, and rotates and retires its key.

use erp_devstack::soak::{soak, SoakOptions};

#[test]
fn sixty_seconds_of_mixed_load_and_identity_faults_break_no_bound() {
    let report = soak(&SoakOptions {
        seconds: 60,
        rate: 300,
        threads: 8,
    })
    .unwrap();
    println!("{}", report.table);
    assert!(
        report.violations.is_empty(),
        "{:#?}\n{}",
        report.violations,
        report.table
    );
}
