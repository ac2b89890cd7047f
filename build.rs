//! Link settings for the `cutover` binary.
//!
//! `-z pack-relative-relocs` stores the ~8,500 relative relocations of a
//! position-independent Rust binary as DT_RELR bitmaps (a few KiB) instead
//! of a 200 KiB table that the dynamic loader reads, and so maps, at every
//! start. It needs glibc >= 2.36 at run time, which cutover already needs
//! (see dockerfiles/Dockerfile), and an LLD or GNU ld >= 2.38 to link.

fn main() {
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
