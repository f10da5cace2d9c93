//! The live tracer yields the CPU to the traced programs while it keeps up, on the real
//! kernel: with every core kept busy it stops yielding before anything is lost, and without
//! `CAP_SYS_NICE` it never starts. Its draining thread yields in a cpu cgroup of its own,
//! idle while it yields, which it leaves no trace of. A test binary of its own: keeping
//! every core busy would slow the tests that run beside it.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use support::{Tracer, becomes, listener, one_connection, policy, summary};
use tcptrace::yielding::idle_cgroup::{self, cpu_cgroup};

/// Thread `tid`'s cgroup in the cgroup-v1 cpu hierarchy.
fn cpu_cgroup_of(pid: libc::pid_t, tid: libc::pid_t) -> PathBuf {
    cpu_cgroup(format!("/proc/{pid}/task/{tid}/cgroup")).unwrap()
}

/// Whether a cgroup is idle (`cpu.idle` 1).
fn is_idle(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("cpu.idle")).unwrap().trim() == "1"
}

/// The thread that drains the ring yields to the traced programs (SCHED_IDLE) while it
/// keeps up; with every core kept busy it stops yielding (SCHED_BATCH) whenever the ring
/// goes undrained too long, so nothing is lost; once the cores are free it yields again.
/// Its other threads are SCHED_BATCH throughout (docs/sizing.md says why). It yields in a
/// cpu cgroup of its own, idle while it does, and only it: its cgroup is `tcptrace-PID`
/// below the tracer's, which the other threads stay in, and is gone once the tracer is.
#[test]
fn the_tracer_yields_while_it_keeps_up_and_stops_before_anything_is_lost() {
    let (watched, addr) = listener();
    let args = ["--port", &addr.port().to_string(), "--quiet", "--verbose"];
    let mut tracer = Tracer::start(&args);
    let pid = tracer.pid() as libc::pid_t;
    assert!(becomes(pid, libc::SCHED_IDLE), "the draining thread yields once attached");
    let threads: Vec<libc::pid_t> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .filter(|&tid| tid != pid)
        .collect();
    let others: Vec<i32> = threads.iter().map(|&tid| policy(tid)).collect();
    assert!(!others.is_empty(), "the watchdog is a thread of its own");
    assert!(others.iter().all(|&p| p == libc::SCHED_BATCH), "{others:?}");
    let home = cpu_cgroup_of(pid, pid);
    assert!(is_idle(&home), "its cgroup is idle while it yields");
    let tasks = fs::read_to_string(home.join("tasks")).unwrap();
    assert_eq!(tasks.trim(), pid.to_string(), "the draining thread alone");
    let own = format!("{}{pid}", idle_cgroup::PREFIX);
    let elsewhere: Vec<PathBuf> = threads.iter().map(|&tid| cpu_cgroup_of(pid, tid)).collect();
    assert!(elsewhere.iter().all(|cgroup| cgroup.join(&own) == home), "{elsewhere:?}");

    // Every core busy with normal tasks: an idle task would hardly run now.
    let busy = Arc::new(AtomicBool::new(true));
    let hogs: Vec<_> = (0..thread::available_parallelism().unwrap().get())
        .map(|_| {
            let busy = busy.clone();
            thread::spawn(move || {
                while busy.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let (started, mut made, mut seen_not_idle) = (Instant::now(), 0, false);
    while started.elapsed() < Duration::from_secs(2) {
        one_connection(&watched);
        made += 1;
        seen_not_idle |= !is_idle(&home);
    }
    busy.store(false, Ordering::Relaxed);
    hogs.into_iter().for_each(|hog| hog.join().unwrap());
    let said = tracer.stderr_so_far();
    assert!(said.contains("stopped yielding: the ring went"), "starved, it stopped: {said}");
    assert!(seen_not_idle, "its cgroup stopped being idle too");
    assert!(becomes(pid, libc::SCHED_IDLE), "and it yields again once the cores are free");

    let lines = tracer.stop();
    let summary = summary(&lines);
    assert_eq!(summary["lost"], 0, "{summary:#}");
    assert_eq!(summary["connections"], made, "{summary:#}");
    assert!(!home.exists(), "{} is removed at the end", home.display());
}

/// A tracer killed (SIGKILL) cannot remove its cgroup; the next one started removes it.
#[test]
fn the_next_tracer_removes_a_killed_tracers_cgroup() {
    let killed = Tracer::start(&["--port", "9"]);
    let pid = killed.pid() as libc::pid_t;
    assert!(becomes(pid, libc::SCHED_IDLE));
    let left = cpu_cgroup_of(pid, pid);
    assert!(left.ends_with(format!("{}{pid}", idle_cgroup::PREFIX)), "{}", left.display());
    drop(killed); // SIGKILL, and waited for
    let next = Tracer::start(&["--port", "9"]);
    assert!(becomes(next.pid() as libc::pid_t, libc::SCHED_IDLE));
    assert!(!left.exists(), "{} is removed", left.display());
    next.stop();
}

/// Leaving SCHED_IDLE needs CAP_SYS_NICE: a tracer without it never yields (it could not
/// stop), says so under `--verbose`, and stays a batch task.
#[test]
fn without_cap_sys_nice_the_tracer_does_not_yield() {
    support::require_root();
    let tracer = Command::new("setpriv")
        .args(["--inh-caps=-sys_nice", "--bounding-set=-sys_nice"])
        .arg(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["--json", "--port", "9", "--verbose", "--duration", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) runs tcptrace");
    // Past its first 0.1 s of rate, where it would yield if it could.
    thread::sleep(Duration::from_millis(700));
    let policy_then = policy(tracer.id() as libc::pid_t);
    let output = tracer.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("not yielding the CPU: could not stop again"), "{said}");
    assert_eq!(policy_then, libc::SCHED_BATCH, "{said}");
}
