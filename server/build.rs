//! Embeds the web console: every file of `web/dist` (written by `cargo
//! xtask web`) becomes a static in the binary. Without `web/dist` the table
//! is empty and the admin address says how to build the console.
//!
//! Release builds also lay out their functions in the order of
//! `link-order.txt` (written by `bench/link-order.sh`): an agent's code
//! first, packed, so that an idle agent keeps a few MiB of code resident
//! rather than most of the binary's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = manifest.join("../web");
    let dist = web.join("dist");
    // A folder: cargo looks at every file in it. Before the console is
    // built, `web/` itself (it changes when `dist` appears).
    let watched = if dist.is_dir() { &dist } else { &web };
    println!("cargo:rerun-if-changed={}", watched.display());
    let mut files = Vec::new();
    if dist.is_dir() {
        walk(&dist, &mut files);
    }
    files.sort();
    let mut out = String::from(
        "/// The console's files: (path under web/dist, bytes).\npub static FILES: &[(&str, &[u8])] = &[\n",
    );
    for f in &files {
        let rel = f.strip_prefix(&dist).expect("under dist").to_string_lossy().replace('\\', "/");
        let abs = f.canonicalize().expect("file exists");
        writeln!(out, "    ({rel:?}, include_bytes!({:?})),", abs.display().to_string()).expect("write to string");
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("console_files.rs");
    std::fs::write(dest, out).expect("write console_files.rs");
    link_order(&manifest);
}

/// lld's `--symbol-ordering-file` for release builds on x86_64 Linux, where
/// the Rust toolchain links with its own lld. `MESHGATE_LINK_ORDER=0` turns
/// it off, for a linker configured by hand that lacks the option.
fn link_order(manifest: &Path) {
    println!("cargo:rerun-if-env-changed=MESHGATE_LINK_ORDER");
    let order = manifest.join("link-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = |key: &str, value: &str| std::env::var(key).is_ok_and(|v| v == value);
    let linux = target("CARGO_CFG_TARGET_OS", "linux")
        && target("CARGO_CFG_TARGET_ARCH", "x86_64")
        && target("CARGO_CFG_TARGET_ENV", "gnu");
    let off = std::env::var("MESHGATE_LINK_ORDER").is_ok_and(|v| v == "0");
    if release && linux && !off && order.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
        // Names the code no longer has are expected after changes; they are skipped.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read web/dist") {
        let path = entry.expect("read web/dist").path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}
