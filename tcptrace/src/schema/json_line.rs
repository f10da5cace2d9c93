//! A JSON line built in a reusable buffer: the hot path formats events and connection
//! records without `fmt` machinery or per-event allocation, and writes each line once.

use std::{
    io::{self, Write},
    net::SocketAddr,
};

use tcptrace_common::COMM_LEN;

/// Decimal digits of every octet value, left-aligned in 4 bytes, with their count.
const OCTETS: [([u8; 4], usize); 256] = {
    let mut table = [([0u8; 4], 0); 256];
    let mut value = 0;
    while value < 256 {
        let (hundreds, tens, ones) = (value / 100, value / 10 % 10, value % 10);
        let digits = [b'0' + hundreds as u8, b'0' + tens as u8, b'0' + ones as u8];
        table[value] = match value {
            0..10 => ([digits[2], 0, 0, 0], 1),
            10..100 => ([digits[1], digits[2], 0, 0], 2),
            _ => ([digits[0], digits[1], digits[2], 0], 3),
        };
        value += 1;
    }
    table
};

/// The two lowercase hex digits of every byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut value = 0;
    while value < 256 {
        table[value] = [DIGITS[value >> 4], DIGITS[value & 0xf]];
        value += 1;
    }
    table
};

#[derive(Default)]
pub struct JsonLine {
    buffer: Vec<u8>,
}

impl JsonLine {
    pub fn new() -> JsonLine {
        JsonLine { buffer: Vec::with_capacity(1024) }
    }

    /// Starts a new line (the buffer's capacity is kept).
    pub fn clear(&mut self) -> &mut Self {
        self.buffer.clear();
        self
    }

    /// Text that needs no escaping (keys, punctuation, state names). Always inlined: the
    /// hot lines' keys are literals, whose copies then compile to a few stores of known
    /// size, not one libc memcpy call each.
    #[inline(always)]
    pub fn raw(&mut self, text: &str) -> &mut Self {
        self.buffer.extend_from_slice(text.as_bytes());
        self
    }

    /// A decimal number, by itoa: digits of our own measured 1 ns faster per number, a
    /// few ns of an event's microsecond, which no run of `cargo xtask bench` can tell.
    #[inline]
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.buffer.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    /// Appends up to `N` bytes that `write` puts straight into the line (it returns how many
    /// it wrote). The line grows by a fixed `N` and is cut back: known sizes compile to a few
    /// moves, where copying each value's own length calls libc's memcpy. And nothing is
    /// built aside to be copied in: reading back bytes just stored piecewise stalls the CPU.
    #[inline(always)]
    fn append_in_place<const N: usize>(
        &mut self,
        write: impl FnOnce(&mut [u8; N]) -> usize,
    ) -> &mut Self {
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&[0; N]);
        let block = self.buffer[start..].first_chunk_mut::<N>().expect("N bytes were added");
        let len = write(block).min(N);
        self.buffer.truncate(start + len);
        self
    }

    /// A number, or `null`.
    #[inline]
    pub fn optional(&mut self, value: Option<u64>) -> &mut Self {
        match value {
            Some(value) => self.u64(value),
            None => self.raw("null"),
        }
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.raw(if value { "true" } else { "false" })
    }

    /// `"0x…"`, lowercase, as `{:#x}` writes it. All 16 digits are written a byte (two
    /// digits) at a time, then the leading zeros dropped: the kernel addresses this writes
    /// have none.
    pub fn hex(&mut self, value: u64) -> &mut Self {
        let len = (64 - value.leading_zeros() as usize).div_ceil(4).max(1);
        self.append_in_place(|block: &mut [u8; 20]| {
            block[..3].copy_from_slice(b"\"0x");
            for (i, byte) in value.to_be_bytes().into_iter().enumerate() {
                block[3 + 2 * i..5 + 2 * i].copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
            }
            if len < 16 {
                block.copy_within(19 - len..19, 3);
            }
            block[3 + len] = b'"';
            len + 4
        })
    }

    /// `"IP:PORT"` (`"[IPv6]:PORT"`), as `SocketAddr`'s `Display` writes it.
    pub fn address(&mut self, address: &SocketAddr) -> &mut Self {
        let SocketAddr::V4(address) = address else {
            // Rare enough on the hot path to use the standard formatting.
            let _ = write!(self.buffer, "\"{address}\"");
            return self;
        };
        // The longest, `"255.255.255.255:65535"`, is 23 bytes. Each octet's digits come
        // from a table and are stored as a 4-byte block, then the position moves on by
        // their count: no division and no branch per digit.
        self.append_in_place(|block: &mut [u8; 24]| {
            block[0] = b'"';
            let mut len = 1;
            for (i, octet) in address.ip().octets().into_iter().enumerate() {
                let (digits, count) = OCTETS[usize::from(octet)];
                block[len..len + 4].copy_from_slice(&digits);
                len += count;
                block[len] = if i < 3 { b'.' } else { b':' };
                len += 1;
            }
            let mut digits = itoa::Buffer::new();
            let port = digits.format(address.port()).as_bytes();
            block[len..len + port.len()].copy_from_slice(port);
            block[len + port.len()] = b'"';
            len + port.len() + 1
        })
    }

    /// A quoted JSON string of bytes: invalid UTF-8 becomes U+FFFD; quotes, backslashes and
    /// control characters are escaped.
    pub fn string(&mut self, bytes: &[u8]) -> &mut Self {
        self.buffer.push(b'"');
        let plain = bytes.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        if plain && bytes.len() <= COMM_LEN {
            // The common case: a plain ASCII command name.
            self.append_in_place(|block: &mut [u8; COMM_LEN]| {
                block.iter_mut().zip(bytes).for_each(|(to, from)| *to = *from);
                bytes.len()
            });
        } else if plain {
            self.buffer.extend_from_slice(bytes);
        } else {
            for c in String::from_utf8_lossy(bytes).chars() {
                match c {
                    '"' => self.buffer.extend_from_slice(b"\\\""),
                    '\\' => self.buffer.extend_from_slice(b"\\\\"),
                    // The short escapes, as serde_json writes them.
                    '\u{8}' => self.buffer.extend_from_slice(b"\\b"),
                    '\u{c}' => self.buffer.extend_from_slice(b"\\f"),
                    '\n' => self.buffer.extend_from_slice(b"\\n"),
                    '\r' => self.buffer.extend_from_slice(b"\\r"),
                    '\t' => self.buffer.extend_from_slice(b"\\t"),
                    c if (c as u32) < 0x20 => {
                        let _ = write!(self.buffer, "\\u{:04x}", c as u32);
                    }
                    c => {
                        let mut utf8 = [0; 4];
                        self.buffer.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                    }
                }
            }
        }
        self.buffer.push(b'"');
        self
    }

    /// Ends the line and writes it.
    pub fn write_to(&mut self, out: &mut impl Write) -> io::Result<()> {
        self.end_line();
        out.write_all(&self.buffer)
    }

    /// Ends the line; the next one may follow it in the buffer, to be written together.
    pub fn end_line(&mut self) {
        self.buffer.push(b'\n');
    }

    /// The lines so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(build: impl FnOnce(&mut JsonLine)) -> String {
        let mut line = JsonLine::new();
        build(&mut line);
        String::from_utf8(line.buffer).unwrap()
    }

    #[test]
    fn writes_what_std_formatting_writes() {
        // Every length of number, odd and even, at both its ends.
        let lengths = (1..20).flat_map(|power| [10u64.pow(power) - 1, 10u64.pow(power)]);
        for value in [0u64, 1, 15, 16, 0xffff_8880_1234_2500, 1_293_604_648_123, u64::MAX]
            .into_iter()
            .chain(lengths)
        {
            assert_eq!(
                text(|l| {
                    l.hex(value);
                }),
                format!("\"{value:#x}\"")
            );
            assert_eq!(
                text(|l| {
                    l.u64(value);
                }),
                value.to_string()
            );
        }
        let every_octet =
            (0..=255u8).map(|o| format!("{o}.{}.9.{o}:{}", 255 - o, u16::from(o) * 257));
        for address in
            ["127.0.0.1:8080", "0.0.0.0:0", "255.255.255.255:65535", "[::1]:80", "[fe80::1:2]:443"]
                .map(String::from)
                .into_iter()
                .chain(every_octet)
        {
            let address: SocketAddr = address.parse().unwrap();
            assert_eq!(
                text(|l| {
                    l.address(&address);
                }),
                format!("\"{address}\"")
            );
        }
        assert_eq!(
            text(|l| {
                l.optional(None).raw(",").optional(Some(7));
            }),
            "null,7"
        );
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let every_control: Vec<u8> = (0..0x20).chain([0x7f]).collect();
        for bytes in
            [&b"curl"[..], b"we\"ird\\n\tme", b"\xff\xfebad", "щука".as_bytes(), &every_control]
        {
            let json = text(|l| {
                l.string(bytes);
            });
            let parsed: String = serde_json::from_str(&json).unwrap();
            assert_eq!(parsed, String::from_utf8_lossy(bytes));
            assert_eq!(json, serde_json::to_string(&parsed).unwrap());
        }
    }
}
