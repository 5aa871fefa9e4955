//! Property tests of the agent's TOML config: whatever the file holds, the answer is a config
//! or an error naming the file or the key, never a panic.

use std::path::PathBuf;
use std::sync::LazyLock;

use kcdsync_agent::config::AgentConfig;
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A directory holding the files the config names.
static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap().keep();
    for f in ["ca.pem", "agent.pem", "agent.key", "host.toml"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    dir
});

/// Every key of a plausible config with its usual value; errors about a key must name it.
const KEYS: [(&str, &str); 14] = [
    ("controller_url", "\"https://kcdsync.lab.test:7443\""),
    ("tls_server_name", "\"localhost\""),
    ("ca_file", "\"ca.pem\""),
    ("cert_file", "\"agent.pem\""),
    ("key_file", "\"agent.key\""),
    ("outbox_dir", "\"outbox\""),
    ("probe", "\"simulated\""),
    ("simulated_host", "\"host.toml\""),
    ("report_interval_secs", "60"),
    ("attempts_interval_secs", "10"),
    ("probe_timeout_secs", "30"),
    ("outbox_max_bytes", "67108864"),
    ("max_message_bytes", "1048576"),
    ("resend_after_secs", "30"),
];

fn text(replace: Option<(usize, &str)>) -> String {
    KEYS.iter()
        .enumerate()
        .map(|(i, (k, v))| match replace {
            Some((r, value)) if r == i => format!("{k} = {value}\n"),
            _ => format!("{k} = {v}\n"),
        })
        .collect()
}

fn parse(text: &str) -> Result<AgentConfig, kcdsync_agent::config::ConfigError> {
    AgentConfig::parse(text, &DIR.join("agent.toml"))
}

fn toml_value() -> impl Strategy<Value = String> {
    let string = "\\PC{0,30}".prop_map(|s| toml::Value::String(s).to_string());
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|i| i.to_string()),
        Just("18446744073709551616".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        string.clone(),
        prop::collection::vec(string, 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_text_is_a_config_or_an_error(text in "\\PC{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn one_odd_value_is_refused_by_its_key(key in 0..KEYS.len(), value in toml_value()) {
        if let Err(e) = parse(&text(Some((key, &value)))) {
            let name = KEYS[key].0;
            prop_assert!(e.to_string().contains(name), "{} = {} gave: {}", name, value, e);
        }
    }
}

#[test]
fn the_plausible_config_is_valid_and_intervals_are_bounded() {
    let c = parse(&text(None)).unwrap();
    assert_eq!(c.report_interval.as_secs(), 60);
    let e = parse(&text(Some((8, "18446744073709551615")))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config key `report_interval_secs`: must be 1 to 86400 seconds, not 18446744073709551615"
    );
    let e = parse(&text(Some((10, "0")))).unwrap_err();
    assert!(e.to_string().starts_with("config key `probe_timeout_secs`"), "{e}");
}
