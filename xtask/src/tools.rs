//! Installs what building the eBPF program needs, into `.tools/` in the workspace.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::run_command;

/// The nightly that builds the eBPF program (`-Z build-std` is nightly-only), pinned: a
/// newer nightly may change codegen or need another bpf-linker. Its rustc is 1.97.0-nightly
/// (e50aa6fba 2026-05-19), with LLVM 22.
pub const PINNED_NIGHTLY: &str = "nightly-2026-05-20";
/// The commit of the pinned nightly's rustc: a toolchain installed under another name (a
/// plain `nightly` of that day) is used as it is when it is this build.
const PINNED_COMMIT: &str = "e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub struct Tools {
    /// The rustup toolchain to build with: the pinned nightly, by whichever name it has.
    pub toolchain: String,
    pub bin_dir: PathBuf,
}

pub fn ensure(root: &Path) -> Result<Tools> {
    let tools_dir = root.join(".tools");
    let toolchain = ensure_nightly()?;
    ensure_rust_src(&toolchain)?;
    let bin_dir = tools_dir.join("bin");
    if !bpf_linker_works(&bin_dir) {
        install_bpf_linker(&tools_dir, &toolchain)?;
        if !bpf_linker_works(&bin_dir) {
            bail!("bpf-linker was installed into {} but does not run", bin_dir.display());
        }
    }
    Ok(Tools { toolchain, bin_dir })
}

/// `rustc -vV` of a rustup toolchain, if it is installed.
fn rustc_version(toolchain: &str) -> Option<String> {
    let out = rustup().args(["run", toolchain, "rustc", "-vV"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pinned nightly's toolchain name: the pinned name if installed, else a plain `nightly`
/// that is the same build, else the pinned one, installed now with rustup.
fn ensure_nightly() -> Result<String> {
    let is_pinned = |toolchain: &str| {
        rustc_version(toolchain)
            .is_some_and(|version| version.contains(&format!("commit-hash: {PINNED_COMMIT}")))
    };
    for toolchain in [PINNED_NIGHTLY, "nightly"] {
        if is_pinned(toolchain) {
            return Ok(toolchain.to_owned());
        }
    }
    eprintln!(
        "xtask: installing the {PINNED_NIGHTLY} toolchain with rustup (builds the eBPF program)"
    );
    run_command(rustup().args([
        "toolchain",
        "install",
        PINNED_NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .with_context(|| {
        format!("installing {PINNED_NIGHTLY} failed: is rustup installed and online?")
    })?;
    if !is_pinned(PINNED_NIGHTLY) {
        bail!("rustup installed {PINNED_NIGHTLY}, but its rustc is not commit {PINNED_COMMIT}");
    }
    Ok(PINNED_NIGHTLY.to_owned())
}

fn rustup() -> Command {
    let mut command = Command::new("rustup");
    // Looking a toolchain up must not download it: installing is said out loud, once.
    command.env_remove("RUSTUP_TOOLCHAIN").env("RUSTUP_AUTO_INSTALL", "0");
    command
}

fn ensure_rust_src(toolchain: &str) -> Result<()> {
    let installed = rustup()
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .context("could not run rustup: is the Rust toolchain installed with rustup?")?;
    if !installed.status.success() {
        bail!("rustup can't list the components of the {toolchain} toolchain");
    }
    if String::from_utf8_lossy(&installed.stdout).lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for the {toolchain} toolchain (needed by -Z build-std)");
    run_command(rustup().args(["component", "add", "rust-src", "--toolchain", toolchain]))
}

/// Runs the binary with an empty environment: it must find libLLVM through its own rpath,
/// not through rustup's variables.
fn bpf_linker_works(bin_dir: &Path) -> bool {
    Command::new(bin_dir.join("bpf-linker"))
        .arg("--version")
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The toolchain's `lib/` folder and LLVM major version.
fn toolchain_llvm(toolchain: &str) -> Result<(PathBuf, String)> {
    let output = |args: &[&str]| -> Result<String> {
        let out = rustup()
            .args(["run", toolchain, "rustc"])
            .args(args)
            .output()
            .context("could not run rustc")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let lib = PathBuf::from(output(&["--print", "sysroot"])?).join("lib");
    let version = output(&["-vV"])?;
    let major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV does not name its LLVM version")?
        .to_owned();
    Ok((lib, major))
}

/// Builds bpf-linker from crates.io against the toolchain's own libLLVM, so the bitcode
/// rustc emits and the LLVM that links it are the same version.
fn install_bpf_linker(tools_dir: &Path, toolchain: &str) -> Result<()> {
    let (toolchain_lib, llvm_major) = toolchain_llvm(toolchain)?;
    // LLVM_PREFIX wants `lib/libLLVM.so`; the toolchain ships `libLLVM-<major>-rust-…so`
    // (a linker script) and `libLLVM.so.<ver>-rust-…` (the library, also its SONAME).
    let prefix = tools_dir.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let mut found_library = false;
    for entry in fs::read_dir(&toolchain_lib)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("libLLVM") {
            continue;
        }
        let link_name = if name.starts_with("libLLVM.so.") {
            found_library = true;
            name.to_string()
        } else {
            "libLLVM.so".to_owned()
        };
        let link = prefix_lib.join(link_name);
        let _ = fs::remove_file(&link);
        symlink(toolchain_lib.join(name.as_ref()), &link)?;
    }
    if !found_library {
        bail!(
            "no libLLVM.so.* in {}: is the {toolchain} toolchain complete?",
            toolchain_lib.display()
        );
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against the {toolchain} toolchain's LLVM {llvm_major} \
         into {} (a few minutes, once)",
        tools_dir.display()
    );
    let rpath = format!("-C link-arg=-Wl,-rpath,{}", toolchain_lib.display());
    run_command(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--force"])
            .args(["--no-default-features", "--features", &format!("llvm-{llvm_major}")])
            .arg("--root")
            .arg(tools_dir)
            .env("LLVM_PREFIX", &prefix)
            .env("RUSTFLAGS", rpath)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR"),
    )
}

/// Programs the kernel and export tests drive, with the Debian package that has each.
const TEST_PROGRAMS: [(&str, &str); 11] = [
    ("python3", "python3"),
    ("curl", "curl"),
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("chromium", "chromium"),
    ("nft", "nftables"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("kubectl", "kubectl"),
    ("systemd-analyze", "systemd"),
    ("tmux", "tmux"),
];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Installs, with apt-get, the Debian packages of the `(program, package)` pairs whose
/// program is not on PATH.
pub fn install_missing(purpose: &str, programs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing what {purpose} needs: {}", missing.join(" "));
    run_command(Command::new("apt-get").args(["update", "-qq"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null()),
    )
}

/// What the tests drive and the machine may lack.
pub fn ensure_test_programs() -> Result<()> {
    install_missing("the tests", &TEST_PROGRAMS)
}
