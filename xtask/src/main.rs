//! Project tasks: `cargo xtask build-ebpf | build | run | test | install-tools`.
//!
//! The eBPF program needs a nightly toolchain with `rust-src` (for `-Z build-std=core`) and
//! `bpf-linker` built against that toolchain's own LLVM. Neither is on a fresh machine, so
//! this installs them into the project-local `.tools/` folder before building.

mod bench;
mod empty_programs;
mod tools;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tcptrace project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install rust-src and bpf-linker into .tools/ if missing, then build the eBPF object.
    BuildEbpf,
    /// Build the eBPF object, then the `tcptrace` binary (release) that embeds it.
    Build,
    /// Build, then run `tcptrace` with the given arguments (needs root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the eBPF object, install the test peers (python3, curl, iproute2, util-linux,
    /// chromium, nftables, prometheus, kubectl, systemd, tmux) if missing, then run every
    /// test, in release builds; with no arguments the engine's unit and property tests run
    /// in a debug build first too (overflow and invariant checks on).
    /// Needs root.
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install rust-src and bpf-linker into .tools/ if missing.
    InstallTools,
    /// Measure what tracing costs on a churn workload and how fast the engine is; writes
    /// docs/BENCHMARKS.md. Needs root; installs nginx, wrk, bpftrace and bpftool if missing.
    Bench {
        /// Length of each churn run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Churn at least this many connections through nginx with tcptrace attached; reports
    /// the tracer's RSS over time and lost events (minutes; not part of CI).
    Soak {
        #[arg(long, default_value_t = 1_000_000)]
        connections: u64,
    },
    /// Run the property tests (engine and recording parser) with many random cases, again
    /// and again until the time is up. Failures are saved as regression cases.
    Fuzz {
        #[arg(long, default_value_t = 5)]
        minutes: u64,
        /// Cases per property per round.
        #[arg(long, default_value_t = 20_000)]
        cases: u64,
    },
    /// Write a generated recording of loopback churn (server closes first, TIME-WAIT 61 s),
    /// for replay, profiling and memory tests.
    GenRecording {
        /// Where to write it (`-` for stdout).
        file: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        connections: u64,
        /// New connections per second of recorded time.
        #[arg(long, default_value_t = 1000)]
        per_second: u64,
        /// Leave every connection ESTABLISHED.
        #[arg(long)]
        open: bool,
    },
}

fn main() {
    if let Err(error) = run(Cli::parse().task) {
        eprintln!("xtask: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    let root = workspace_root();
    match task {
        Task::InstallTools => tools::ensure(&root).map(drop),
        Task::BuildEbpf => build_ebpf(&root).map(drop),
        Task::Build => build(&root).map(drop),
        Task::Run { args } => {
            let binary = build(&root)?;
            run_command(Command::new(binary).args(args))
        }
        Task::GenRecording { file, connections, per_second, open } => {
            let out: Box<dyn std::io::Write> = if file.as_os_str() == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                Box::new(std::fs::File::create(&file)?)
            };
            let events = bench::write_recording(out, connections, per_second, !open)?;
            eprintln!("xtask: {events} events");
            Ok(())
        }
        Task::Soak { connections } => {
            let binary = build(&root)?;
            bench::ensure_tools()?;
            bench::soak(&root, &binary, connections)
        }
        Task::Fuzz { minutes, cases } => {
            build_ebpf(&root)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(minutes * 60);
            let mut round = 0;
            while std::time::Instant::now() < deadline {
                round += 1;
                eprintln!("xtask: fuzz round {round}: {cases} cases per property");
                run_command(
                    cargo()
                        .current_dir(&root)
                        .args([
                            "test",
                            "--release",
                            "--package",
                            "tcptrace",
                            "--test",
                            "properties",
                        ])
                        .env("PROPTEST_CASES", cases.to_string()),
                )?;
            }
            Ok(())
        }
        Task::Bench { seconds } => {
            let binary = build(&root)?;
            bench::ensure_tools()?;
            bench::run(&root, &binary, seconds)
        }
        Task::Test { args } => {
            build_ebpf(&root)?;
            tools::ensure_test_programs()?;
            if args.is_empty() {
                // The engine's unit and property tests once more without --release, where
                // arithmetic overflow and the engine's own invariants (debug_assert) are
                // checked.
                run_command(cargo().current_dir(&root).args([
                    "test",
                    "--package",
                    "tcptrace",
                    "--lib",
                    "--test",
                    "properties",
                ]))?;
            }
            run_command(
                cargo().current_dir(&root).args(["test", "--release", "--all-targets"]).args(&args),
            )
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where `build-ebpf` leaves the object; `tcptrace/build.rs` embeds it from there.
pub fn ebpf_object(root: &Path) -> PathBuf {
    root.join("target/ebpf/bpfel-unknown-none/release/tcptrace")
}

fn build_ebpf(root: &Path) -> Result<PathBuf> {
    let tools = tools::ensure(root)?;
    eprintln!("xtask: building the eBPF program with the {} toolchain", tools.toolchain);
    let path = std::env::join_paths(
        std::iter::once(tools.bin_dir.clone())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )?;
    let mut build = Command::new("rustup");
    build
        .current_dir(root)
        .args(["run", &tools.toolchain, "cargo", "build", "--release"])
        .args(["--package", "tcptrace-ebpf", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--target-dir", "target/ebpf"])
        .env("PATH", path);
    // Variables set by the outer (stable) cargo would leak into the nightly build.
    for var in ["RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTUP_TOOLCHAIN", "CARGO"] {
        build.env_remove(var);
    }
    run_command(&mut build)?;
    let object = ebpf_object(root);
    if !object.exists() {
        bail!("the eBPF build succeeded but {} is missing", object.display());
    }
    Ok(object)
}

fn build(root: &Path) -> Result<PathBuf> {
    build_ebpf(root)?;
    run_command(cargo().current_dir(root).args(["build", "--release", "--package", "tcptrace"]))?;
    Ok(root.join("target/release/tcptrace"))
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn run_command(command: &mut Command) -> Result<()> {
    let status =
        command.status().with_context(|| format!("could not start {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", command.get_program());
    }
    Ok(())
}
