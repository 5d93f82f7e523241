//! Links the `taskmesh` binary with packed relative relocations (`DT_RELR`) where the C library
//! can load them.
//!
//! The binary is position-independent, so that its code and data load at a random address. Its
//! data holds about 70,000 pointers, which the loader fixes up at every start; as classic
//! `RELA` entries that table is 1.7 MB, read whole at start and resident for the life of the
//! process. Packed, it is 27 KB, and an idle node holds about 2.4 MB less
//! (docs/performance.md, "Memory and binary size"). The loader of glibc 2.36 and later reads
//! the packed form (Debian 12, Ubuntu 24.04); a binary built where the C library is older keeps
//! the classic table, so that it runs where it was built. GNU ld older than 2.38 ignores the
//! option with a warning.

use std::process::Command;

/// The first glibc whose loader reads `DT_RELR`.
const RELR_GLIBC: (u32, u32) = (2, 36);

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    // The host's glibc stands for the one linked against only in a native build.
    if linux_gnu && target == host && host_glibc().is_some_and(|v| v >= RELR_GLIBC) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The build host's glibc version, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn host_glibc() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (major, minor) = text.trim().strip_prefix("glibc ")?.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
