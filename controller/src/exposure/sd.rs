//! The part of an NT security descriptor that resource-based constrained
//! delegation uses: the SIDs of the DACL's allow and deny ACEs.
//!
//! `msDS-AllowedToActOnBehalfOfOtherIdentity` holds a self-relative security
//! descriptor (MS-DTYP 2.4.6) on the *target*; every SID an allow ACE names
//! may delegate to it (S4U2Proxy), with protocol transition. The bytes come
//! from AD, where anyone with write access to the attribute chose them, so
//! they are hostile input: every offset and length is checked against the
//! buffer before it is read, the loop is bounded by the ACL's own size, and
//! nothing is allocated from a length field beyond what the buffer holds.
//! Owner, group and SACL are not read.

/// A security descriptor is at most 64 KiB (its ACL sizes are 16-bit); a
/// value longer than this is refused instead of walked.
pub const MAX_SD_BYTES: usize = 64 * 1024;
/// MS-DTYP 2.4.2: a SID has at most 15 sub-authorities.
const MAX_SUB_AUTHORITIES: usize = 15;
const SE_DACL_PRESENT: u16 = 0x0004;
const SE_SELF_RELATIVE: u16 = 0x8000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdError {
    #[error("the security descriptor is {0} bytes, more than the {MAX_SD_BYTES} a descriptor can be")]
    TooLong(usize),
    #[error("the security descriptor is cut short: {0}")]
    Truncated(&'static str),
    #[error("the security descriptor is malformed: {0}")]
    Malformed(&'static str),
}

/// The DACL's SIDs: who an allow ACE names, and who a deny ACE names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaclSids {
    pub allowed: Vec<String>,
    pub denied: Vec<String>,
}

impl DaclSids {
    /// The principals that may delegate: allowed and not denied.
    pub fn effective(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .allowed
            .iter()
            .filter(|s| !self.denied.contains(s))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Reads `n` bytes at `at`, or says what was cut short.
fn bytes<'a>(buf: &'a [u8], at: usize, n: usize, what: &'static str) -> Result<&'a [u8], SdError> {
    at.checked_add(n)
        .and_then(|end| buf.get(at..end))
        .ok_or(SdError::Truncated(what))
}

fn u16_at(buf: &[u8], at: usize, what: &'static str) -> Result<u16, SdError> {
    let b = bytes(buf, at, 2, what)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(buf: &[u8], at: usize, what: &'static str) -> Result<u32, SdError> {
    let b = bytes(buf, at, 4, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A binary SID (MS-DTYP 2.4.2) in its string form `S-1-5-21-…`, and the
/// number of bytes it takes.
pub fn sid_from_bytes(buf: &[u8]) -> Result<(String, usize), SdError> {
    let head = bytes(buf, 0, 8, "SID header")?;
    if head[0] != 1 {
        return Err(SdError::Malformed("SID revision is not 1"));
    }
    let count = usize::from(head[1]);
    if count > MAX_SUB_AUTHORITIES {
        return Err(SdError::Malformed("SID has more than 15 sub-authorities"));
    }
    let authority = head[2..8].iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
    let mut s = format!("S-1-{authority}");
    for i in 0..count {
        s.push_str(&format!("-{}", u32_at(buf, 8 + 4 * i, "SID sub-authority")?));
    }
    Ok((s, 8 + 4 * count))
}

/// The DACL SIDs of a self-relative security descriptor. A descriptor
/// without a DACL names nobody.
pub fn dacl_sids(sd: &[u8]) -> Result<DaclSids, SdError> {
    if sd.len() > MAX_SD_BYTES {
        return Err(SdError::TooLong(sd.len()));
    }
    let head = bytes(sd, 0, 20, "header")?;
    if head[0] != 1 {
        return Err(SdError::Malformed("revision is not 1"));
    }
    let control = u16::from_le_bytes([head[2], head[3]]);
    if control & SE_SELF_RELATIVE == 0 {
        // An absolute descriptor holds pointers, which mean nothing on the wire.
        return Err(SdError::Malformed("not self-relative"));
    }
    let dacl_at = u32_at(sd, 16, "DACL offset")? as usize;
    if control & SE_DACL_PRESENT == 0 || dacl_at == 0 {
        return Ok(DaclSids::default());
    }
    let acl = bytes(sd, dacl_at, 8, "DACL header")?;
    if !matches!(acl[0], 2 | 4) {
        return Err(SdError::Malformed("ACL revision is not 2 or 4"));
    }
    let acl_size = usize::from(u16::from_le_bytes([acl[2], acl[3]]));
    let ace_count = u16::from_le_bytes([acl[4], acl[5]]);
    if acl_size < 8 {
        return Err(SdError::Malformed("ACL size is smaller than its header"));
    }
    // Every ACE must lie inside the ACL, and the ACL inside the buffer.
    let acl_bytes = bytes(sd, dacl_at, acl_size, "DACL")?;
    let mut out = DaclSids::default();
    let mut at = 8usize;
    for _ in 0..ace_count {
        let ace_type = bytes(acl_bytes, at, 1, "ACE header")?[0];
        let ace_size = usize::from(u16_at(acl_bytes, at + 2, "ACE header")?);
        if ace_size < 8 {
            return Err(SdError::Malformed("ACE size is smaller than its header"));
        }
        let ace = bytes(acl_bytes, at, ace_size, "ACE")?;
        if let Some((allow, sid)) = ace_sid(ace_type, ace)? {
            if allow {
                out.allowed.push(sid);
            } else {
                out.denied.push(sid);
            }
        }
        at += ace_size;
    }
    Ok(out)
}

/// `(allow, SID)` of one ACE (header included); `None` for ACE types that
/// grant or deny nothing to a SID here (audit, alarm, label, unknown).
fn ace_sid(ace_type: u8, ace: &[u8]) -> Result<Option<(bool, String)>, SdError> {
    // After the 4-byte header: the access mask, then either the SID, or
    // (object ACEs) flags and up to two GUIDs before it.
    let (allow, object) = match ace_type {
        0x00 | 0x09 => (true, false),  // ACCESS_ALLOWED(_CALLBACK)
        0x01 | 0x0A => (false, false), // ACCESS_DENIED(_CALLBACK)
        0x05 | 0x0B => (true, true),   // ACCESS_ALLOWED(_CALLBACK)_OBJECT
        0x06 | 0x0C => (false, true),  // ACCESS_DENIED(_CALLBACK)_OBJECT
        _ => return Ok(None),
    };
    let mut sid_at = 8;
    if object {
        let flags = u32_at(ace, 8, "object ACE flags")?;
        sid_at = 12 + 16 * usize::from(flags & 1 != 0) + 16 * usize::from(flags & 2 != 0);
    }
    let rest = ace.get(sid_at..).ok_or(SdError::Truncated("ACE SID"))?;
    let (sid, _) = sid_from_bytes(rest)?;
    Ok(Some((allow, sid)))
}

/// A SID string back to bytes: for building descriptors in tests and lab
/// fixtures. `None` when it is not `S-1-<authority>(-<sub>){0,15}`.
pub fn sid_to_bytes(sid: &str) -> Option<Vec<u8>> {
    let mut parts = sid.strip_prefix("S-1-")?.split('-');
    let authority: u64 = parts.next()?.parse().ok().filter(|a| *a < 1 << 48)?;
    let subs: Vec<u32> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if subs.len() > MAX_SUB_AUTHORITIES {
        return None;
    }
    let mut out = vec![1, subs.len() as u8];
    out.extend_from_slice(&authority.to_be_bytes()[2..]);
    for s in subs {
        out.extend_from_slice(&s.to_le_bytes());
    }
    Some(out)
}

/// A self-relative descriptor whose DACL allows each of `sids` (what
/// `Set-ADComputer -PrincipalsAllowedToDelegateToAccount` writes: owner
/// BUILTIN\Administrators, one ACCESS_ALLOWED ACE with GENERIC_ALL per SID).
pub fn rbcd_descriptor(sids: &[&str]) -> Option<Vec<u8>> {
    let owner = sid_to_bytes("S-1-5-32-544")?;
    let mut aces = Vec::new();
    for s in sids {
        let sid = sid_to_bytes(s)?;
        aces.push(0x00); // ACCESS_ALLOWED_ACE_TYPE
        aces.push(0x00);
        aces.extend_from_slice(&((8 + sid.len()) as u16).to_le_bytes());
        aces.extend_from_slice(&0x000F_01FFu32.to_le_bytes());
        aces.extend_from_slice(&sid);
    }
    let dacl_at = 20 + owner.len();
    let mut sd = vec![1, 0];
    sd.extend_from_slice(&(SE_SELF_RELATIVE | SE_DACL_PRESENT).to_le_bytes());
    sd.extend_from_slice(&20u32.to_le_bytes()); // owner
    sd.extend_from_slice(&0u32.to_le_bytes()); // group
    sd.extend_from_slice(&0u32.to_le_bytes()); // SACL
    sd.extend_from_slice(&(dacl_at as u32).to_le_bytes());
    sd.extend_from_slice(&owner);
    sd.extend_from_slice(&[4, 0]);
    sd.extend_from_slice(&((8 + aces.len()) as u16).to_le_bytes());
    sd.extend_from_slice(&(sids.len() as u16).to_le_bytes());
    sd.extend_from_slice(&[0, 0]);
    sd.extend_from_slice(&aces);
    Some(sd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOST: &str = "S-1-5-21-187273505-1024658784-1232407828-1105";

    #[test]
    fn the_descriptor_windows_writes_names_its_principals() {
        let sd = rbcd_descriptor(&[HOST, "S-1-5-21-1-2-3-500"]).unwrap();
        let got = dacl_sids(&sd).unwrap();
        assert_eq!(got.allowed, vec![HOST.to_owned(), "S-1-5-21-1-2-3-500".to_owned()]);
        assert!(got.denied.is_empty());
    }

    #[test]
    fn a_deny_ace_takes_a_principal_out() {
        let mut sd = rbcd_descriptor(&[HOST, HOST]).unwrap();
        // Turn the second ACE into ACCESS_DENIED: the first ACE starts after
        // the header (20), the owner SID (16) and the ACL header (8).
        let second = 20 + 16 + 8 + 8 + 28;
        sd[second] = 0x01;
        let got = dacl_sids(&sd).unwrap();
        assert_eq!((got.allowed.len(), got.denied.len()), (1, 1));
        assert!(got.effective().is_empty());
    }

    #[test]
    fn a_descriptor_without_a_dacl_names_nobody() {
        let mut sd = rbcd_descriptor(&[HOST]).unwrap();
        sd[2] &= !(SE_DACL_PRESENT as u8);
        assert_eq!(dacl_sids(&sd).unwrap(), DaclSids::default());
    }

    #[test]
    fn sids_read_and_write_alike() {
        for s in [HOST, "S-1-5-32-544", "S-1-1-0", "S-1-5-18"] {
            let b = sid_to_bytes(s).unwrap();
            assert_eq!(sid_from_bytes(&b).unwrap(), (s.to_owned(), b.len()));
        }
        assert_eq!(sid_to_bytes("S-1-5-x"), None);
    }

    #[test]
    fn hostile_descriptors_are_refused_not_walked() {
        let sd = rbcd_descriptor(&[HOST]).unwrap();
        for cut in 0..sd.len() {
            assert!(dacl_sids(&sd[..cut]).is_err(), "cut at {cut}");
        }
        // An ACE count far beyond what the ACL holds.
        let mut many = sd.clone();
        many[20 + 16 + 4] = 0xff;
        many[20 + 16 + 5] = 0xff;
        assert!(matches!(dacl_sids(&many), Err(SdError::Truncated(_))));
        // An ACE of size 0 would loop forever on the same offset.
        let mut zero = sd.clone();
        zero[20 + 16 + 8 + 2] = 0;
        zero[20 + 16 + 8 + 3] = 0;
        assert!(matches!(dacl_sids(&zero), Err(SdError::Malformed(_))));
        // A DACL offset pointing far outside the buffer.
        let mut far = sd.clone();
        far[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(dacl_sids(&far).is_err());
        assert!(matches!(
            dacl_sids(&vec![0u8; MAX_SD_BYTES + 1]),
            Err(SdError::TooLong(_))
        ));
    }

    fn sid() -> impl Strategy<Value = String> {
        (0u64..(1 << 48), proptest::collection::vec(any::<u32>(), 0..=15)).prop_map(|(a, subs)| {
            let mut s = format!("S-1-{a}");
            for x in subs {
                s.push_str(&format!("-{x}"));
            }
            s
        })
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = dacl_sids(&b);
            let _ = sid_from_bytes(&b);
        }

        #[test]
        fn any_bytes_after_a_valid_header_parse_or_fail(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut sd = rbcd_descriptor(&[]).unwrap();
            sd.truncate(20 + 16);
            sd.extend_from_slice(&tail);
            let _ = dacl_sids(&sd);
        }

        #[test]
        fn every_principal_written_is_read_back(sids in proptest::collection::vec(sid(), 0..20)) {
            let refs: Vec<&str> = sids.iter().map(String::as_str).collect();
            let sd = rbcd_descriptor(&refs).unwrap();
            prop_assert_eq!(dacl_sids(&sd).unwrap().allowed, sids);
        }

        #[test]
        fn a_flipped_byte_never_panics(sids in proptest::collection::vec(sid(), 1..5), at in any::<usize>(), v in any::<u8>()) {
            let refs: Vec<&str> = sids.iter().map(String::as_str).collect();
            let mut sd = rbcd_descriptor(&refs).unwrap();
            let i = at % sd.len();
            sd[i] = v;
            let _ = dacl_sids(&sd);
        }
    }
}
