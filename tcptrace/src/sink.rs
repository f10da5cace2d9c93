//! Where output goes: writers that say in their errors what they write to (standard output,
//! the recording and its path), so that `No space left on device` names the file that
//! filled up. A closed standard output (`tcptrace … | head`) is how a reader says it has
//! seen enough: [`is_closed_pipe`] tells it apart from a failure.

use std::io::{self, Write};

/// A writer whose errors name it, keeping their kind.
pub struct Named<W: Write> {
    inner: W,
    name: String,
}

impl<W: Write> Named<W> {
    pub fn new(inner: W, name: impl Into<String>) -> Named<W> {
        Named { inner, name: name.into() }
    }

    fn named(&self, error: io::Error) -> io::Error {
        io::Error::new(error.kind(), format!("writing {}: {error}", self.name))
    }
}

impl<W: Write> Write for Named<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.inner.write(bytes).map_err(|error| self.named(error))
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes).map_err(|error| self.named(error))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|error| self.named(error))
    }
}

/// Standard output, buffered, named in its errors. 256 KiB: replaying the bench's churn
/// to a file on ext4 took less system time with it than with 64 KiB (fewer, larger
/// page-cache writes); it still fits the L2 cache, which 1 MiB did not on an earlier machine.
pub fn stdout() -> io::BufWriter<Named<io::StdoutLock<'static>>> {
    io::BufWriter::with_capacity(STDOUT_BUFFER, Named::new(io::stdout().lock(), "standard output"))
}

/// The size of [`stdout`]'s buffer.
pub const STDOUT_BUFFER: usize = 256 << 10;

/// Whether `error` is standard output's reader having gone away.
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn errors_name_what_was_written_and_keep_their_kind() {
        let mut recording = io::BufWriter::new(Named::new(Full, "the recording /tmp/x.jsonl"));
        recording.write_all(b"{}\n").unwrap();
        let error = recording.flush().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        let text = error.to_string();
        assert!(text.starts_with("writing the recording /tmp/x.jsonl: No space left"), "{text}");
        let pipe = io::Error::new(io::ErrorKind::BrokenPipe, "writing standard output: gone");
        assert!(is_closed_pipe(&anyhow::Error::new(pipe).context("replay")));
        assert!(!is_closed_pipe(&anyhow::Error::new(error)));
    }
}
