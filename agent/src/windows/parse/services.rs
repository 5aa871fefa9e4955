//! `Get-Service vmms,WinRM`: the services live migration needs, with their
//! state and start mode.

use kcdsync_proto::v1::{ServiceState, ServiceStatus, StartMode};
use serde_json::Value;

use super::ParseError;
use super::json::{enum_code, json_items, req, wrong};

const STATUS_NAMES: &[(&str, i64)] = &[
    ("Stopped", 1),
    ("StartPending", 2),
    ("StopPending", 3),
    ("Running", 4),
    ("ContinuePending", 5),
    ("PausePending", 6),
    ("Paused", 7),
];
const START_NAMES: &[(&str, i64)] = &[
    ("Boot", 0),
    ("System", 1),
    ("Automatic", 2),
    ("Manual", 3),
    ("Disabled", 4),
];

/// Output of [`PS_SERVICES`](crate::windows::scripts::PS_SERVICES): one object or an array (empty output = none of
/// the services exists). `Status` 1..7 maps 1:1 to [`ServiceState`];
/// `StartType` 0..4 to [`StartMode`] + 1; other numbers give UNSPECIFIED.
pub fn parse_services(json: &str) -> Result<Vec<ServiceStatus>, ParseError> {
    json_items(json, "Get-Service")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let what = format!("Get-Service item {i}");
            let name = match req(m, &what, "Name")? {
                Value::String(s) => s.clone(),
                other => return Err(wrong(&what, "Name", "a string", other)),
            };
            let state = match enum_code(m, &what, "Status", STATUS_NAMES)? {
                Some(n @ 1..=7) => ServiceState::try_from(n as i32).unwrap_or(ServiceState::Unspecified),
                _ => ServiceState::Unspecified,
            };
            let start_mode = match enum_code(m, &what, "StartType", START_NAMES)? {
                Some(n @ 0..=4) => StartMode::try_from(n as i32 + 1).unwrap_or(StartMode::Unspecified),
                _ => StartMode::Unspecified,
            };
            Ok(ServiceStatus {
                name,
                state: state as i32,
                start_mode: start_mode as i32,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::parse::fixtures::*;

    #[test]
    fn services_array_and_single() {
        let s = parse_services(SERVICES_PS51).unwrap();
        assert_eq!(
            s,
            vec![
                ServiceStatus {
                    name: "vmms".into(),
                    state: ServiceState::Running as i32,
                    start_mode: StartMode::Automatic as i32
                },
                ServiceStatus {
                    name: "WinRM".into(),
                    state: ServiceState::Running as i32,
                    start_mode: StartMode::Automatic as i32
                },
            ]
        );
        let s = parse_services(SERVICES_SINGLE_PS7).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].state(), ServiceState::Stopped);
        assert_eq!(s[0].start_mode(), StartMode::Manual);
        assert!(parse_services("").unwrap().is_empty());
    }

    #[test]
    fn services_every_number_maps() {
        for (status, state) in [
            (1, ServiceState::Stopped),
            (2, ServiceState::StartPending),
            (3, ServiceState::StopPending),
            (4, ServiceState::Running),
            (5, ServiceState::ContinuePending),
            (6, ServiceState::PausePending),
            (7, ServiceState::Paused),
            (0, ServiceState::Unspecified),
            (99, ServiceState::Unspecified),
            (-1, ServiceState::Unspecified),
        ] {
            let j = format!("{{\"Name\": \"vmms\", \"Status\": {status}, \"StartType\": 2}}");
            assert_eq!(parse_services(&j).unwrap()[0].state(), state, "{status}");
        }
        for (start, mode) in [
            (0, StartMode::Boot),
            (1, StartMode::System),
            (2, StartMode::Automatic),
            (3, StartMode::Manual),
            (4, StartMode::Disabled),
            (5, StartMode::Unspecified),
            (99, StartMode::Unspecified),
        ] {
            let j = format!("{{\"Name\": \"vmms\", \"Status\": 4, \"StartType\": {start}}}");
            assert_eq!(parse_services(&j).unwrap()[0].start_mode(), mode, "{start}");
        }
        let j = "{\"Name\": \"vmms\", \"Status\": \"Running\", \"StartType\": \"Disabled\"}";
        let s = &parse_services(j).unwrap()[0];
        assert_eq!(
            (s.state(), s.start_mode()),
            (ServiceState::Running, StartMode::Disabled)
        );
    }

    #[test]
    fn services_wrong_types() {
        assert!(matches!(
            parse_services("{\"Name\": \"vmms\", \"Status\": true, \"StartType\": 2}"),
            Err(ParseError::WrongType { field: "Status", .. })
        ));
        assert!(matches!(
            parse_services("{\"Name\": 5, \"Status\": 4, \"StartType\": 2}"),
            Err(ParseError::WrongType { field: "Name", .. })
        ));
        assert!(matches!(
            parse_services("{\"Name\": \"vmms\", \"Status\": 4}"),
            Err(ParseError::Missing { field: "StartType", .. })
        ));
    }
}
