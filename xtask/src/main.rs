//! `cargo xtask web`: builds the console (crate `meshgate-web`) for
//! wasm32, runs wasm-bindgen on it, and writes `web/dist/` with names that
//! carry a hash of their content, each compressible file beside its gzip
//! form. The `meshgate` binary embeds `web/dist` when it is built.
//!
//! `cargo xtask up [ARGS]`: the same, then `cargo run --release -p meshgate -- up ARGS`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use sha2::Digest as _;

const TARGET: &str = "wasm32-unknown-unknown";
const PROFILE: &str = "wasm-release";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    match args.first().map(String::as_str) {
        Some("web") => web(&root),
        Some("up") => {
            web(&root)?;
            let status = Command::new(cargo())
                .current_dir(&root)
                .args(["run", "--release", "-p", "meshgate", "--", "up"])
                .args(&args[1..])
                .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        _ => {
            eprintln!("usage: cargo xtask web | cargo xtask up [MESHGATE UP FLAGS]");
            std::process::exit(2);
        }
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn web(root: &Path) -> anyhow::Result<()> {
    ensure_target()?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let status = Command::new(cargo())
        .current_dir(root)
        .args(["build", "-p", "meshgate-web", "--lib", "--target", TARGET, "--profile", PROFILE])
        .args(std::env::var("XTASK_LOCKED").is_ok().then_some("--locked"))
        .status()?;
    if !status.success() {
        bail!("building the console for {TARGET} failed");
    }
    let wasm = target_dir.join(TARGET).join(PROFILE).join("meshgate_web.wasm");
    let staging = target_dir.join("web-bindgen");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .out_name("web")
        .web(true)?
        // The library's default differs from the CLI's: without this the
        // page cannot find its wasm.
        .omit_default_module_path(false)
        .typescript(false)
        .remove_name_section(true)
        .remove_producers_section(true)
        .generate(&staging)
        .map_err(|e| anyhow::anyhow!("wasm-bindgen: {e}"))?;

    // Files with content-hashed names; index.html names them.
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let wasm_bytes = std::fs::read(staging.join("web_bg.wasm"))?;
    let wasm_name = hashed("web", "wasm", &wasm_bytes);
    let js = std::fs::read(staging.join("web.js"))?;
    let js_name = hashed("web", "js", &js);
    let css = std::fs::read(root.join("web/style.css"))?;
    let css_name = hashed("style", "css", &css);
    let boot = format!(
        "import init from \"./{js_name}\";\ninit({{ module_or_path: new URL(\"./{wasm_name}\", import.meta.url) }});\n"
    )
    .into_bytes();
    let boot_name = hashed("boot", "js", &boot);
    let icon = std::fs::read(root.join("web/icon.svg"))?;
    let icon_name = hashed("icon", "svg", &icon);
    let index = std::fs::read_to_string(root.join("web/index.html"))?
        .replace("{BOOT}", &format!("/assets/{boot_name}"))
        .replace("{CSS}", &format!("/assets/{css_name}"))
        .replace("{ICON}", &format!("/assets/{icon_name}"));
    files.insert(format!("assets/{wasm_name}"), wasm_bytes);
    files.insert(format!("assets/{js_name}"), js);
    files.insert(format!("assets/{css_name}"), css);
    files.insert(format!("assets/{boot_name}"), boot);
    files.insert(format!("assets/{icon_name}"), icon);
    files.insert("index.html".into(), index.into_bytes());
    // Inline JS of crates, imported by web.js relative to itself.
    let snippets = staging.join("snippets");
    if snippets.exists() {
        for f in walk(&snippets)? {
            let rel = f.strip_prefix(&staging)?.to_string_lossy().replace('\\', "/");
            files.insert(format!("assets/{rel}"), std::fs::read(&f)?);
        }
    }
    let compressible = |name: &str| [".wasm", ".js", ".css", ".html", ".svg"].iter().any(|e| name.ends_with(e));
    for (name, body) in files.clone() {
        if compressible(&name) {
            files.insert(format!("{name}.gz"), gzip(&body)?);
        }
    }
    write_dist(&root.join("web/dist"), &files)?;
    let wasm_gz = files[&format!("assets/{wasm_name}.gz")].len();
    println!(
        "console: web/dist written (wasm {} KiB, {} KiB gzip)",
        files[&format!("assets/{wasm_name}")].len() / 1024,
        wasm_gz / 1024
    );
    Ok(())
}

/// Adds the wasm target with rustup when it is missing (a fresh machine lacks it).
fn ensure_target() -> anyhow::Result<()> {
    let Ok(out) = Command::new("rustup").args(["target", "list", "--installed"]).output() else {
        return Ok(()); // no rustup: the build says what is missing
    };
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    let status = Command::new("rustup").args(["target", "add", TARGET]).status()?;
    if !status.success() {
        bail!("rustup target add {TARGET} failed");
    }
    Ok(())
}

fn hashed(stem: &str, ext: &str, body: &[u8]) -> String {
    let h = hex::encode(&sha2::Sha256::digest(body)[..5]);
    format!("{stem}-{h}.{ext}")
}

fn gzip(body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(body)?;
    Ok(enc.finish()?)
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// Makes `dist` hold exactly `files`, touching only what changed (so the
/// server is rebuilt only when the console changed).
fn write_dist(dist: &Path, files: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dist)?;
    for old in walk(dist)? {
        let rel = old.strip_prefix(dist)?.to_string_lossy().replace('\\', "/");
        if !files.contains_key(&rel) {
            std::fs::remove_file(&old)?;
        }
    }
    for (name, body) in files {
        let path = dist.join(name);
        if std::fs::read(&path).is_ok_and(|old| &old == body) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
