//! `--metrics` on the real kernel, read by real peers: Debian's Prometheus scrapes
//! tcptrace while the test makes connections in a namespace of its own, and the values it
//! stored are read back through its HTTP API; a burst from thousands of client ports leaves
//! the series bounded; the deployment files pass promtool, systemd-analyze and kubectl,
//! and the commands they run work.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Netns, Tracer, run};

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/deploy").join(name)
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(name).display().to_string()
}

/// A plain HTTP/1.1 GET: (status, body).
fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    (status, body)
}

/// Runs churn.py in `netns`: `count` connections, `refused` refused connects.
fn churn(netns: &Netns, count: u32, refused: u32, mode: &str) {
    let output = netns.exec(&[
        "python3",
        &script("churn.py"),
        &count.to_string(),
        &refused.to_string(),
        mode,
    ]);
    assert_eq!(output.trim(), "done");
}

/// Prometheus, started on loopback with its own config and data folder; stopped on drop.
struct Prometheus {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str, port: u16) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("tcptrace-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus (Debian's package)");
        let prometheus = Prometheus { child, address, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&prometheus.address).is_err()
            || get(&prometheus.address, "/-/ready").0 != 200
        {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// The result of an instant query through the HTTP API.
    fn query(&self, promql: &str) -> Value {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let (status, body) = get(&self.address, &format!("/api/v1/query?query={encoded}"));
        let value: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!((status, &value["status"]), (200, &Value::from("success")), "{promql}: {body}");
        value["data"].clone()
    }

    /// The single value of a query, if it has one.
    fn value(&self, promql: &str) -> Option<f64> {
        let data = self.query(promql);
        let result = data["result"].as_array()?.first()?.clone();
        result["value"][1].as_str()?.parse().ok()
    }

    /// Waits (up to 30 s) until `promql` has the value `expected`.
    fn wait_for(&self, promql: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.value(promql);
            if value == Some(expected) {
                return;
            }
            assert!(Instant::now() < deadline, "{promql} is {value:?}, not {expected}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_real_prometheus_scrapes_what_was_traced() {
    let netns = Netns::new("metrics");
    let metrics = "127.0.0.1:18541";
    let tracer = Tracer::start(&["--netns", &netns.name, "--metrics", metrics, "--quiet"]);
    let prometheus = Prometheus::start(metrics, 18542);
    prometheus.wait_for("up{job=\"tcptrace\"}", 1.0);
    churn(&netns, 20, 3, "server-first");

    prometheus.wait_for("tcptrace_closes_total{closed_first=\"server\"}", 20.0);
    prometheus.wait_for("tcptrace_closes_total{closed_first=\"server_reset\"}", 3.0);
    prometheus.wait_for("tcptrace_failed_connects_total{error=\"ECONNREFUSED\"}", 3.0);
    // Every server side holds a TIME-WAIT for 60 s: all 20 are open now.
    prometheus.wait_for("tcptrace_time_wait_sockets", 20.0);
    let transition = |from: &str, to: &str| {
        prometheus.value(&format!("tcptrace_transitions_total{{from=\"{from}\",to=\"{to}\"}}"))
    };
    assert_eq!(transition("ESTABLISHED", "FIN_WAIT1"), Some(20.0));
    assert_eq!(transition("ESTABLISHED", "CLOSE_WAIT"), Some(20.0));
    assert_eq!(transition("SYN_SENT", "CLOSED"), Some(3.0));
    assert_eq!(prometheus.value("tcptrace_lost_events_total"), Some(0.0));
    assert_eq!(prometheus.value("tcptrace_resets_total{direction=\"received\"}"), Some(3.0));
    // The pile-up gauge names the remote endpoints whose ports are held: here the
    // clients' ports are the remote side of the server's TIME-WAITs, not ephemeral ones of
    // this host, so nothing is held toward anyone.
    assert_eq!(prometheus.value("count(tcptrace_time_wait_ports_held)"), None);

    // Every query of the Grafana dashboard is one Prometheus runs.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap())
            .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*");
            prometheus.query(&expr);
            queries += 1;
        }
    }
    assert!(queries >= 10);
    // Once Prometheus holds two samples of it, the closes panel has data.
    let closes_panel = "sum by (closed_first) (rate(tcptrace_closes_total{instance=~\".*\"}[5m]))";
    let deadline = Instant::now() + Duration::from_secs(15);
    while prometheus.query(closes_panel)["result"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the closes panel never showed data");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(prometheus);
    tracer.stop();
}

#[test]
fn series_stay_bounded_under_a_burst_of_client_ports() {
    let netns = Netns::new("series");
    // A narrow range: the clients' TIME-WAITs pile up toward the server.
    netns.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 43999"]);
    netns.exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=0"]);
    let metrics = "127.0.0.1:18543";
    let tracer = Tracer::start(&["--netns", &netns.name, "--metrics", metrics, "--quiet"]);
    churn(&netns, 3000, 0, "client-first");
    // The tracer may still be working through the burst, and the gauges follow the engine
    // once a second: wait for the last close to be counted and the gauge after it.
    let held_all = "tcptrace_time_wait_ports_held{remote=\"127.0.0.1:18530\"} 3000";
    let closed_all = "tcptrace_closes_total{closed_first=\"client\"} 3000";
    let deadline = Instant::now() + Duration::from_secs(15);
    let (status, body) = loop {
        let (status, body) = get(metrics, "/metrics");
        let settled = body.lines().any(|line| line == held_all) && body.contains(closed_all);
        if settled || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 200);
    let series: Vec<&str> = body.lines().filter(|line| !line.starts_with('#')).collect();
    assert!(series.len() <= 215, "{} series: {body}", series.len());
    for line in &series {
        for port in 40000..44000 {
            assert!(!line.contains(&format!(":{port}\"")), "a client port in a label: {line}");
        }
    }
    let held: Vec<&&str> =
        series.iter().filter(|l| l.starts_with("tcptrace_time_wait_ports_held")).collect();
    assert_eq!(held, [&held_all], "{body}");
    assert!(body.contains(closed_all), "{body}");
    tracer.stop();
}

#[test]
fn unknown_paths_are_404_and_a_port_in_use_fails_before_attaching() {
    let metrics = "127.0.0.1:18544";
    let tracer = Tracer::start(&["--metrics", metrics, "--quiet", "--port", "9"]);
    assert_eq!(get(metrics, "/metrics").0, 200);
    let (status, body) = get(metrics, "/other");
    assert_eq!((status, body.trim()), (404, "not found: the metrics are at /metrics"));
    let second = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["--metrics", metrics, "--quiet"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("cannot serve --metrics on 127.0.0.1:18544"), "{stderr}");
    assert!(!stderr.contains("tracing TCP"), "it failed before attaching: {stderr}");
    // A scraper that connects and sends nothing does not stop the others.
    let _stuck = TcpStream::connect(metrics).unwrap();
    assert_eq!(get(metrics, "/metrics").0, 200);
    tracer.stop();
}

#[test]
fn promtool_checks_the_config_the_rules_and_the_alerts_unit_tests() {
    let dir = deploy("");
    let promtool = |args: &[&str]| {
        let output = Command::new("promtool").args(args).current_dir(&dir).output().unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

/// Both deployments serve port 9464: one at a time.
static DEPLOYED_PORT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs tcptrace with a deployment's arguments (briefly) and scrapes it where they say.
fn runs_and_serves(args: &[String], address: &str) {
    let _one_at_a_time = DEPLOYED_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(args)
        .args(["--duration", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let started = lines.by_ref().map_while(Result::ok).any(|l| l.contains("tracing TCP"));
    assert!(started, "{args:?} did not start tracing");
    assert_eq!(get(address, "/metrics").0, 200, "{args:?}");
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_systemd_unit_verifies_and_its_command_serves() {
    let unit = std::fs::read_to_string(deploy("tcptrace.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let args: Vec<String> = exec.split_whitespace().skip(1).map(str::to_owned).collect();
    // The unit as installed, but for where the binary is.
    let dir = std::env::temp_dir().join(format!("tcptrace-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("tcptrace.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/tcptrace", env!("CARGO_BIN_EXE_tcptrace")))
        .unwrap();
    let output = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && complaints.trim().is_empty(), "{complaints}");
    let at = args.iter().position(|a| a == "--metrics").unwrap();
    runs_and_serves(&args, &args[at + 1]);
}

#[test]
fn the_daemonset_decodes_with_kubectl_and_its_container_serves() {
    // kubectl decodes each object with Kubernetes' own types (no cluster needed for that;
    // a schema check would need one).
    let decoded = run(
        "kubectl",
        &[
            "label",
            "--local",
            "-f",
            deploy("daemonset.yaml").to_str().unwrap(),
            "checked=yes",
            "-o",
            "json",
        ],
    );
    let objects: Vec<Value> = serde_json::Deserializer::from_str(&decoded)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    let daemonset = objects.iter().find(|o| o["kind"] == "DaemonSet").expect("a DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!((&pod["hostPID"], &pod["hostNetwork"]), (&Value::Bool(true), &Value::Bool(true)));
    let container = &pod["containers"][0];
    let added: Vec<&str> = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for needed in ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"] {
        assert!(added.contains(&needed), "{needed} in {added:?}");
    }
    let mounted: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for path in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup", "/run/netns"] {
        assert!(mounted.contains(&path), "{path} in {mounted:?}");
        assert!(Path::new(path).exists() || path == "/run/netns", "{path} exists on a node");
    }
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(pod["containers"][0]["readinessProbe"]["httpGet"]["port"], port);
    runs_and_serves(&args, &format!("127.0.0.1:{port}"));
}
