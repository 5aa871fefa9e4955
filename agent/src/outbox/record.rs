//! One attempt file: `KOB1`, the payload's length (u32 LE), the attempt's
//! protobuf encoding, and an FNV-1a 64 of the payload (u64 LE). The length
//! and the hash catch a file cut short or damaged on disk, which a bare
//! protobuf would often decode as a plausible, shorter attempt.
//!
//! Files without the magic are read as agents before it wrote them: the bare
//! protobuf.

use kcdsync_proto::v1::MigrationAttempt;
use prost::Message;

const MAGIC: &[u8; 4] = b"KOB1";

pub fn encode(a: &MigrationAttempt) -> Vec<u8> {
    let payload = a.encode_to_vec();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&fnv1a(&payload).to_le_bytes());
    out
}

/// The attempt in `bytes`, or what is wrong with the file.
pub fn decode(bytes: &[u8]) -> Result<MigrationAttempt, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let payload = match bytes.strip_prefix(MAGIC) {
        Some(rest) => framed_payload(rest)?,
        None => bytes,
    };
    let a = MigrationAttempt::decode(payload).map_err(|e| format!("not a migration attempt: {e}"))?;
    if a.attempt_id.is_empty() {
        return Err("the attempt has no id".into());
    }
    Ok(a)
}

fn framed_payload(rest: &[u8]) -> Result<&[u8], String> {
    let (len, rest) = rest.split_at_checked(4).ok_or("truncated in its header")?;
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    if rest.len() != len + 8 {
        return Err(format!(
            "truncated or padded: {} bytes after the header, {} expected",
            rest.len(),
            len + 8
        ));
    }
    let (payload, hash) = rest.split_at(len);
    if fnv1a(payload).to_le_bytes() != hash {
        return Err("its checksum does not match (damaged on disk)".into());
    }
    Ok(payload)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt() -> MigrationAttempt {
        MigrationAttempt {
            attempt_id: "hv01:7".into(),
            vm_name: "vm".into(),
            message: "No credentials are available in the security package (0x8009030E)".into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_attempt_reads_back_as_written() {
        assert_eq!(decode(&encode(&attempt())).unwrap(), attempt());
    }

    #[test]
    fn a_file_of_an_agent_before_the_frame_is_still_read() {
        assert_eq!(decode(&attempt().encode_to_vec()).unwrap(), attempt());
    }

    #[test]
    fn every_cut_of_a_file_is_refused() {
        let bytes = encode(&attempt());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "cut at {n} of {} bytes", bytes.len());
        }
    }

    #[test]
    fn a_flipped_byte_and_garbage_are_refused() {
        let mut bytes = encode(&attempt());
        bytes[12] ^= 0x20;
        assert!(decode(&bytes).unwrap_err().contains("checksum"));
        assert!(decode(b"\xff\xff\xff").is_err());
        assert!(decode(&MigrationAttempt::default().encode_to_vec()).is_err(), "no id");
    }
}
