//! The running kernel, as errors name it: lnat runs on what Lustre clients run (Debian 12's
//! 6.1, RHEL 9's 5.14 with backports), so what it lacks is found by asking it, and the release
//! string says which kernel that was.

use std::ffi::CStr;

/// "kernel RELEASE" (e.g. `kernel 5.10.0-35-amd64`), or "this kernel" if uname fails.
pub fn name() -> String {
    release().map_or_else(|| "this kernel".to_owned(), |r| format!("kernel {r}"))
}

/// The release string uname reports (`uname -r`).
pub fn release() -> Option<String> {
    // SAFETY: uname fills a zeroed struct; its fields are NUL-terminated when it succeeds.
    unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) != 0 {
            return None;
        }
        let release = CStr::from_ptr(uts.release.as_ptr());
        Some(release.to_string_lossy().into_owned())
    }
}
