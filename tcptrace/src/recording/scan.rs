//! The fast reader of recordings: a line laid out exactly as the recorder writes it is read
//! in one pass over its bytes. Anything else is left to serde and the schema's types, and a
//! test checks that both read every line type the same.

use std::net::SocketAddr;

use super::Item;
use crate::event::{Comm, Counters, Errno, EventKind, Home, Task, TcpEvent, TcpInfo, TcpState};

/// Reads a line laid out exactly as [`super::Recorder`] writes it: its keys in its order, ASCII
/// strings without escapes, plain numbers. `None` for anything else, which serde_json then
/// reads (and reports on) in full. Replay spends most of its reading time here.
pub(super) fn read_canonical(bytes: &[u8]) -> Option<Item> {
    let mut line = Cursor { bytes, at: 0 };
    // Most lines are transitions: a compare of known length tells them at once.
    let kind = if line.optional(b"{\"type\":\"transition\"") {
        Kind::Transition
    } else {
        line.expect(b"{\"type\":")?;
        match line.string()? {
            b"lost" => {
                let ts_ns = line.number_field(b",\"ts_ns\":")?;
                let count = line.number_field(b",\"count\":")?;
                return line.end().then_some(Item::Lost { ts_ns, count });
            }
            b"end" => {
                let ts_ns = line.number_field(b",\"ts_ns\":")?;
                return line.end().then_some(Item::End { ts_ns });
            }
            b"transition" => Kind::Transition,
            b"time_wait_timer" => {
                line.expect(b",\"event\":")?;
                match line.string()? {
                    b"rearm" => Kind::Rearm,
                    b"cancel" => Kind::Cancel,
                    b"expire" => Kind::Expire,
                    _ => return None,
                }
            }
            b"reset" => {
                line.expect(b",\"direction\":")?;
                match line.string()? {
                    b"sent" => Kind::ResetSent,
                    b"received" => Kind::ResetReceived,
                    _ => return None,
                }
            }
            _ => return None,
        }
    };
    let ts_ns = line.number_field(b",\"ts_ns\":")?;
    let mut counters = None;
    line.expect(b",\"sk\":")?;
    let sk = line.hex()?;
    // The addresses say the family.
    if !line.optional(b",\"family\":\"ipv4\"") && line.optional(b",\"family\":") {
        line.string()?;
    }
    let addresses = if line.optional(b",\"local\":") {
        let local = line.address()?;
        line.expect(b",\"remote\":")?;
        Some((local, line.address()?))
    } else {
        None
    };
    // Recordings before version 3 have no namespace.
    let netns = match line.optional_number_field(b",\"netns\":")? {
        Some(inode) => Some(inode.try_into().ok()?),
        None => None,
    };
    let kind = match kind {
        Kind::Transition => {
            addresses?;
            line.expect(b",\"old\":")?;
            let old = line.state()?;
            line.expect(b",\"new\":")?;
            let new = line.state()?;
            let time_wait_timer =
                if line.optional(b",\"time_wait_timer\":") { Some(line.hex()?) } else { None };
            if line.optional(b",\"tcp_info\":") {
                counters = Some(line.tcp_info()?);
            }
            EventKind::Transition { old, new, time_wait_timer }
        }
        Kind::Rearm | Kind::Cancel | Kind::Expire => {
            line.expect(b",\"timer\":")?;
            let timer = line.hex()?;
            match kind {
                Kind::Rearm => {
                    let timeout = line.number_field(b",\"timeout_jiffies\":")?;
                    EventKind::TimeWaitRearm { timer, timeout_jiffies: timeout.try_into().ok()? }
                }
                Kind::Cancel => EventKind::TimeWaitCancel { timer },
                _ => EventKind::TimeWaitExpire { timer },
            }
        }
        Kind::ResetSent => EventKind::ResetSent,
        Kind::ResetReceived => EventKind::ResetReceived,
    };
    let pid = line.number_field(b",\"pid\":")?.try_into().ok()?;
    let tid = line.number_field(b",\"tid\":")?.try_into().ok()?;
    line.expect(b",\"comm\":")?;
    // ASCII (`string` leaves anything else to serde_json), so always text.
    let comm = Comm::new(std::str::from_utf8(line.string()?).ok()?);
    line.expect(b",\"process_context\":")?;
    let process_context = line.boolean()?;
    let cpu = line.number_field(b",\"cpu\":")?.try_into().ok()?;
    let cgroup = line.optional_number_field(b",\"cgroup_id\":")?;
    let task = Task { pid, tid, comm, process_context };
    let home = Home { netns, cgroup };
    let event = TcpEvent { ts_ns, sk, kind, addresses, task, cpu, counters, home };
    line.end().then_some(Item::Event(event))
}

/// The kinds of event line, before their fields are read.
#[derive(Clone, Copy)]
enum Kind {
    Transition,
    Rearm,
    Cancel,
    Expire,
    ResetSent,
    ResetReceived,
}

/// Each byte's value as a hex digit, or [`NOT_HEX`].
const HEX_DIGITS: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte as u8 {
            digit @ b'0'..=b'9' => digit - b'0',
            digit @ b'a'..=b'f' => digit - b'a' + 10,
            digit @ b'A'..=b'F' => digit - b'A' + 10,
            _ => NOT_HEX,
        };
        byte += 1;
    }
    table
};
const NOT_HEX: u8 = 0x80;

/// What ends a plain string: its closing quote, or what makes it serde_json's.
fn is_special(byte: u8) -> bool {
    matches!(byte, b'"' | b'\\' | 0..0x20 | 0x80..)
}

/// The high bit of the first special byte in `word` (little-endian) and maybe of some
/// after it, where a borrow runs on: only the first one counts.
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (quote | backslash | control | word) & HIGH
}

/// A position in a line, for [`read_canonical`]. Each method reads one thing at the
/// position and moves past it, or says `None` (or `false`) when it is not there.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Of a known length, the compare is a few loads, not a call to `memcmp`.
    fn optional<const N: usize>(&mut self, literal: &[u8; N]) -> bool {
        let found = self.bytes.get(self.at..self.at + N) == Some(literal);
        if found {
            self.at += N;
        }
        found
    }

    fn expect<const N: usize>(&mut self, literal: &[u8; N]) -> Option<()> {
        self.optional(literal).then_some(())
    }

    /// The closing `}`, with nothing after it.
    fn end(&mut self) -> bool {
        self.optional(b"}") && self.at == self.bytes.len()
    }

    /// A string of ASCII without escapes or control characters (anything else:
    /// serde_json). Looked at 8 bytes at a time.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b"\"")?;
        let start = self.at;
        while let Some(word) = self.bytes.get(self.at..).and_then(|rest| rest.first_chunk::<8>()) {
            let special = special_bytes(u64::from_le_bytes(*word));
            if special != 0 {
                self.at += special.trailing_zeros() as usize / 8;
                break;
            }
            self.at += 8;
        }
        // Here at the first special byte, or within 8 bytes of the end of the line.
        while !is_special(*self.bytes.get(self.at)?) {
            self.at += 1;
        }
        (self.bytes[self.at] == b'"').then(|| {
            self.at += 1;
            &self.bytes[start..self.at - 1]
        })
    }

    /// `literal` then a decimal number of at most 19 digits (so it can't overflow). A sign,
    /// fraction or exponent fails the next field's or the end's check.
    fn number_field<const N: usize>(&mut self, literal: &[u8; N]) -> Option<u64> {
        self.expect(literal)?;
        let (value, end) = decimal(self.bytes, self.at, 19)?;
        self.at = end;
        Some(value)
    }

    /// `literal` then a number (`Some(Some(n))`), `literal` then `null` or no `literal` at all
    /// (`Some(None)`); `None` for anything else.
    fn optional_number_field<const N: usize>(&mut self, literal: &[u8; N]) -> Option<Option<u64>> {
        if !self.optional(literal) || self.optional(b"null") {
            return Some(None);
        }
        let (value, end) = decimal(self.bytes, self.at, 19)?;
        self.at = end;
        Some(Some(value))
    }

    /// `"0x…"`: 1 to 16 hex digits.
    fn hex(&mut self) -> Option<u64> {
        self.expect(b"\"0x")?;
        let start = self.at;
        let mut value = 0u64;
        loop {
            let nibble = HEX_DIGITS[usize::from(*self.bytes.get(self.at)?)];
            if nibble == NOT_HEX {
                break;
            }
            value = value << 4 | u64::from(nibble);
            self.at += 1;
        }
        (1..=16).contains(&(self.at - start)).then_some(())?;
        self.expect(b"\"").map(|()| value)
    }

    /// `"a.b.c.d:port"` read straight off, or any other address through the general parser.
    fn address(&mut self) -> Option<SocketAddr> {
        let open = self.at;
        self.expect(b"\"")?;
        if let Some((address, end)) = ipv4_address(self.bytes, self.at)
            && self.bytes.get(end) == Some(&b'"')
        {
            self.at = end + 1;
            return Some(address);
        }
        self.at = open;
        std::str::from_utf8(self.string()?).ok()?.parse().ok()
    }

    /// A `tcp_info` object in the recorder's order, and the `error` after it, if any.
    fn tcp_info(&mut self) -> Option<Counters> {
        let info = TcpInfo {
            bytes_acked: self.number_field(b"{\"bytes_acked\":")?,
            bytes_received: self.number_field(b",\"bytes_received\":")?,
            bytes_retrans: self.number_field(b",\"bytes_retrans\":")?,
            segs_out: self.number_field(b",\"segs_out\":")?.try_into().ok()?,
            segs_in: self.number_field(b",\"segs_in\":")?.try_into().ok()?,
            total_retrans: self.number_field(b",\"total_retrans\":")?.try_into().ok()?,
            rtt_us: self.number_field(b",\"rtt_us\":")?.try_into().ok()?,
            min_rtt_us: self.number_field(b",\"min_rtt_us\":")?.try_into().ok()?,
            snd_cwnd: self.number_field(b",\"snd_cwnd\":")?.try_into().ok()?,
        };
        self.expect(b"}")?;
        let error = if self.optional(b",\"error\":") {
            Some(Errno::from_name(std::str::from_utf8(self.string()?).ok()?)?)
        } else {
            None
        };
        Some(Counters { info, error })
    }

    fn state(&mut self) -> Option<TcpState> {
        TcpState::from_name(self.string()?)
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.optional(b"true") { Some(true) } else { self.expect(b"false").map(|()| false) }
    }
}

/// `a.b.c.d:port` at `from`: (the address, where it ends).
fn ipv4_address(bytes: &[u8], from: usize) -> Option<(SocketAddr, usize)> {
    let mut octets = [0u8; 4];
    let mut at = from;
    for (i, octet) in octets.iter_mut().enumerate() {
        let (value, end) = decimal(bytes, at, 3)?;
        *octet = u8::try_from(value).ok()?;
        if bytes.get(end) != Some(if i < 3 { &b'.' } else { &b':' }) {
            return None;
        }
        at = end + 1;
    }
    let (port, end) = decimal(bytes, at, 5)?;
    Some((SocketAddr::from((octets, u16::try_from(port).ok()?)), end))
}

/// The decimal number at `from`: 1 to `most` digits (`None` for more), without a leading
/// zero: (value, where its digits end).
fn decimal(bytes: &[u8], from: usize, most: usize) -> Option<(u64, usize)> {
    let mut value = 0;
    let mut at = from;
    while let Some(&digit) = bytes.get(at)
        && digit.is_ascii_digit()
    {
        if at - from == most {
            return None;
        }
        value = value * 10 + u64::from(digit - b'0');
        at += 1;
    }
    let leading_zero = bytes.get(from) == Some(&b'0') && at - from > 1;
    (at > from && !leading_zero).then_some((value, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_fast_read_as_the_general_parser_does() {
        for text in ["127.0.0.1:8080", "10.0.0.255:0", "255.255.255.255:65535", "[::1]:443"] {
            let fast = ipv4_address(text.as_bytes(), 0).filter(|&(_, end)| end == text.len());
            assert_eq!(
                fast.map(|(address, _)| address),
                text.parse().ok().filter(SocketAddr::is_ipv4),
                "{text}"
            );
        }
        for text in [
            "01.0.0.1:80",
            "256.0.0.1:80",
            "1234.0.0.1:80",
            "1.2.3.4:65536",
            "1.2.3:80",
            "1.2.3.4.5:80",
        ] {
            let fast = ipv4_address(text.as_bytes(), 0).filter(|&(_, end)| end == text.len());
            assert_eq!(fast, None, "{text}");
            assert!(text.parse::<SocketAddr>().is_err(), "{text}");
        }
    }

    #[test]
    fn strings_end_at_their_quote_and_leave_escapes_and_non_ascii_to_serde() {
        for position in 0..20 {
            for byte in 0..=255u8 {
                let mut text = b"\"".to_vec();
                text.extend(std::iter::repeat_n(b'a', position));
                text.push(byte);
                text.extend_from_slice(b"bcdefghijk\"");
                let read = Cursor { bytes: &text, at: 0 }.string();
                let expected = match byte {
                    b'"' => Some(&text[1..=position]),
                    b'\\' | 0..0x20 | 0x80.. => None,
                    _ => Some(&text[1..text.len() - 1]),
                };
                assert_eq!(read, expected, "byte {byte:#x} at {position}");
            }
        }
        assert_eq!(Cursor { bytes: b"\"abc", at: 0 }.string(), None, "unterminated");
    }
}
