//! The live tracer yields the CPU to the traced programs while it keeps up, on the real
//! kernel: with every core kept busy it stops yielding before anything is lost, and without
//! `CAP_SYS_NICE` it never starts. A test binary of its own: keeping every core busy would
//! slow the tests that run beside it.

mod support;

use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use support::{Tracer, becomes, listener, one_connection, policy, summary};

/// The thread that drains the ring yields to the traced programs (SCHED_IDLE) while it
/// keeps up; with every core kept busy it stops yielding (SCHED_BATCH) whenever the ring
/// goes undrained too long, so nothing is lost; once the cores are free it yields again.
/// Its other threads are SCHED_BATCH throughout (docs/sizing.md says why).
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
    let (started, mut made) = (Instant::now(), 0);
    while started.elapsed() < Duration::from_secs(2) {
        one_connection(&watched);
        made += 1;
    }
    busy.store(false, Ordering::Relaxed);
    hogs.into_iter().for_each(|hog| hog.join().unwrap());
    let said = tracer.stderr_so_far();
    assert!(said.contains("stopped yielding: the ring went"), "starved, it stopped: {said}");
    assert!(becomes(pid, libc::SCHED_IDLE), "and it yields again once the cores are free");

    let lines = tracer.stop();
    let summary = summary(&lines);
    assert_eq!(summary["lost"], 0, "{summary:#}");
    assert_eq!(summary["connections"], made, "{summary:#}");
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
