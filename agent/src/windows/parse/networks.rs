//! `Get-VMMigrationNetwork`: the networks live migration may use, when the
//! host does not use any network.

use kcdsync_proto::v1::MigrationNetwork;
use serde_json::Value;

use super::json::{json_items, prop, req, wrong};
use super::{ParseError, describe};

/// Output of [`PS_MIGRATION_NETWORKS`](crate::windows::scripts::PS_MIGRATION_NETWORKS): empty output = no network, one
/// object, or an array. `Priority` may be null.
pub fn parse_migration_networks(json: &str) -> Result<Vec<MigrationNetwork>, ParseError> {
    json_items(json, "Get-VMMigrationNetwork")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let what = format!("Get-VMMigrationNetwork item {i}");
            let subnet = match req(m, &what, "Subnet")? {
                Value::String(s) => s.clone(),
                other => return Err(wrong(&what, "Subnet", "a string", other)),
            };
            let priority = match prop(m, "Priority") {
                None | Some(Value::Null) => None,
                Some(v @ Value::Number(n)) => Some(n.as_i64().and_then(|x| i32::try_from(x).ok()).ok_or_else(
                    || ParseError::OutOfRange {
                        what: what.clone(),
                        field: "Priority",
                        value: describe(v),
                    },
                )?),
                Some(other) => return Err(wrong(&what, "Priority", "an integer or null", other)),
            };
            Ok(MigrationNetwork { subnet, priority })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::parse::fixtures::*;

    #[test]
    fn migration_networks_none_one_many() {
        assert!(parse_migration_networks(NETS_EMPTY).unwrap().is_empty());
        assert!(parse_migration_networks("\r\n").unwrap().is_empty());
        assert_eq!(
            parse_migration_networks(NETS_ONE).unwrap(),
            vec![MigrationNetwork {
                subnet: "192.168.10.0/24".into(),
                priority: Some(0)
            }]
        );
        assert_eq!(
            parse_migration_networks(&crlf(NETS_MANY)).unwrap(),
            vec![
                MigrationNetwork {
                    subnet: "192.168.10.0/24".into(),
                    priority: Some(0)
                },
                MigrationNetwork {
                    subnet: "10.20.0.0/16".into(),
                    priority: None
                },
            ]
        );
    }

    #[test]
    fn migration_networks_bad_values() {
        assert!(matches!(
            parse_migration_networks(&NETS_ONE.replace("0\n", "\"high\"\n")),
            Err(ParseError::WrongType { field: "Priority", .. })
        ));
        assert!(matches!(
            parse_migration_networks(&NETS_ONE.replace("0\n", "9999999999\n")),
            Err(ParseError::OutOfRange { field: "Priority", .. })
        ));
        assert!(matches!(
            parse_migration_networks("[{\"Priority\": 1}]"),
            Err(ParseError::Missing { field: "Subnet", .. })
        ));
        assert!(matches!(
            parse_migration_networks("[1, 2]"),
            Err(ParseError::Shape { .. })
        ));
    }
}
