//! tracefs: mounting it when missing, and reading tracepoint field offsets from `format` files.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use tcptrace_common::RECORD_BYTES;

const MOUNT_POINT: &str = "/sys/kernel/tracing";
const LEGACY_PATH: &str = "/sys/kernel/debug/tracing";

/// Finds tracefs, mounting it at `/sys/kernel/tracing` when it is not mounted anywhere.
pub fn ensure_mounted() -> Result<PathBuf> {
    for candidate in [MOUNT_POINT, LEGACY_PATH] {
        if Path::new(candidate).join("events").is_dir() {
            return Ok(PathBuf::from(candidate));
        }
    }
    let target = CString::new(MOUNT_POINT).expect("no NUL in path");
    let fstype = CString::new("tracefs").expect("no NUL in name");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EPERM) {
            bail!("tracefs is not mounted and mounting it needs root: run with sudo");
        }
        bail!(
            "tracefs is not mounted and mounting it at {MOUNT_POINT} failed: {error} \
             (try `mount -t tracefs tracefs {MOUNT_POINT}`)"
        );
    }
    Ok(PathBuf::from(MOUNT_POINT))
}

/// Field name → byte offset, from one tracepoint's `format` file.
#[derive(Debug)]
pub struct Format {
    tracepoint: String,
    offsets: HashMap<String, u16>,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Format> {
        let path = tracefs.join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => anyhow::anyhow!(
                "tracepoint {category}:{name} does not exist in this kernel ({} is missing)",
                path.display()
            ),
            io::ErrorKind::PermissionDenied => {
                anyhow::anyhow!("cannot read {}: run with sudo", path.display())
            }
            _ => anyhow::Error::new(error).context(format!("reading {}", path.display())),
        })?;
        Ok(Format::parse(&format!("{category}:{name}"), &text))
    }

    /// Parses lines like `field:const void * skaddr; offset:8; size:8; signed:0;` (tab-separated).
    pub fn parse(tracepoint: &str, text: &str) -> Format {
        let offsets = text
            .lines()
            .filter_map(|line| {
                let declaration = line.trim().strip_prefix("field:")?.split(';').next()?;
                // The name is the declaration's last word, without any `[N]` array suffix.
                let name = declaration.split_whitespace().last()?.split('[').next()?;
                let offset =
                    line.split("offset:").nth(1)?.split(';').next()?.trim().parse().ok()?;
                Some((name.to_owned(), offset))
            })
            .collect();
        Format { tracepoint: tracepoint.to_owned(), offsets }
    }

    pub fn offset(&self, field: &str) -> Result<u16> {
        self.offsets.get(field).copied().with_context(|| {
            format!("tracepoint {} has no field `{field}` on this kernel", self.tracepoint)
        })
    }

    /// The offset of a field the kernel program reads from its copy of the record, in loads
    /// of `align` bytes spanning `len`. The program masks offsets to the copy's size and to
    /// that alignment (which lets the verifier accept them), so a field outside either would
    /// be read from the wrong place: refuse such a layout instead.
    pub fn record_field(&self, field: &str, align: u16, len: u16) -> Result<u16> {
        let offset = self.offset(field)?;
        if offset % align != 0 || usize::from(offset) + usize::from(len) > RECORD_BYTES {
            bail!(
                "tracepoint {}: field `{field}` at offset {offset} is not {align}-byte aligned \
                 within the first {RECORD_BYTES} bytes, where tcptrace reads it; this kernel's \
                 layout is not supported",
                self.tracepoint
            );
        }
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_STATE: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"family=%s\", REC->family
";

    #[test]
    fn parses_field_offsets() {
        let format = Format::parse("sock:inet_sock_set_state", SET_STATE);
        assert_eq!(format.offset("common_flags").unwrap(), 2);
        assert_eq!(format.offset("skaddr").unwrap(), 8);
        assert_eq!(format.offset("oldstate").unwrap(), 16);
        assert_eq!(format.offset("sport").unwrap(), 24);
        assert_eq!(format.offset("saddr_v6").unwrap(), 40);
    }

    #[test]
    fn record_fields_must_be_aligned_and_inside_the_copy() {
        let format = Format::parse("sock:inet_sock_set_state", SET_STATE);
        assert_eq!(format.record_field("saddr_v6", 2, 16).unwrap(), 40);
        assert_eq!(format.record_field("skaddr", 8, 8).unwrap(), 8);
        let odd = Format::parse("sock:inet_sock_set_state", &SET_STATE.replace("24", "25"));
        let misaligned = odd.record_field("sport", 2, 2).unwrap_err().to_string();
        assert!(misaligned.contains("`sport` at offset 25 is not 2-byte aligned"), "{misaligned}");
        let far = Format::parse("sock:inet_sock_set_state", &SET_STATE.replace("40", "120"));
        assert!(far.record_field("saddr_v6", 2, 16).is_err(), "past the copy's 128 bytes");
    }

    #[test]
    fn missing_field_names_the_tracepoint() {
        let format = Format::parse("sock:inet_sock_set_state", SET_STATE);
        let error = format.offset("protocol").unwrap_err().to_string();
        assert!(error.contains("sock:inet_sock_set_state"), "{error}");
        assert!(error.contains("protocol"), "{error}");
    }
}
