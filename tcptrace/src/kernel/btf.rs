//! Member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`). Rust eBPF has no CO-RE
//! relocations, so the loader finds where `struct tcp_sock` keeps each counter the kernel
//! program reads, and passes the offsets in its configuration, as it does with tracefs's.
//!
//! Parsed with btfparse: Apache-2.0, like tcptrace, and made for exactly this question
//! (`offset_of(type, "a.b[0].c")`, nested members and arrays included). btf-rs, the other
//! maintained parser, is LGPL-2.1, which a statically linked binary under MIT or Apache-2.0
//! would have to carry with care; aya's own BTF type does not expose member offsets.

use anyhow::{Context, Result, anyhow, bail};
use btfparse::{Error, ErrorKind, Offset, Readable, TypeInformation};
use tcptrace_common::TcpSockOffsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The BTF file's bytes, for btfparse.
struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let bytes = start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| Error::new(ErrorKind::EOF, "read past the end of the BTF file"))?;
        buffer.copy_from_slice(bytes);
        Ok(())
    }
}

/// Where `struct tcp_sock` keeps what `TCP_INFO` reports, from `path` (the kernel's BTF).
pub fn tcp_sock_offsets(path: &str) -> Result<TcpSockOffsets> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    let types = TypeInformation::new(&Bytes(bytes))
        .map_err(|error| anyhow!("{path} is not BTF tcptrace can read: {error:?}"))?;
    let tcp_sock = types.id_of("tcp_sock").context("the kernel's BTF has no struct tcp_sock")?;
    // (member path, its size in bytes): the kernel program reads that many bytes there.
    let offset = |path: &str, size: u32| -> Result<u16> {
        let (member_type, offset) = types
            .offset_of(tcp_sock, path)
            .map_err(|error| anyhow!("struct tcp_sock has no `{path}`: {error:?}"))?;
        let found = types.size_of(member_type).unwrap_or(0);
        match offset {
            Offset::ByteOffset(offset) if found as u32 == size => u16::try_from(offset)
                .map_err(|_| anyhow!("`tcp_sock.{path}` lies past 64 KiB ({offset})")),
            Offset::ByteOffset(_) => {
                bail!("`tcp_sock.{path}` is {found} bytes here; tcptrace reads {size}")
            }
            Offset::BitOffsetAndSize(..) => bail!("`tcp_sock.{path}` is a bitfield"),
        }
    };
    Ok(TcpSockOffsets {
        bytes_acked: offset("bytes_acked", 8)?,
        bytes_received: offset("bytes_received", 8)?,
        bytes_retrans: offset("bytes_retrans", 8)?,
        segs_out: offset("segs_out", 4)?,
        segs_in: offset("segs_in", 4)?,
        total_retrans: offset("total_retrans", 4)?,
        srtt_us: offset("srtt_us", 4)?,
        min_rtt: offset("rtt_min.s[0].v", 4)?,
        snd_cwnd: offset("snd_cwnd", 4)?,
        sk_err: offset("inet_conn.icsk_inet.sk.sk_err", 4)?,
        valid: 1,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_or_member_is_an_error_that_names_it() {
        let error = tcp_sock_offsets("/nonexistent/vmlinux").unwrap_err().to_string();
        assert!(error.contains("/nonexistent/vmlinux"), "{error}");
        let error = format!("{:#}", tcp_sock_offsets("/proc/self/status").unwrap_err());
        assert!(error.contains("not BTF"), "{error}");
    }
}
