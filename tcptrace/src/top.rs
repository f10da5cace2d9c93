//! `tcptrace top`: a full-screen view that stays current, over the same session as live
//! tracing. The terminal (ratatui on crossterm) is restored on exit, on error and on a
//! panic; what tcptrace would print to stderr meanwhile (warnings, lost events) is held
//! back and printed after, so nothing lands on the screen or is lost.

use std::{
    fs::File,
    io::{self, IsTerminal, Read, Seek, Write},
    os::fd::FromRawFd,
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
};

use crate::{
    cli::TopArgs,
    clock::{WallClock, monotonic_now_ns},
    engine::EngineOptions,
    live::{self, Session, Step},
    pipeline::{Pipeline, PipelineOptions},
    render::top::{Rates, SortBy, Tally, Totals, View, draw},
    sink, yielding,
};

pub async fn run(args: &TopArgs) -> Result<()> {
    if !io::stdout().is_terminal() {
        bail!(
            "tcptrace top draws a full screen and needs a terminal; for lines to read or pipe, run tcptrace (or tcptrace --json)"
        );
    }
    yielding::run_as_batch_job();
    let clock = WallClock::now();
    let ephemeral_ports = live::ephemeral_port_range();
    let trace = args.trace();
    let recorder = live::recorder(&trace, &clock, ephemeral_ports)?;
    let tally = Arc::new(Tally::default());
    let options = PipelineOptions {
        engine: EngineOptions {
            ephemeral_ports,
            report_closes: true,
            stuck_after_ns: args.stuck_after.as_nanos() as u64,
            ..EngineOptions::default()
        },
        quiet: true,
        watcher: Some(tally.clone()),
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::new(sink::stdout(), clock, options);
    let held = HeldStderr::start()?;
    // Yielding as live tracing does: the screen is drawn by the thread that drains the
    // rings, which the watchdog makes a batch task again whenever they wait too long.
    let session = Session::attach(&trace, pipeline, recorder, None)
        .and_then(|mut session| session.yield_to_traced().map(|()| session));
    let mut session = match session {
        Ok(session) => session,
        Err(error) => {
            drop(held);
            return Err(error);
        }
    };
    let screen = Screen::enter();
    let shown = match screen {
        Ok(mut screen) => show(&mut session, &mut screen.terminal, &tally, args).await,
        Err(error) => Err(error),
    };
    // The screen is left already (`Screen` dropped); then stderr's lines, the summary.
    drop(held);
    session.end(shown)
}

/// The loop: a session step (at most 10 ms), the keys pressed, a redraw when due.
async fn show(
    session: &mut Session<impl Write>,
    terminal: &mut DefaultTerminal,
    tally: &Tally,
    args: &TopArgs,
) -> Result<()> {
    let traced = live::describe(&args.filter);
    let (mut sort, mut paused) = (SortBy::default(), false);
    let mut then: (u64, Totals) = (monotonic_now_ns(), tally.totals());
    let mut view: Option<View> = None;
    let mut next_draw = Instant::now();
    loop {
        if session.step().await? == Step::Stopped {
            return Ok(());
        }
        let mut changed = false;
        while event::poll(Duration::ZERO)? {
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Char('p') | KeyCode::Char(' ') => {
                        paused = !paused;
                        changed = true;
                    }
                    KeyCode::Char('s') => {
                        sort = sort.next();
                        changed = true;
                    }
                    _ => {}
                },
                Event::Resize(..) => changed = true,
                _ => {}
            }
        }
        if !changed && Instant::now() < next_draw {
            continue;
        }
        let now_ns = monotonic_now_ns();
        let due = Instant::now() >= next_draw;
        if (due && !paused) || view.is_none() || changed && !paused {
            let pipeline = session.pipeline();
            let totals = tally.totals();
            let mut fresh = View::of(pipeline.engine(), now_ns, sort);
            fresh.rates = match &view {
                // A redraw for a key comes early: the rates stay those of the last second.
                Some(old) if !due => old.rates,
                _ => Rates::between(&then.1, &totals, now_ns.saturating_sub(then.0)),
            };
            if due {
                then = (now_ns, totals);
            }
            fresh.traced = traced.clone();
            let mut namespaces: Vec<u32> =
                fresh.endpoints.iter().filter_map(|(endpoint, _)| endpoint.netns()).collect();
            namespaces.sort_unstable();
            namespaces.dedup();
            // Only real names: an unnamed one is shown by its inode's last digits.
            let named = |n: u32| {
                Some((n, pipeline.names().netns_label(n)))
                    .filter(|(n, label)| *label != n.to_string())
            };
            fresh.netns_labels = namespaces.into_iter().filter_map(named).collect();
            fresh.events = pipeline.counts().events;
            fresh.lost = pipeline.counts().lost;
            view = Some(fresh);
        }
        if let Some(view) = &mut view {
            (view.paused, view.sort) = (paused, sort);
            terminal.draw(|frame| draw(frame, view)).context("drawing the screen")?;
        }
        if due {
            next_draw = Instant::now() + args.refresh;
        }
    }
}

/// The full screen while top runs: raw mode and the alternate screen, left when dropped
/// and by the panic hook (ratatui's, which this extends to put stderr back first).
struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    fn enter() -> Result<Screen> {
        let terminal = ratatui::try_init().context("taking over the terminal")?;
        let ratatui_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            release_stderr();
            ratatui_hook(info);
        }));
        Ok(Screen { terminal })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        ratatui::restore();
    }
}

/// Standard error's real descriptor while it is held back (-1: it is not).
static REAL_STDERR: AtomicI32 = AtomicI32::new(-1);
/// The memory file that holds it meanwhile.
static HELD_STDERR: AtomicI32 = AtomicI32::new(-1);

/// Standard error held back in a memory file while the screen is taken.
struct HeldStderr;

impl HeldStderr {
    fn start() -> Result<HeldStderr> {
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let memory =
            unsafe { libc::memfd_create(c"tcptrace-top-stderr".as_ptr(), libc::MFD_CLOEXEC) };
        if memory < 0 {
            return Err(io::Error::last_os_error()).context("holding stderr back (memfd_create)");
        }
        // SAFETY: fd 2 is this process's standard error; dup makes a new descriptor of it.
        let real = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
        // SAFETY: both descriptors are open; dup2 points fd 2 at the memory file.
        if real < 0 || unsafe { libc::dup2(memory, 2) } < 0 {
            return Err(io::Error::last_os_error()).context("holding stderr back (dup2)");
        }
        REAL_STDERR.store(real, Ordering::SeqCst);
        HELD_STDERR.store(memory, Ordering::SeqCst);
        Ok(HeldStderr)
    }
}

impl Drop for HeldStderr {
    fn drop(&mut self) {
        release_stderr();
    }
}

/// Puts standard error back and writes to it what was held (once; from drop or a panic).
fn release_stderr() {
    let real = REAL_STDERR.swap(-1, Ordering::SeqCst);
    let memory = HELD_STDERR.swap(-1, Ordering::SeqCst);
    if real < 0 || memory < 0 {
        return;
    }
    // SAFETY: `real` is the saved standard error; after dup2 it is closed once, here.
    unsafe {
        libc::dup2(real, 2);
        libc::close(real);
    }
    // SAFETY: `memory` is the memory file, owned from here on by this File.
    let mut held = unsafe { File::from_raw_fd(memory) };
    let mut text = Vec::new();
    if held.rewind().is_ok() && held.read_to_end(&mut text).is_ok() {
        let _ = io::stderr().write_all(&text);
    }
}
