//! kcdsync-agent: placeholder until the agents issue lands; it says so
//! instead of pretending to report.
fn main() {
    eprintln!(
        "kcdsync-agent {}: host reporting is not implemented yet (tracked by the agents issue)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
