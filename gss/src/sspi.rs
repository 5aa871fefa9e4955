//! SSPI's Kerberos package: the initiator side of enrollment on Windows. Running as SYSTEM
//! (the agent's service), the outbound credentials are the computer account's (`HV01$`):
//! nothing to configure, nothing on disk. The context token is a GSS-API Kerberos token and
//! `MakeSignature` an RFC 4121 MIC, which MIT's `gss_verify_mic` checks on the controller.

use std::ffi::c_void;
use std::ptr;

use windows_sys::Win32::Security::Authentication::Identity::{
    AcquireCredentialsHandleW, DeleteSecurityContext, FreeCredentialsHandle, ISC_REQ_INTEGRITY, ISC_REQ_REPLAY_DETECT,
    InitializeSecurityContextW, MakeSignature, QueryContextAttributesW, SECBUFFER_DATA, SECBUFFER_TOKEN,
    SECBUFFER_VERSION, SECPKG_ATTR_SIZES, SECPKG_CRED_OUTBOUND, SECURITY_NATIVE_DREP, SecBuffer, SecBufferDesc,
    SecPkgContext_Sizes,
};
use windows_sys::Win32::Security::Credentials::SecHandle;

use crate::{GssError, Proof};

const SEC_E_OK: i32 = 0;
const SEC_I_CONTINUE_NEEDED: i32 = 0x0009_0312;

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

fn failed(call: &'static str, status: i32) -> GssError {
    let hint = match status as u32 {
        0x8009_0311 => " (SEC_E_NO_AUTHENTICATING_AUTHORITY: no KDC could be reached)",
        0x8009_030E => " (SEC_E_NO_CREDENTIALS: the service does not run as SYSTEM or the host is not joined)",
        0x8009_0303 => " (SEC_E_TARGET_UNKNOWN: no account in AD has the controller's service principal)",
        _ => "",
    };
    GssError::Call {
        call,
        message: format!("SSPI status 0x{:08X}{hint}", status as u32),
    }
}

struct Cred(SecHandle);

impl Drop for Cred {
    fn drop(&mut self) {
        // SAFETY: a handle AcquireCredentialsHandleW filled, freed once.
        unsafe { FreeCredentialsHandle(&self.0) };
    }
}

struct Ctx(Option<SecHandle>);

impl Drop for Ctx {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            // SAFETY: a context InitializeSecurityContextW created, deleted once.
            unsafe { DeleteSecurityContext(h) };
        }
    }
}

pub(crate) fn initiate(service: &str, message: &[u8]) -> Result<Proof, GssError> {
    let package = wide("Kerberos");
    let mut cred = SecHandle::default();
    let mut expiry = 0i64;
    // SAFETY: NUL-terminated package name; `cred` receives the handle freed by its guard.
    let status = unsafe {
        AcquireCredentialsHandleW(
            ptr::null(),
            package.as_ptr(),
            SECPKG_CRED_OUTBOUND,
            ptr::null(),
            ptr::null(),
            None,
            ptr::null(),
            &mut cred,
            &mut expiry,
        )
    };
    if status != SEC_E_OK {
        return Err(failed("AcquireCredentialsHandleW", status));
    }
    let cred = Cred(cred);
    let target = wide(service);
    // The token goes into a buffer of ours, as large as a Kerberos token may be (MaxTokenSize is
    // at most 64 KiB), rather than one SSPI allocates: Wine's Kerberos package ignores
    // ISC_REQ_ALLOCATE_MEMORY and answers SEC_E_INCOMPLETE_MESSAGE for an empty buffer.
    let mut token = vec![0u8; crate::MAX_TOKEN];
    let mut out_buf = SecBuffer {
        cbBuffer: token.len() as u32,
        BufferType: SECBUFFER_TOKEN,
        pvBuffer: token.as_mut_ptr() as *mut c_void,
    };
    let mut out = SecBufferDesc {
        ulVersion: SECBUFFER_VERSION,
        cBuffers: 1,
        pBuffers: &mut out_buf,
    };
    let mut handle = SecHandle::default();
    let mut attrs = 0u32;
    // SAFETY: valid credential and buffers that outlive the call; SSPI writes the token and
    // its length into `out_buf`.
    let status = unsafe {
        InitializeSecurityContextW(
            &cred.0,
            ptr::null(),
            target.as_ptr(),
            ISC_REQ_INTEGRITY | ISC_REQ_REPLAY_DETECT,
            0,
            SECURITY_NATIVE_DREP,
            ptr::null(),
            0,
            &mut handle,
            &mut out,
            &mut attrs,
            &mut expiry,
        )
    };
    token.truncate((out_buf.cbBuffer as usize).min(crate::MAX_TOKEN));
    if status == SEC_I_CONTINUE_NEEDED {
        let _ = Ctx(Some(handle));
        return Err(GssError::invalid(
            "Kerberos wanted a second round trip (mutual authentication was not asked for)",
        ));
    }
    if status != SEC_E_OK {
        return Err(failed("InitializeSecurityContextW", status));
    }
    let ctx = Ctx(Some(handle));
    let mic = make_signature(&ctx, message)?;
    Ok(Proof { token, mic })
}

fn make_signature(ctx: &Ctx, message: &[u8]) -> Result<Vec<u8>, GssError> {
    let h = ctx.0.as_ref().expect("an established context");
    let mut sizes = SecPkgContext_Sizes::default();
    // SAFETY: `sizes` is the struct SECPKG_ATTR_SIZES fills.
    let status = unsafe { QueryContextAttributesW(h, SECPKG_ATTR_SIZES, &mut sizes as *mut _ as *mut c_void) };
    if status != SEC_E_OK {
        return Err(failed("QueryContextAttributesW", status));
    }
    let mut data = message.to_vec();
    let mut sig = vec![0u8; sizes.cbMaxSignature as usize];
    let mut bufs = [
        SecBuffer {
            cbBuffer: data.len() as u32,
            BufferType: SECBUFFER_DATA,
            pvBuffer: data.as_mut_ptr() as *mut c_void,
        },
        SecBuffer {
            cbBuffer: sig.len() as u32,
            BufferType: SECBUFFER_TOKEN,
            pvBuffer: sig.as_mut_ptr() as *mut c_void,
        },
    ];
    let desc = SecBufferDesc {
        ulVersion: SECBUFFER_VERSION,
        cBuffers: 2,
        pBuffers: bufs.as_mut_ptr(),
    };
    // SAFETY: buffers outlive the call; SSPI writes the signature and its length.
    let status = unsafe { MakeSignature(h, 0, &desc, 0) };
    if status != SEC_E_OK {
        return Err(failed("MakeSignature", status));
    }
    sig.truncate(bufs[1].cbBuffer as usize);
    Ok(sig)
}
