//! MIT Kerberos' GSS-API (RFC 2744 C bindings, plus MIT's credential-store extension), the few
//! calls enrollment needs. Every handle is released by a guard, on every path.

#![allow(non_camel_case_types)]

use std::ffi::{CString, c_char, c_int, c_void};
use std::ptr;

use crate::{Acceptor, Client, ClientCreds, GssError, Proof};

type OM_uint32 = u32;

#[repr(C)]
struct gss_buffer_desc {
    length: usize,
    value: *mut c_void,
}

#[repr(C)]
struct gss_OID_desc {
    length: OM_uint32,
    elements: *mut c_void,
}

#[repr(C)]
struct gss_OID_set_desc {
    count: usize,
    elements: *mut gss_OID_desc,
}

#[repr(C)]
struct gss_key_value_element_desc {
    key: *const c_char,
    value: *const c_char,
}

#[repr(C)]
struct gss_key_value_set_desc {
    count: OM_uint32,
    elements: *mut gss_key_value_element_desc,
}

type gss_name_t = *mut c_void;
type gss_ctx_id_t = *mut c_void;
type gss_cred_id_t = *mut c_void;

const GSS_C_GSS_CODE: c_int = 1;
const GSS_C_MECH_CODE: c_int = 2;
const GSS_C_INDEFINITE: OM_uint32 = 0xffff_ffff;
const GSS_C_INITIATE: c_int = 1;
const GSS_C_ACCEPT: c_int = 2;
const GSS_C_REPLAY_FLAG: OM_uint32 = 4;
const GSS_C_INTEG_FLAG: OM_uint32 = 32;
const GSS_S_COMPLETE: OM_uint32 = 0;
const GSS_S_CONTINUE_NEEDED: OM_uint32 = 1;
/// The routine-error field of a major status (RFC 2744 3.9.1).
const ROUTINE_ERROR_MASK: OM_uint32 = 0xff << 16;
const CALLING_ERROR_MASK: OM_uint32 = 0xff << 24;

/// 1.2.840.113554.1.2.2: the Kerberos V5 mechanism.
const KRB5_MECH: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02";
/// 1.2.840.113554.1.2.2.1: GSS_KRB5_NT_PRINCIPAL_NAME ("name/instance@REALM").
const KRB5_NT_PRINCIPAL_NAME: &[u8] = b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01";

#[link(name = "gssapi_krb5")]
unsafe extern "C" {
    fn gss_import_name(
        minor: *mut OM_uint32,
        input: *const gss_buffer_desc,
        name_type: *const gss_OID_desc,
        output: *mut gss_name_t,
    ) -> OM_uint32;
    fn gss_release_name(minor: *mut OM_uint32, name: *mut gss_name_t) -> OM_uint32;
    fn gss_display_name(
        minor: *mut OM_uint32,
        name: gss_name_t,
        output: *mut gss_buffer_desc,
        name_type: *mut *mut gss_OID_desc,
    ) -> OM_uint32;
    fn gss_acquire_cred_from(
        minor: *mut OM_uint32,
        desired_name: gss_name_t,
        time_req: OM_uint32,
        desired_mechs: *const gss_OID_set_desc,
        usage: c_int,
        store: *const gss_key_value_set_desc,
        output: *mut gss_cred_id_t,
        actual_mechs: *mut *mut gss_OID_set_desc,
        time_rec: *mut OM_uint32,
    ) -> OM_uint32;
    fn gss_release_cred(minor: *mut OM_uint32, cred: *mut gss_cred_id_t) -> OM_uint32;
    fn gss_init_sec_context(
        minor: *mut OM_uint32,
        cred: gss_cred_id_t,
        ctx: *mut gss_ctx_id_t,
        target: gss_name_t,
        mech: *const gss_OID_desc,
        req_flags: OM_uint32,
        time_req: OM_uint32,
        bindings: *const c_void,
        input: *const gss_buffer_desc,
        actual_mech: *mut *mut gss_OID_desc,
        output: *mut gss_buffer_desc,
        ret_flags: *mut OM_uint32,
        time_rec: *mut OM_uint32,
    ) -> OM_uint32;
    fn gss_accept_sec_context(
        minor: *mut OM_uint32,
        ctx: *mut gss_ctx_id_t,
        cred: gss_cred_id_t,
        input: *const gss_buffer_desc,
        bindings: *const c_void,
        src_name: *mut gss_name_t,
        mech: *mut *mut gss_OID_desc,
        output: *mut gss_buffer_desc,
        ret_flags: *mut OM_uint32,
        time_rec: *mut OM_uint32,
        delegated: *mut gss_cred_id_t,
    ) -> OM_uint32;
    fn gss_delete_sec_context(minor: *mut OM_uint32, ctx: *mut gss_ctx_id_t, output: *mut gss_buffer_desc)
    -> OM_uint32;
    fn gss_get_mic(
        minor: *mut OM_uint32,
        ctx: gss_ctx_id_t,
        qop: OM_uint32,
        message: *const gss_buffer_desc,
        token: *mut gss_buffer_desc,
    ) -> OM_uint32;
    fn gss_verify_mic(
        minor: *mut OM_uint32,
        ctx: gss_ctx_id_t,
        message: *const gss_buffer_desc,
        token: *const gss_buffer_desc,
        qop: *mut OM_uint32,
    ) -> OM_uint32;
    fn gss_release_buffer(minor: *mut OM_uint32, buffer: *mut gss_buffer_desc) -> OM_uint32;
    fn gss_display_status(
        minor: *mut OM_uint32,
        status: OM_uint32,
        status_type: c_int,
        mech: *const gss_OID_desc,
        message_context: *mut OM_uint32,
        output: *mut gss_buffer_desc,
    ) -> OM_uint32;
}

// MIT's krb5 library, for one thing GSS-API cannot do: destroy a credential cache.
#[link(name = "krb5")]
unsafe extern "C" {
    fn krb5_init_context(ctx: *mut *mut c_void) -> i32;
    fn krb5_free_context(ctx: *mut c_void);
    fn krb5_cc_resolve(ctx: *mut c_void, name: *const c_char, cache: *mut *mut c_void) -> i32;
    fn krb5_cc_destroy(ctx: *mut c_void, cache: *mut c_void) -> i32;
}

/// A MEMORY credential cache of one initiation, destroyed on drop. A fresh one each time: a
/// TGT cached from an earlier attempt would be used again, and after the computer account's
/// password is reset (or the account re-created) the KDC refuses it as revoked until it expires
/// (10 h); and a cache per attempt that is never destroyed would grow with every retry.
struct TempCache(CString);

impl TempCache {
    fn new() -> TempCache {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TempCache(CString::new(format!("MEMORY:kcdsync-enroll-{}-{n}", std::process::id())).expect("no NUL"))
    }

    fn name(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempCache {
    fn drop(&mut self) {
        let mut ctx = ptr::null_mut();
        // SAFETY: a context of our own, freed below; the cache handle is consumed by destroy.
        unsafe {
            if krb5_init_context(&mut ctx) != 0 {
                return;
            }
            let mut cache = ptr::null_mut();
            if krb5_cc_resolve(ctx, self.0.as_ptr(), &mut cache) == 0 {
                krb5_cc_destroy(ctx, cache);
            }
            krb5_free_context(ctx);
        }
    }
}

fn oid(bytes: &'static [u8]) -> gss_OID_desc {
    gss_OID_desc {
        length: bytes.len() as OM_uint32,
        elements: bytes.as_ptr() as *mut c_void,
    }
}

/// A borrowed buffer for input arguments (GSS-API does not write through it).
fn borrowed(bytes: &[u8]) -> gss_buffer_desc {
    gss_buffer_desc {
        length: bytes.len(),
        value: bytes.as_ptr() as *mut c_void,
    }
}

/// A buffer GSS-API allocated, released on drop.
struct Owned(gss_buffer_desc);

impl Owned {
    fn empty() -> Owned {
        Owned(gss_buffer_desc {
            length: 0,
            value: ptr::null_mut(),
        })
    }

    fn to_vec(&self) -> Vec<u8> {
        if self.0.value.is_null() || self.0.length == 0 {
            return Vec::new();
        }
        // SAFETY: GSS-API filled `value` with `length` bytes it owns until released.
        unsafe { std::slice::from_raw_parts(self.0.value as *const u8, self.0.length) }.to_vec()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.0.value.is_null() {
            let mut minor = 0;
            // SAFETY: the buffer was filled by GSS-API and is released once.
            unsafe { gss_release_buffer(&mut minor, &mut self.0) };
        }
    }
}

struct Name(gss_name_t);

impl Name {
    fn import(principal: &str) -> Result<Name, GssError> {
        let nt = oid(KRB5_NT_PRINCIPAL_NAME);
        let input = borrowed(principal.as_bytes());
        let mut name: gss_name_t = ptr::null_mut();
        let mut minor = 0;
        // SAFETY: valid input buffer and OID for the call's duration; `name` receives a handle.
        let major = unsafe { gss_import_name(&mut minor, &input, &nt, &mut name) };
        let guard = Name(name);
        check("gss_import_name", major, minor)?;
        Ok(guard)
    }

    fn display(&self) -> Result<String, GssError> {
        let mut out = Owned::empty();
        let mut minor = 0;
        // SAFETY: a valid name handle; `out` receives a buffer released by its guard.
        let major = unsafe { gss_display_name(&mut minor, self.0, &mut out.0, ptr::null_mut()) };
        check("gss_display_name", major, minor)?;
        String::from_utf8(out.to_vec()).map_err(|_| GssError::invalid("the client principal is not UTF-8"))
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        if !self.0.is_null() {
            let mut minor = 0;
            // SAFETY: a handle from gss_import_name/gss_accept_sec_context, released once.
            unsafe { gss_release_name(&mut minor, &mut self.0) };
        }
    }
}

struct Cred(gss_cred_id_t);

impl Drop for Cred {
    fn drop(&mut self) {
        if !self.0.is_null() {
            let mut minor = 0;
            // SAFETY: a handle from gss_acquire_cred_from, released once.
            unsafe { gss_release_cred(&mut minor, &mut self.0) };
        }
    }
}

struct Ctx(gss_ctx_id_t);

impl Drop for Ctx {
    fn drop(&mut self) {
        if !self.0.is_null() {
            let mut minor = 0;
            // SAFETY: a context handle from init/accept, deleted once.
            unsafe { gss_delete_sec_context(&mut minor, &mut self.0, ptr::null_mut()) };
        }
    }
}

/// Acquires credentials from MIT's credential store: `store` pairs such as ("keytab", path).
fn acquire(name: Option<&Name>, usage: c_int, store: &[(&str, String)]) -> Result<Cred, GssError> {
    let owned: Vec<(CString, CString)> = store
        .iter()
        .map(|(k, v)| {
            Ok((
                CString::new(*k).map_err(|_| GssError::invalid("NUL in a credential store key"))?,
                CString::new(v.as_str()).map_err(|_| GssError::invalid(format!("NUL in the {k} path")))?,
            ))
        })
        .collect::<Result<_, GssError>>()?;
    let mut elements: Vec<gss_key_value_element_desc> = owned
        .iter()
        .map(|(k, v)| gss_key_value_element_desc {
            key: k.as_ptr(),
            value: v.as_ptr(),
        })
        .collect();
    let set = gss_key_value_set_desc {
        count: elements.len() as OM_uint32,
        elements: elements.as_mut_ptr(),
    };
    let mut mech = oid(KRB5_MECH);
    let mechs = gss_OID_set_desc {
        count: 1,
        elements: &mut mech,
    };
    let mut cred: gss_cred_id_t = ptr::null_mut();
    let mut minor = 0;
    // SAFETY: every pointer refers to locals that outlive the call; `cred` receives a handle.
    let major = unsafe {
        gss_acquire_cred_from(
            &mut minor,
            name.map_or(ptr::null_mut(), |n| n.0),
            GSS_C_INDEFINITE,
            &mechs,
            usage,
            &set,
            &mut cred,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    let guard = Cred(cred);
    check("gss_acquire_cred_from", major, minor)?;
    Ok(guard)
}

pub(crate) fn initiate(creds: &ClientCreds, service: &str, message: &[u8]) -> Result<Proof, GssError> {
    let mut store = Vec::new();
    if let Some(kt) = &creds.keytab {
        store.push(("client_keytab", kt.display().to_string()));
    }
    // With a keytab and no cache named, tickets go to a cache of this initiation only: nothing
    // of the host's identity is left on disk or in memory, and no other program's is touched.
    let mut _temp = None;
    match (&creds.ccache, &creds.keytab) {
        (Some(cc), _) => store.push(("ccache", cc.clone())),
        (None, Some(_)) => {
            let t = TempCache::new();
            store.push(("ccache", t.name()));
            _temp = Some(t);
        }
        (None, None) => {}
    }
    let me = creds.principal.as_deref().map(Name::import).transpose()?;
    let cred = acquire(me.as_ref(), GSS_C_INITIATE, &store)?;
    let target = Name::import(service)?;
    let mech = oid(KRB5_MECH);
    let mut ctx = Ctx(ptr::null_mut());
    let mut out = Owned::empty();
    let mut minor = 0;
    // SAFETY: handles are valid; `ctx` and `out` receive what the guards release.
    let major = unsafe {
        gss_init_sec_context(
            &mut minor,
            cred.0,
            &mut ctx.0,
            target.0,
            &mech,
            GSS_C_INTEG_FLAG | GSS_C_REPLAY_FLAG,
            GSS_C_INDEFINITE,
            ptr::null(),
            ptr::null(),
            ptr::null_mut(),
            &mut out.0,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    check("gss_init_sec_context", major, minor)?;
    if major == GSS_S_CONTINUE_NEEDED {
        return Err(GssError::invalid(
            "Kerberos wanted a second round trip (mutual authentication was not asked for)",
        ));
    }
    let token = out.to_vec();
    let mic = get_mic(&ctx, message)?;
    Ok(Proof { token, mic })
}

fn get_mic(ctx: &Ctx, message: &[u8]) -> Result<Vec<u8>, GssError> {
    let msg = borrowed(message);
    let mut out = Owned::empty();
    let mut minor = 0;
    // SAFETY: an established context; `out` receives a buffer released by its guard.
    let major = unsafe { gss_get_mic(&mut minor, ctx.0, 0, &msg, &mut out.0) };
    check("gss_get_mic", major, minor)?;
    Ok(out.to_vec())
}

fn acceptor_cred(acc: &Acceptor) -> Result<Cred, GssError> {
    let me = Name::import(&acc.principal)?;
    acquire(Some(&me), GSS_C_ACCEPT, &[("keytab", acc.keytab.display().to_string())])
}

pub(crate) fn check_acceptor(acc: &Acceptor) -> Result<(), GssError> {
    acceptor_cred(acc).map(drop)
}

pub(crate) fn accept(acc: &Acceptor, token: &[u8], message: &[u8], mic: &[u8]) -> Result<Client, GssError> {
    let cred = acceptor_cred(acc)?;
    let input = borrowed(token);
    let mut ctx = Ctx(ptr::null_mut());
    let mut src = Name(ptr::null_mut());
    let mut out = Owned::empty();
    let mut minor = 0;
    // SAFETY: handles are valid; `ctx`, `src` and `out` receive what their guards release.
    let major = unsafe {
        gss_accept_sec_context(
            &mut minor,
            &mut ctx.0,
            cred.0,
            &input,
            ptr::null(),
            &mut src.0,
            ptr::null_mut(),
            &mut out.0,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    check("gss_accept_sec_context", major, minor)?;
    if major != GSS_S_COMPLETE {
        return Err(GssError::invalid(
            "the token asks for more than one round trip (mutual authentication): send the initial Kerberos token only",
        ));
    }
    let msg = borrowed(message);
    let sig = borrowed(mic);
    let mut qop = 0;
    // SAFETY: an established context and borrowed buffers.
    let major = unsafe { gss_verify_mic(&mut minor, ctx.0, &msg, &sig, &mut qop) };
    check("gss_verify_mic", major, minor)?;
    Ok(Client {
        principal: src.display()?,
    })
}

/// `Err` with GSS-API's own words when `major` is an error; supplementary info bits (old or
/// duplicate tokens are errors for a one-shot context, and MIT reports them as such) pass.
fn check(call: &'static str, major: OM_uint32, minor: OM_uint32) -> Result<(), GssError> {
    if major & (ROUTINE_ERROR_MASK | CALLING_ERROR_MASK) == 0 {
        return Ok(());
    }
    let mut words = status_text(major, GSS_C_GSS_CODE);
    let mech = status_text(minor, GSS_C_MECH_CODE);
    if minor != 0 && !mech.is_empty() && mech != "Success" {
        words = format!("{words}: {mech}");
    }
    Err(GssError::Call { call, message: words })
}

fn status_text(code: OM_uint32, kind: c_int) -> String {
    let mech = oid(KRB5_MECH);
    let mut context = 0;
    let mut parts = Vec::new();
    // gss_display_status hands out one line per call until the context is 0 again.
    for _ in 0..8 {
        let mut out = Owned::empty();
        let mut minor = 0;
        // SAFETY: `out` receives a buffer released by its guard.
        let major = unsafe { gss_display_status(&mut minor, code, kind, &mech, &mut context, &mut out.0) };
        if major != GSS_S_COMPLETE {
            break;
        }
        let line = String::from_utf8_lossy(&out.to_vec()).trim().to_owned();
        if !line.is_empty() {
            parts.push(line);
        }
        if context == 0 {
            break;
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keytab_that_does_not_exist_is_named_in_the_error() {
        let acc = Acceptor {
            principal: "kcdsync/ctl.example.test@EXAMPLE.TEST".into(),
            keytab: "/nonexistent/kcdsync.keytab".into(),
        };
        let e = check_acceptor(&acc).unwrap_err().to_string();
        assert!(e.starts_with("gss_acquire_cred_from failed"), "{e}");
    }

    #[test]
    fn garbage_is_not_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let acc = Acceptor {
            principal: "kcdsync/ctl.example.test@EXAMPLE.TEST".into(),
            keytab: dir.path().join("none.keytab"),
        };
        assert!(accept(&acc, b"\x60\x03\x06\x01\x00", b"m", b"x").is_err());
    }
}
