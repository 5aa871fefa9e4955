use super::*;

fn attempt(id: &str) -> MigrationAttempt {
    MigrationAttempt {
        attempt_id: id.into(),
        vm_name: "vm".into(),
        ..Default::default()
    }
}

fn ids(o: &Outbox) -> Vec<&str> {
    o.pending().map(|a| a.attempt_id.as_str()).collect()
}

fn open(dir: &Path) -> Outbox {
    Outbox::open(dir, DEFAULT_MAX_BYTES).unwrap()
}

/// Files in `dir` whose name contains `part`.
fn files_with(dir: &Path, part: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(part))
        .collect();
    v.sort();
    v
}

fn attempt_file(dir: &Path, pos: u64) -> PathBuf {
    dir.join(format!("{pos:020}{SUFFIX}"))
}

#[test]
fn attempts_survive_reopen_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path());
    o.push(&[attempt("h:1"), attempt("h:2"), attempt("h:3")], Cursor::at(3))
        .unwrap();
    o.push(&[attempt("h:2")], Cursor::at(3)).unwrap();
    assert_eq!(o.len(), 3, "an id already waiting is not stored twice");
    drop(o);

    let mut o = open(dir.path());
    assert_eq!(o.cursor(), &Cursor::at(3));
    assert_eq!(ids(&o), ["h:1", "h:2", "h:3"], "oldest first");
    assert_eq!(o.ack(["h:2", "h:unknown"]).unwrap(), 1);
    drop(o);

    let mut o = open(dir.path());
    assert_eq!(ids(&o), ["h:1", "h:3"]);
    o.push(&[attempt("h:4")], Cursor::at(4)).unwrap();
    assert_eq!(ids(&o), ["h:1", "h:3", "h:4"], "new attempts go after the old ones");
    assert!(o.problems().is_empty());
}

#[test]
fn a_crash_between_the_attempts_and_the_cursor_stores_each_attempt_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path());
    o.push(&[attempt("h:1")], Cursor::at(1)).unwrap();
    // The attempts of the next page are on disk, the cursor is not: what a
    // crash at that point leaves.
    o.push(&[attempt("h:2"), attempt("h:3")], Cursor::at(1)).unwrap();
    drop(o);

    let mut o = open(dir.path());
    assert_eq!(o.cursor(), &Cursor::at(1), "the cursor did not move");
    // The restarted agent reads the same page again, same ids.
    o.push(&[attempt("h:2"), attempt("h:3")], Cursor::at(3)).unwrap();
    assert_eq!(ids(&o), ["h:1", "h:2", "h:3"]);
    assert_eq!(files_with(dir.path(), SUFFIX).len(), 3);
}

#[test]
fn half_written_files_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("00000000000000000007.tmp"), b"partial").unwrap();
    fs::write(dir.path().join("cursor.tmp"), b"kcdsync-cur").unwrap();
    let o = open(dir.path());
    assert!(o.is_empty());
    assert!(files_with(dir.path(), ".tmp").is_empty());
    assert!(o.problems().is_empty(), "an unfinished write is no problem");
}

/// An outbox holding h:1 and h:3, with `bad` as the file between them.
fn outbox_with_a_bad_file(bad: impl FnOnce(&Path)) -> (tempfile::TempDir, Outbox) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path());
    o.push(&[attempt("h:1"), attempt("h:2"), attempt("h:3")], Cursor::at(3))
        .unwrap();
    drop(o);
    bad(&attempt_file(dir.path(), 1));
    let o = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).expect("a bad file is never fatal");
    (dir, o)
}

fn assert_quarantined(dir: &Path, o: &Outbox, what: &str) {
    assert_eq!(ids(o), ["h:1", "h:3"], "the good attempts load");
    let aside = files_with(dir, ".corrupt-");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        aside[0].starts_with("00000000000000000001.attempt.corrupt-"),
        "{aside:?}"
    );
    let problems = o.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("00000000000000000001.attempt"),
        "names the file: {problems:?}"
    );
    assert!(problems[0].contains(what), "says why: {problems:?}");
    assert!(problems[0].contains("delete it"), "says what to do: {problems:?}");
}

#[test]
fn an_empty_attempt_file_is_quarantined_not_fatal() {
    let (dir, o) = outbox_with_a_bad_file(|p| fs::write(p, b"").unwrap());
    assert_quarantined(dir.path(), &o, "empty");
}

#[test]
fn a_truncated_attempt_file_is_quarantined_not_fatal() {
    let (dir, o) = outbox_with_a_bad_file(|p| {
        let bytes = fs::read(p).unwrap();
        fs::write(p, &bytes[..bytes.len() - 3]).unwrap();
    });
    assert_quarantined(dir.path(), &o, "truncated");
}

#[test]
fn a_garbage_attempt_file_is_quarantined_not_fatal() {
    let (dir, o) = outbox_with_a_bad_file(|p| fs::write(p, b"\xff\xff\xff not protobuf").unwrap());
    assert_quarantined(dir.path(), &o, "not a migration attempt");
}

#[test]
fn a_quarantined_file_is_reported_again_after_a_restart_and_never_loaded() {
    let (dir, o) = outbox_with_a_bad_file(|p| fs::write(p, b"").unwrap());
    drop(o);
    let o = open(dir.path());
    assert_eq!(ids(&o), ["h:1", "h:3"]);
    let problems = o.problems();
    assert!(problems[0].contains("quarantined earlier"), "{problems:?}");
}

#[test]
fn an_empty_truncated_or_garbage_cursor_is_quarantined_and_the_log_read_again() {
    let written = cursor::encode(&Cursor {
        record_id: 4714,
        record_time_ms: Some(1_700_000_000_000),
        log_generation: None,
    });
    for (bad, why) in [
        (String::new(), "empty"),
        (written[..written.len() - 5].to_owned(), "truncated"),
        ("\u{0}garbage\u{7f}".to_owned(), "not a kcdsync cursor"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path());
        o.push(&[attempt("h:4714")], Cursor::at(4714)).unwrap();
        drop(o);
        fs::write(dir.path().join(CURSOR_FILE), &bad).unwrap();

        let mut o = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).expect("a bad cursor is never fatal");
        assert_eq!(o.cursor(), &Cursor::default(), "read the log again from its start");
        assert_eq!(files_with(dir.path(), "cursor.corrupt-").len(), 1);
        let problems = o.problems();
        assert!(
            problems[0].contains("cursor") && problems[0].contains(why),
            "{problems:?}"
        );
        assert!(problems[0].contains("read again from its start"), "{problems:?}");
        // Reading the log again yields the same ids: stored once.
        o.push(&[attempt("h:4713"), attempt("h:4714")], Cursor::at(4714))
            .unwrap();
        assert_eq!(ids(&o), ["h:4714", "h:4713"]);
    }
}

#[test]
fn at_the_cap_the_outbox_says_full_keeps_what_it_has_and_drains_with_acks() {
    let dir = tempfile::tempdir().unwrap();
    let one = attempt("h:1").encoded_len() as u64;
    let mut o = Outbox::open(dir.path(), 3 * one).unwrap();
    o.push(&[attempt("h:1"), attempt("h:2")], Cursor::at(2)).unwrap();
    assert!(!o.is_full());
    o.push(&[attempt("h:3")], Cursor::at(3)).unwrap();
    assert!(o.is_full(), "{} of {} bytes", o.bytes(), o.max_bytes());
    // The cap is the caller's signal to stop reading the log: nothing stored
    // is dropped, the oldest go out first.
    assert_eq!(ids(&o), ["h:1", "h:2", "h:3"]);
    drop(o);

    let mut o = Outbox::open(dir.path(), 3 * one).unwrap();
    assert!(o.is_full(), "the size is known again after a restart");
    o.ack(["h:1"]).unwrap();
    assert!(!o.is_full());
    assert_eq!(o.bytes(), 2 * one);
}

#[test]
fn an_attempt_set_aside_is_moved_out_reported_and_never_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = open(dir.path());
    o.push(&[attempt("h:1"), attempt("h:2")], Cursor::at(2)).unwrap();
    o.set_aside("h:1", "3000000 bytes, more than a message may hold (1048576)");
    assert_eq!(ids(&o), ["h:2"]);
    let aside = files_with(dir.path(), ".too-large-");
    assert_eq!(aside.len(), 1);
    assert!(o.problems()[0].contains("h:1") && o.problems()[0].contains("max_message_bytes"));
    drop(o);
    assert_eq!(ids(&open(dir.path())), ["h:2"]);
}
