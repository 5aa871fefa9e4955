//! `kcdctl matrix` for people: a grid of sources (rows) by destinations
//! (columns), then the reasons that block, each with the pairs it blocks.
//! A pure function of the answer, so every shape (long names, one host,
//! colour off) is tested without a controller.

use std::collections::{BTreeMap, HashMap};

use kcdsync_proto::v1 as pb;

use crate::output::kind;

/// The grid's corner: rows are sources, columns destinations.
const CORNER: &str = "FROM\\TO";
/// Column headers longer than this make the grid number its columns instead,
/// with a legend: a 100-host group of 15-character names would not fit.
const HEADER_MAX: usize = 6;
/// Row labels are cut to this many characters (the legend has the full name).
const ROW_MAX: usize = 20;
/// Pairs listed per blocking reason before "… and N more".
const PAIRS_MAX: usize = 12;

const READY: &str = "✓";
const NOT_READY: &str = "✗";
const UNKNOWN: &str = "?";
const SAME: &str = "·";
const NO_CELL: &str = "-";

/// ANSI colour, or none.
struct Paint(bool);

impl Paint {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    /// A cell's symbol in its colour: green ready, red not, yellow unknown.
    fn mark(&self, mark: &str) -> String {
        match mark {
            READY => self.paint("32", mark),
            NOT_READY => self.paint("31", mark),
            UNKNOWN => self.paint("33", mark),
            SAME | NO_CELL => self.paint("2", mark),
            _ => mark.to_owned(),
        }
    }
}

/// The grid and its reasons, ANSI-coloured when `colour`.
pub fn render(r: &pb::ReadinessMatrixResponse, colour: bool) -> String {
    let paint = Paint(colour);
    if r.hosts.is_empty() {
        return "the group has no hosts\n".to_owned();
    }
    let labels = labels(&r.hosts);
    let numbered = labels.iter().any(|l| width(l) > HEADER_MAX);
    let cells: HashMap<(&str, &str), &pb::MatrixCell> = r
        .cells
        .iter()
        .map(|c| ((c.source.as_str(), c.destination.as_str()), c))
        .collect();
    let marks: Vec<Vec<&str>> = r
        .hosts
        .iter()
        .map(|s| {
            r.hosts
                .iter()
                .map(|d| match cells.get(&(s.as_str(), d.as_str())) {
                    _ if s == d => SAME,
                    None => NO_CELL,
                    Some(c) => mark(c.readiness),
                })
                .collect()
        })
        .collect();
    let mut out = grid(&labels, numbered, &marks, &paint);
    out.push_str(&key(&marks, &paint));
    if numbered {
        for (i, h) in r.hosts.iter().enumerate() {
            out.push_str(&format!("  {:>w$} = {h}\n", i + 1, w = digits(r.hosts.len())));
        }
    }
    out.push_str(&reasons(r, &labels, &paint));
    out
}

/// The symbol of a readiness.
fn mark(readiness: i32) -> &'static str {
    match pb::Readiness::try_from(readiness) {
        Ok(pb::Readiness::Ready) => READY,
        Ok(pb::Readiness::NotReady) => NOT_READY,
        _ => UNKNOWN,
    }
}

/// Short names: the NetBIOS-like first label, upper-cased; the full names
/// when two hosts would share one (same name in two domains).
fn labels(hosts: &[String]) -> Vec<String> {
    let short: Vec<String> = hosts
        .iter()
        .map(|h| h.split('.').next().unwrap_or(h).to_ascii_uppercase())
        .collect();
    let mut seen = std::collections::HashSet::new();
    if short.iter().all(|s| seen.insert(s.as_str())) {
        short
    } else {
        hosts.to_vec()
    }
}

/// Characters on screen (the marks are one column each, but several bytes).
fn width(s: &str) -> usize {
    s.chars().count()
}

fn digits(n: usize) -> usize {
    n.max(1).to_string().len()
}

/// `s` cut to `max` characters, the cut shown.
fn abbreviate(s: &str, max: usize) -> String {
    if width(s) <= max {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

/// The header row and one row per source.
fn grid(labels: &[String], numbered: bool, marks: &[Vec<&str>], paint: &Paint) -> String {
    let n = labels.len();
    let headers: Vec<String> = if numbered {
        (1..=n).map(|i| i.to_string()).collect()
    } else {
        labels.to_vec()
    };
    let rows: Vec<String> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if numbered {
                format!("{:>w$} {}", i + 1, abbreviate(l, ROW_MAX), w = digits(n))
            } else {
                l.clone()
            }
        })
        .collect();
    let col = headers.iter().map(|h| width(h)).max().unwrap_or(1);
    let first = rows.iter().map(|r| width(r)).max().unwrap_or(0).max(width(CORNER));
    let mut out = format!("{CORNER:<first$}");
    for h in &headers {
        out.push_str(&format!("  {h:^col$}"));
    }
    out.push('\n');
    for (row, line) in rows.iter().zip(marks) {
        out.push_str(&format!("{row:<first$}"));
        for m in line {
            // Centred under its header; padded by hand: colour codes take no column.
            let left = (col - 1) / 2;
            let right = col - 1 - left;
            out.push_str(&format!("  {}{}{}", " ".repeat(left), paint.mark(m), " ".repeat(right)));
        }
        out.truncate(out.trim_end_matches(' ').len());
        out.push('\n');
    }
    out
}

/// What the symbols mean (only those the grid shows), and the count of ready pairs.
fn key(marks: &[Vec<&str>], paint: &Paint) -> String {
    let all: Vec<&str> = marks.iter().flatten().copied().collect();
    let pairs = all.iter().filter(|m| **m != SAME).count();
    let ready = all.iter().filter(|m| **m == READY).count();
    if pairs == 0 {
        return "no pairs: the group has one host\n".to_owned();
    }
    let meaning = [
        (READY, "ready"),
        (NOT_READY, "not ready"),
        (UNKNOWN, "unknown"),
        (NO_CELL, "not answered"),
        (SAME, "same host"),
    ];
    let key: Vec<String> = meaning
        .iter()
        .filter(|(m, _)| all.contains(m))
        .map(|(m, what)| format!("{} {what}", paint.mark(m)))
        .collect();
    format!("{}   {ready} of {pairs} pairs ready\n", key.join("  "))
}

/// Each distinct reason that blocks a pair, most pairs first, with the pairs.
fn reasons(r: &pb::ReadinessMatrixResponse, labels: &[String], paint: &Paint) -> String {
    let label: HashMap<&str, &str> = r
        .hosts
        .iter()
        .map(String::as_str)
        .zip(labels.iter().map(String::as_str))
        .collect();
    let name = |h: &str| label.get(h).map_or_else(|| h.to_owned(), |l| l.to_string());
    let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut blocked = 0;
    for c in r.cells.iter().filter(|c| c.readiness != pb::Readiness::Ready as i32) {
        blocked += 1;
        let pair = format!("{}→{}", name(&c.source), name(&c.destination));
        let mut why: Vec<String> = c.reasons.iter().map(|k| kind(*k)).collect();
        if why.is_empty() {
            why.push(if c.readiness == pb::Readiness::NotReady as i32 {
                "no reason given".to_owned()
            } else {
                "unknown".to_owned()
            });
        }
        why.dedup();
        for w in why {
            by_reason.entry(w).or_default().push(pair.clone());
        }
    }
    if blocked == 0 {
        return String::new();
    }
    let mut list: Vec<(String, Vec<String>)> = by_reason.into_iter().collect();
    list.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    let pairs = r.cells.len();
    let mut out = String::from("\nblocked by:\n");
    for (why, cells) in list {
        let which = if cells.len() == pairs && pairs > 1 {
            format!("all {pairs} pairs")
        } else if cells.len() > PAIRS_MAX {
            format!(
                "{}, … and {} more",
                cells[..PAIRS_MAX].join(", "),
                cells.len() - PAIRS_MAX
            )
        } else {
            cells.join(", ")
        };
        out.push_str(&format!(
            "  {} {why} ({}): {which}\n",
            paint.mark(NOT_READY),
            cells.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(s: &str, d: &str, ready: bool, reasons: &[pb::FindingKind]) -> pb::MatrixCell {
        pb::MatrixCell {
            source: s.into(),
            destination: d.into(),
            readiness: if ready {
                pb::Readiness::Ready
            } else {
                pb::Readiness::NotReady
            } as i32,
            reasons: reasons.iter().map(|k| *k as i32).collect(),
        }
    }

    /// Three hosts; HV01 is "Kerberos only", so nothing leaves it.
    fn three() -> pb::ReadinessMatrixResponse {
        let pt = pb::FindingKind::ProtocolTransitionMissing;
        pb::ReadinessMatrixResponse {
            hosts: vec!["hv01.lab.test".into(), "hv02.lab.test".into(), "hv03.lab.test".into()],
            cells: vec![
                cell("hv01.lab.test", "hv02.lab.test", false, &[pt]),
                cell("hv01.lab.test", "hv03.lab.test", false, &[pt]),
                cell("hv02.lab.test", "hv01.lab.test", true, &[]),
                cell("hv02.lab.test", "hv03.lab.test", true, &[]),
                cell("hv03.lab.test", "hv01.lab.test", true, &[]),
                cell(
                    "hv03.lab.test",
                    "hv02.lab.test",
                    false,
                    &[pb::FindingKind::DelegationEntryMissing],
                ),
            ],
        }
    }

    #[test]
    fn a_small_group_is_a_grid_of_short_names_with_its_reasons_below() {
        let text = render(&three(), false);
        assert_eq!(
            text,
            "\
FROM\\TO  HV01  HV02  HV03
HV01      ·     ✗     ✗
HV02      ✓     ·     ✓
HV03      ✓     ✗     ·
✓ ready  ✗ not ready  · same host   3 of 6 pairs ready

blocked by:
  ✗ protocol_transition_missing (2): HV01→HV02, HV01→HV03
  ✗ delegation_entry_missing (1): HV03→HV02
"
        );
        assert!(!text.contains('\x1b'), "no colour when told so");
    }

    #[test]
    fn colour_is_green_red_and_dim_and_keeps_the_columns() {
        let text = render(&three(), true);
        assert!(text.contains("\x1b[32m✓\x1b[0m") && text.contains("\x1b[31m✗\x1b[0m"));
        assert!(text.contains("\x1b[2m·\x1b[0m"));
        let plain: String = strip_ansi(&text);
        assert_eq!(plain, render(&three(), false), "colour codes take no column");
    }

    fn strip_ansi(s: &str) -> String {
        let mut out = String::new();
        let mut esc = false;
        for ch in s.chars() {
            match (esc, ch) {
                (false, '\x1b') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out
    }

    #[test]
    fn long_names_number_the_columns_and_keep_the_full_names_in_a_legend() {
        let hosts = ["hyperv-cluster-a-node-01.corp.contoso.com", "hv-b.corp.contoso.com"];
        let r = pb::ReadinessMatrixResponse {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            cells: vec![
                cell(hosts[0], hosts[1], true, &[]),
                cell(hosts[1], hosts[0], false, &[pb::FindingKind::AccountSensitive]),
            ],
        };
        let text = render(&r, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "FROM\\TO                 1  2");
        assert_eq!(lines[1], "1 HYPERV-CLUSTER-A-NO…  ·  ✓");
        assert_eq!(lines[2], "2 HV-B                  ✗  ·");
        assert!(
            text.contains("  1 = hyperv-cluster-a-node-01.corp.contoso.com\n"),
            "{text}"
        );
        assert!(text.contains("  2 = hv-b.corp.contoso.com\n"), "{text}");
        assert!(
            text.contains("account_sensitive (1): HV-B→HYPERV-CLUSTER-A-NODE-01"),
            "reasons name the pair in full: {text}"
        );
    }

    #[test]
    fn a_one_host_group_has_no_pairs() {
        let r = pb::ReadinessMatrixResponse {
            hosts: vec!["hv01.lab.test".into()],
            cells: Vec::new(),
        };
        assert_eq!(
            render(&r, true),
            "FROM\\TO  HV01\nHV01      \x1b[2m·\x1b[0m\nno pairs: the group has one host\n"
        );
        let empty = pb::ReadinessMatrixResponse::default();
        assert_eq!(render(&empty, false), "the group has no hosts\n");
    }

    #[test]
    fn a_reason_that_blocks_every_pair_says_so_and_long_lists_are_cut() {
        let hosts: Vec<String> = (1..=5).map(|i| format!("hv0{i}.lab.test")).collect();
        let mut cells = Vec::new();
        for s in &hosts {
            for d in hosts.iter().filter(|d| *d != s) {
                cells.push(cell(
                    s,
                    d,
                    false,
                    &[
                        pb::FindingKind::AccountSensitive,
                        pb::FindingKind::ProtocolTransitionMissing,
                    ],
                ));
            }
        }
        cells[0].reasons.truncate(1);
        let text = render(&pb::ReadinessMatrixResponse { hosts, cells }, false);
        assert!(text.contains("account_sensitive (20): all 20 pairs"), "{text}");
        assert!(text.contains("protocol_transition_missing (19): HV01→HV03, "), "{text}");
        assert!(text.contains(", … and 7 more"), "{text}");
        assert!(text.contains("0 of 20 pairs ready"), "{text}");
    }

    #[test]
    fn unknown_and_missing_cells_are_shown_as_such() {
        let mut r = three();
        r.cells[0].readiness = pb::Readiness::Unknown as i32;
        r.cells[0].reasons.clear();
        r.cells.remove(1);
        let text = render(&r, false);
        assert!(
            text.starts_with("FROM\\TO  HV01  HV02  HV03\nHV01      ·     ?     -\n"),
            "{text}"
        );
        assert!(text.contains("? unknown") && text.contains("- not answered"), "{text}");
        assert!(text.contains("unknown (1): HV01→HV02"), "{text}");
    }

    #[test]
    fn hosts_sharing_a_first_label_are_shown_in_full() {
        assert_eq!(
            labels(&["hv01.a.test".into(), "hv01.b.test".into()]),
            ["hv01.a.test", "hv01.b.test"]
        );
        assert_eq!(labels(&["hv01.a.test".into(), "HV02".into()]), ["HV01", "HV02"]);
    }
}
