// MIT Kerberos' GSS-API library and libkrb5 (Debian: libgssapi-krb5-2 and libkrb5-3 at run time,
// libkrb5-dev to link).
// Windows uses SSPI (secur32), linked by windows-sys.
fn main() {
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "windows" {
        println!("cargo:rustc-link-lib=dylib=gssapi_krb5");
        println!("cargo:rustc-link-lib=dylib=krb5");
    }
}
