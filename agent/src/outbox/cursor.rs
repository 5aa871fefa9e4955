//! The cursor file: where the event-log reader stopped, as one line of text
//! that ends with `end`, so a truncated file is seen as one.
//!
//! `kcdsync-cursor v2 record_id=4714 record_time_ms=1700000000000 log_generation=- end`
//!
//! Agents before v2 wrote the RecordId alone; that is still read.

use crate::probe::Cursor;

const MAGIC: &str = "kcdsync-cursor";

pub fn encode(c: &Cursor) -> String {
    let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    format!(
        "{MAGIC} v2 record_id={} record_time_ms={} log_generation={} end\n",
        c.record_id,
        opt(c.record_time_ms),
        opt(c.log_generation)
    )
}

/// The cursor in `text`, or what is wrong with it.
pub fn decode(text: &str) -> Result<Cursor, String> {
    let line = text.trim();
    if line.is_empty() {
        return Err("the file is empty".into());
    }
    if let Ok(record_id) = line.parse::<u64>() {
        return Ok(Cursor::at(record_id));
    }
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let [MAGIC, "v2", record_id, record_time, generation, "end"] = words[..] else {
        return Err(format!("`{}` is not a kcdsync cursor (truncated?)", snippet(line)));
    };
    let field = |word: &str, key: &str| -> Result<String, String> {
        word.strip_prefix(key)
            .and_then(|w| w.strip_prefix('='))
            .map(str::to_owned)
            .ok_or_else(|| format!("expected `{key}=…`, found `{}`", snippet(word)))
    };
    let opt = |v: String, key: &str| -> Result<Option<i64>, String> {
        match v.as_str() {
            "-" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .map_err(|_| format!("`{key}` is not a number: `{}`", snippet(v))),
        }
    };
    Ok(Cursor {
        record_id: field(record_id, "record_id")?
            .parse()
            .map_err(|_| format!("`record_id` is not a number: `{}`", snippet(record_id)))?,
        record_time_ms: opt(field(record_time, "record_time_ms")?, "record_time_ms")?,
        log_generation: opt(field(generation, "log_generation")?, "log_generation")?,
    })
}

fn snippet(s: &str) -> String {
    let cut: String = s.chars().take(60).collect();
    cut.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written() {
        for c in [
            Cursor::default(),
            Cursor {
                record_id: 4714,
                record_time_ms: Some(1_700_000_000_123),
                log_generation: Some(1_700_000_100_000),
            },
        ] {
            assert_eq!(decode(&encode(&c)).unwrap(), c);
        }
    }

    #[test]
    fn an_old_agents_cursor_is_still_read() {
        assert_eq!(decode("4714\n").unwrap(), Cursor::at(4714));
    }

    #[test]
    fn empty_truncated_and_garbage_cursors_are_refused_with_the_reason() {
        let full = encode(&Cursor {
            record_id: 4714,
            record_time_ms: Some(1),
            log_generation: None,
        });
        assert!(decode("").unwrap_err().contains("empty"));
        assert!(decode("  \n").unwrap_err().contains("empty"));
        assert!(decode(&full[..full.len() - 6]).unwrap_err().contains("truncated"));
        assert!(decode("\u{0}\u{ff}garbage").is_err());
        assert!(decode("kcdsync-cursor v2 record_id=x record_time_ms=- log_generation=- end").is_err());
    }
}
