//! The lab's own small peers, run as processes of their own (`tcptrace lab-peer ROLE`, a
//! hidden command) so that the trace shows them apart from tcptrace: the HTTP server and
//! client used when python3 or curl is missing, a server that drains and closes, one that
//! leaks its accepted sockets, and a client that closes first. Each reports what happened
//! on standard output, a line at a time, for the lab to read.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

/// What a peer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Answers each HTTP/1.0 request and closes first, as `python3 -m http.server` does.
    HttpServer,
    /// One HTTP/1.0 request; reads the answer to its end and closes, as curl does.
    HttpClient,
    /// Reads each connection to its end, then closes it.
    DrainServer,
    /// Accepts and never closes (a descriptor leak), up to its descriptor limit.
    LeakyServer,
    /// Connects and closes at once, `--count` times or until connect() fails.
    CloseFirstClient,
}

impl Role {
    /// The process name the trace shows (15 bytes at most).
    pub fn comm(self) -> &'static str {
        match self {
            Role::HttpServer => "lab-http-server",
            Role::HttpClient => "lab-http-client",
            Role::DrainServer => "lab-drain-srv",
            Role::LeakyServer => "lab-leaky-srv",
            Role::CloseFirstClient => "lab-client",
        }
    }
}

#[derive(Args, Debug)]
pub struct PeerArgs {
    #[arg(value_enum)]
    pub role: Role,
    /// The port served, or connected to, on 127.0.0.1.
    #[arg(long)]
    pub port: u16,
    /// Connections a client makes at most.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// The descriptor limit of a leaky server (RLIMIT_NOFILE).
    #[arg(long)]
    pub max_fds: Option<u64>,
}

/// The HTTP answer of the lab's own server.
const ANSWER: &[u8] =
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 23\r\n\r\nhello from tcptrace lab\n";

pub fn run(args: &PeerArgs) -> Result<()> {
    set_comm(args.role.comm());
    // Only its own descriptors, so that the lab counts what the peer holds, not what
    // tcptrace's parent left open.
    // SAFETY: close_range(2) on descriptors this process does not use.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if let Some(max) = args.max_fds {
        let limit = libc::rlimit { rlim_cur: max, rlim_max: max };
        // SAFETY: a valid rlimit, read during the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error()).context("setting the descriptor limit");
        }
    }
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let mut out = io::stdout().lock();
    match args.role {
        Role::HttpServer | Role::DrainServer | Role::LeakyServer => {
            let listener =
                TcpListener::bind(address).with_context(|| format!("binding {address}"))?;
            writeln!(out, "listening {address}")?;
            out.flush()?;
            serve(args.role, &listener, &mut out)
        }
        Role::HttpClient => {
            let mut stream = TcpStream::connect(address)?;
            writeln!(out, "connected {}", stream.local_addr()?.port())?;
            stream.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            writeln!(out, "read {} bytes", answer.len())?;
            Ok(())
        }
        Role::CloseFirstClient => {
            for _ in 0..args.count {
                match TcpStream::connect(address) {
                    Ok(stream) => writeln!(out, "connected {}", stream.local_addr()?.port())?,
                    Err(error) => {
                        let errno = error.raw_os_error().unwrap_or(0);
                        writeln!(out, "failed {errno} {error}")?;
                        break;
                    }
                }
                out.flush()?;
            }
            Ok(())
        }
    }
}

fn serve(role: Role, listener: &TcpListener, out: &mut impl Write) -> Result<()> {
    let mut kept = Vec::new();
    let mut said_limit = false;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) if error.raw_os_error() == Some(libc::EMFILE) => {
                if !said_limit {
                    said_limit = true;
                    writeln!(out, "accept-failed {} {error}", libc::EMFILE)?;
                    out.flush()?;
                }
                // The queued connections stay queued; try now and then, as a server would.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        match role {
            Role::HttpServer => {
                let mut request = BufReader::new(&stream);
                let mut line = String::new();
                while request.read_line(&mut line)? > 2 {
                    line.clear();
                }
                (&stream).write_all(ANSWER)?;
            }
            Role::DrainServer => {
                io::copy(&mut &stream, &mut io::sink())?;
            }
            _ => {
                kept.push(stream);
                writeln!(out, "accepted {}", kept.len())?;
                out.flush()?;
                continue;
            }
        }
        drop(stream); // the close
    }
}

/// Names this process as the trace will show it (prctl PR_SET_NAME).
fn set_comm(name: &str) {
    let mut bytes = [0u8; 16];
    bytes[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr()) };
}
