//! Member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`). Rust eBPF has no CO-RE
//! relocations, so the loader finds where `struct tcp_sock` keeps each counter the kernel
//! program reads, and where a socket names its network namespace and cgroup, and passes
//! the offsets in its configuration, as it does with tracefs's.
//!
//! Hand-written, after a measurement: btfparse (Apache-2.0, the crate made for this
//! question; btf-rs is LGPL-2.1) indexes all of the kernel's 130 000-odd types to answer it,
//! which took tcptrace's peak RSS from 27 to 66 MiB and 0.15 s of CPU at every start. This
//! reads the file once, keeps one offset per type id, and follows only the members asked
//! for: a few MiB, a few ms. The kernel tests check it against btfparse member by member.

use anyhow::{Context, Result, anyhow, bail, ensure};
use tcptrace_common::{
    SockOffsets, SocketHomeOffsets, TcpSockOffsets, TimeWaitSockOffsets, TimerOffsets,
};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

// Type kinds (`include/uapi/linux/btf.h`).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A BTF file: its bytes, and where each type's record starts.
pub struct Btf {
    bytes: Vec<u8>,
    strings: usize,
    /// Byte offset of type `id`'s record (`types[id - 1]`; id 0 is `void`).
    types: Vec<usize>,
}

/// One type record's header.
struct TypeHeader {
    name: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// The size for ints, structs, unions and enums; the type referred to for the others.
    size_or_type: u32,
    /// Where what follows the header starts.
    data: usize,
}

impl Btf {
    pub fn read(path: &str) -> Result<Btf> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
        Btf::parse(bytes).with_context(|| format!("{path} is not BTF tcptrace can read"))
    }

    pub fn parse(bytes: Vec<u8>) -> Result<Btf> {
        let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        ensure!(u16_at(0) == Some(MAGIC), "no BTF magic (little-endian)");
        let header = |at| u32_at(&bytes, at).map(|v| v as usize);
        let (hdr_len, type_off, type_len, str_off) =
            (header(4)?, header(8)?, header(12)?, header(16)?);
        let (first_type, strings) = (hdr_len + type_off, hdr_len + str_off);
        let mut btf = Btf { bytes, strings, types: Vec::new() };
        let mut at = first_type;
        while at < first_type + type_len {
            btf.types.push(at);
            let record = btf.header_at(at)?;
            at = record.data + btf.data_len(&record)?;
        }
        Ok(btf)
    }

    fn header_at(&self, at: usize) -> Result<TypeHeader> {
        let info = u32_at(&self.bytes, at + 4)?;
        Ok(TypeHeader {
            name: u32_at(&self.bytes, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 != 0,
            size_or_type: u32_at(&self.bytes, at + 8)?,
            data: at + 12,
        })
    }

    /// The bytes of kind-specific data after a type's header.
    fn data_len(&self, record: &TypeHeader) -> Result<usize> {
        Ok(match record.kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * record.vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * record.vlen,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            other => bail!("unknown BTF kind {other}"),
        })
    }

    fn string(&self, offset: u32) -> Result<&str> {
        let start = self.strings + offset as usize;
        let rest = self.bytes.get(start..).context("a name past the string section")?;
        let end = rest.iter().position(|&b| b == 0).context("an unterminated name")?;
        std::str::from_utf8(&rest[..end]).context("a name that is not UTF-8")
    }

    fn type_by_id(&self, id: u32) -> Result<TypeHeader> {
        let at = *self.types.get((id as usize).wrapping_sub(1)).context("no such type id")?;
        self.header_at(at)
    }

    /// The id of the struct named `name`.
    pub fn struct_named(&self, name: &str) -> Result<u32> {
        (1..=self.types.len() as u32)
            .find(|&id| {
                self.type_by_id(id).is_ok_and(|t| {
                    t.kind == KIND_STRUCT && self.string(t.name).is_ok_and(|n| n == name)
                })
            })
            .ok_or_else(|| anyhow!("the kernel's BTF has no struct {name}"))
    }

    /// The size in bytes of the struct named `name`.
    pub fn struct_size(&self, name: &str) -> Result<u32> {
        self.size_of(self.struct_named(name)?)
    }

    /// Past typedefs and qualifiers, to the type that has a layout.
    fn resolve(&self, mut id: u32) -> Result<(u32, TypeHeader)> {
        loop {
            let record = self.type_by_id(id)?;
            match record.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = record.size_or_type;
                }
                _ => return Ok((id, record)),
            }
        }
    }

    /// A type's size in bytes (ints, structs, unions, enums, arrays of them).
    fn size_of(&self, id: u32) -> Result<u32> {
        let (_, record) = self.resolve(id)?;
        match record.kind {
            KIND_ARRAY => {
                let element = u32_at(&self.bytes, record.data)?;
                Ok(self.size_of(element)? * u32_at(&self.bytes, record.data + 8)?)
            }
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => {
                Ok(record.size_or_type)
            }
            // Kernel pointers, on the 64-bit machines tcptrace runs on.
            KIND_PTR => Ok(8),
            other => bail!("a type of kind {other} has no size here"),
        }
    }

    /// The member called `name` of struct or union `id`, looking inside anonymous ones:
    /// (its type, its byte offset).
    fn member(&self, id: u32, name: &str) -> Result<Option<(u32, u32)>> {
        let (_, record) = self.resolve(id)?;
        ensure!(matches!(record.kind, KIND_STRUCT | KIND_UNION), "`{name}`'s parent is no struct");
        for index in 0..record.vlen {
            let at = record.data + 12 * index;
            let (member_name, member_type, offset) = (
                u32_at(&self.bytes, at)?,
                u32_at(&self.bytes, at + 4)?,
                u32_at(&self.bytes, at + 8)?,
            );
            // With kind_flag the offset's top byte is a bitfield's size.
            let (bits, bitfield) =
                if record.kind_flag { (offset & 0xff_ffff, offset >> 24) } else { (offset, 0) };
            let own_name = self.string(member_name)?;
            if own_name == name {
                ensure!(bitfield == 0 && bits % 8 == 0, "`{name}` is a bitfield");
                return Ok(Some((member_type, bits / 8)));
            }
            if own_name.is_empty()
                && let Some((found, inner)) = self.member(member_type, name)?
            {
                return Ok(Some((found, bits / 8 + inner)));
            }
        }
        Ok(None)
    }

    /// The byte offset and size of `path` (`a.b[2].c`) inside struct `id`.
    pub fn offset_of(&self, id: u32, path: &str) -> Result<(u32, u32)> {
        let (mut current, mut offset) = (id, 0);
        for part in path.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((name, index)) => (name, Some(index.trim_end_matches(']').parse::<u32>()?)),
                None => (part, None),
            };
            let (member_type, member_offset) =
                self.member(current, name)?.ok_or_else(|| anyhow!("no member `{name}`"))?;
            offset += member_offset;
            current = member_type;
            if let Some(index) = index {
                let (_, array) = self.resolve(current)?;
                ensure!(array.kind == KIND_ARRAY, "`{name}` is not an array");
                let element = u32_at(&self.bytes, array.data)?;
                ensure!(index < u32_at(&self.bytes, array.data + 8)?, "`{part}` is out of bounds");
                offset += index * self.size_of(element)?;
                current = element;
            }
        }
        Ok((offset, self.size_of(current)?))
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    let word = bytes.get(at..at + 4).context("BTF cut short")?;
    Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
}

/// A member the kernel program reads: its struct, its path in it (`a.b[2].c`), its size in
/// bytes (0 for a flexible array), and where its offset goes in the offsets `O`.
pub struct Member<O> {
    pub parent: &'static str,
    pub path: &'static str,
    pub size: u32,
    pub slot: fn(&mut O) -> &mut u16,
}

const fn member<O>(
    parent: &'static str,
    path: &'static str,
    size: u32,
    slot: fn(&mut O) -> &mut u16,
) -> Member<O> {
    Member { parent, path, size, slot }
}

/// The members of `struct tcp_sock` the kernel program reads on a close.
pub const TCP_SOCK_MEMBERS: [Member<TcpSockOffsets>; 10] = [
    member("tcp_sock", "bytes_acked", 8, |o| &mut o.bytes_acked),
    member("tcp_sock", "bytes_received", 8, |o| &mut o.bytes_received),
    member("tcp_sock", "bytes_retrans", 8, |o| &mut o.bytes_retrans),
    member("tcp_sock", "segs_out", 4, |o| &mut o.segs_out),
    member("tcp_sock", "segs_in", 4, |o| &mut o.segs_in),
    member("tcp_sock", "total_retrans", 4, |o| &mut o.total_retrans),
    member("tcp_sock", "srtt_us", 4, |o| &mut o.srtt_us),
    member("tcp_sock", "rtt_min.s[0].v", 4, |o| &mut o.min_rtt),
    member("tcp_sock", "snd_cwnd", 4, |o| &mut o.snd_cwnd),
    member("tcp_sock", "inet_conn.icsk_inet.sk.sk_err", 4, |o| &mut o.sk_err),
];

/// What a socket's network namespace is read through.
pub const NETNS_MEMBERS: [Member<SocketHomeOffsets>; 2] = [
    member("sock", "__sk_common.skc_net.net", 8, |o| &mut o.sock_net),
    member("net", "ns.inum", 4, |o| &mut o.net_inum),
];

/// What a socket's cgroup (and its ancestors, for `--cgroup`) is read through.
pub const CGROUP_MEMBERS: [Member<SocketHomeOffsets>; 5] = [
    member("sock", "sk_cgrp_data.cgroup", 8, |o| &mut o.sock_cgroup),
    member("cgroup", "kn", 8, |o| &mut o.cgroup_kn),
    member("kernfs_node", "id", 8, |o| &mut o.kernfs_id),
    member("cgroup", "level", 4, |o| &mut o.cgroup_level),
    member("cgroup", "ancestors", 0, |o| &mut o.cgroup_ancestors),
];

/// What `inet_sock_set_state` loads from a socket: its protocol, both ends, and whether a
/// task holds it.
pub const SOCK_MEMBERS: [Member<SockOffsets>; 10] = [
    member("sock", "sk_protocol", 2, |o| &mut o.protocol),
    member("sock", "__sk_common.skc_family", 2, |o| &mut o.family),
    member("sock", "__sk_common.skc_num", 2, |o| &mut o.num),
    member("sock", "__sk_common.skc_dport", 2, |o| &mut o.dport),
    member("sock", "__sk_common.skc_rcv_saddr", 4, |o| &mut o.rcv_saddr),
    member("sock", "__sk_common.skc_daddr", 4, |o| &mut o.daddr),
    member("sock", "__sk_common.skc_v6_rcv_saddr", 16, |o| &mut o.v6_rcv_saddr),
    member("sock", "__sk_common.skc_v6_daddr", 16, |o| &mut o.v6_daddr),
    member("sock", "sk_lock.owned", 4, |o| &mut o.lock_owned),
    member("inet_sock", "inet_sport", 2, |o| &mut o.inet_sport),
];

/// What the timer programs load from a timer: which function it runs, and when.
pub const TIMER_MEMBERS: [Member<TimerOffsets>; 2] = [
    member("timer_list", "function", 8, |o| &mut o.function),
    member("timer_list", "expires", 8, |o| &mut o.expires),
];

/// Where a time-wait socket keeps its timer and its two ends, and what finds it in the
/// established hash.
pub const TIME_WAIT_SOCK_MEMBERS: [Member<TimeWaitSockOffsets>; 15] = [
    // Its first member: the timer's own offset, which `fill` needs a sized member for.
    member("inet_timewait_sock", "tw_timer.entry", 16, |o| &mut o.tw_timer),
    member("inet_timewait_sock", "__tw_common.skc_daddr", 4, |o| &mut o.daddr),
    member("inet_timewait_sock", "__tw_common.skc_rcv_saddr", 4, |o| &mut o.rcv_saddr),
    member("inet_timewait_sock", "__tw_common.skc_dport", 2, |o| &mut o.dport),
    member("inet_timewait_sock", "__tw_common.skc_num", 2, |o| &mut o.num),
    member("inet_timewait_sock", "__tw_common.skc_family", 2, |o| &mut o.family),
    member("inet_timewait_sock", "__tw_common.skc_v6_daddr", 16, |o| &mut o.v6_daddr),
    member("inet_timewait_sock", "__tw_common.skc_v6_rcv_saddr", 16, |o| &mut o.v6_rcv_saddr),
    member("inet_timewait_sock", "__tw_common.skc_portpair", 4, |o| &mut o.portpair),
    member("inet_timewait_sock", "__tw_common.skc_hash", 4, |o| &mut o.hash),
    member("inet_timewait_sock", "__tw_common.skc_state", 1, |o| &mut o.state),
    member("inet_timewait_sock", "__tw_common.skc_nulls_node", 16, |o| &mut o.nulls_node),
    member("net", "ipv4.tcp_death_row.hashinfo", 8, |o| &mut o.net_hashinfo),
    member("inet_hashinfo", "ehash", 8, |o| &mut o.ehash),
    member("inet_hashinfo", "ehash_mask", 4, |o| &mut o.ehash_mask),
];

impl Btf {
    /// Fills `offsets` with every member's offset, or says which one is missing or has
    /// another size than the kernel program reads.
    pub fn fill<O>(&self, members: &[Member<O>], offsets: &mut O) -> Result<()> {
        let mut ids: Vec<(&str, u32)> = Vec::new(); // each struct is looked up once
        for Member { parent, path, size, slot } in members {
            let id = match ids.iter().find(|(name, _)| name == parent) {
                Some(&(_, id)) => id,
                None => {
                    let id = self.struct_named(parent)?;
                    ids.push((parent, id));
                    id
                }
            };
            let (offset, found) = self
                .offset_of(id, path)
                .with_context(|| format!("struct {parent} has no usable `{path}`"))?;
            ensure!(
                found == *size,
                "`{parent}.{path}` is {found} bytes here; tcptrace reads {size}"
            );
            *slot(offsets) =
                u16::try_from(offset).map_err(|_| anyhow!("`{parent}.{path}` lies past 64 KiB"))?;
        }
        Ok(())
    }
}

/// Where `struct tcp_sock` keeps what `TCP_INFO` reports.
pub fn tcp_sock_offsets(btf: &Btf) -> Result<TcpSockOffsets> {
    let mut offsets = TcpSockOffsets::default();
    btf.fill(&TCP_SOCK_MEMBERS, &mut offsets)?;
    offsets.valid = 1;
    Ok(offsets)
}

/// Where a socket keeps what the state-change program reads.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets> {
    let mut offsets = SockOffsets::default();
    btf.fill(&SOCK_MEMBERS, &mut offsets)?;
    Ok(offsets)
}

/// Where a timer keeps its function and expiry.
pub fn timer_offsets(btf: &Btf) -> Result<TimerOffsets> {
    let mut offsets = TimerOffsets::default();
    btf.fill(&TIMER_MEMBERS, &mut offsets)?;
    Ok(offsets)
}

/// Where a time-wait socket keeps its timer and addresses, and how it is found. Its
/// namespace and its sock_common members are read as a socket's: both begin with a `struct
/// sock_common`.
pub fn time_wait_sock_offsets(btf: &Btf) -> Result<TimeWaitSockOffsets> {
    let mut offsets = TimeWaitSockOffsets::default();
    btf.fill(&TIME_WAIT_SOCK_MEMBERS, &mut offsets)?;
    let (common, _) = btf.offset_of(btf.struct_named("inet_timewait_sock")?, "__tw_common")?;
    ensure!(common == 0, "a time-wait socket does not begin with its sock_common");
    let (common, _) = btf.offset_of(btf.struct_named("sock")?, "__sk_common")?;
    ensure!(common == 0, "a socket does not begin with its sock_common");
    let bucket = btf.struct_size("inet_ehash_bucket")?;
    offsets.bucket_size =
        u16::try_from(bucket).map_err(|_| anyhow!("struct inet_ehash_bucket is {bucket} bytes"))?;
    offsets.valid = 1;
    Ok(offsets)
}

/// Where a socket names its network namespace and its cgroup; each part on its own, with
/// why the other is off if it is.
pub fn socket_home_offsets(btf: &Btf) -> (SocketHomeOffsets, Vec<anyhow::Error>) {
    let mut offsets = SocketHomeOffsets::default();
    let mut errors = Vec::new();
    match btf.fill(&NETNS_MEMBERS, &mut offsets) {
        Ok(()) => offsets.netns_valid = 1,
        Err(error) => errors.push(error.context("network namespaces")),
    }
    match btf.fill(&CGROUP_MEMBERS, &mut offsets) {
        Ok(()) => offsets.cgroup_valid = 1,
        Err(error) => errors.push(error.context("cgroups")),
    }
    (offsets, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct s { u32 a; union { u64 b; }; u32 c[3]; struct { u32 d; } e; }`.
    fn blob() -> Vec<u8> {
        let names = b"\0u32\0u64\0s\0a\0b\0c\0d\0e\0\0";
        let name = |text: &str| {
            let needle = [&[0u8][..], text.as_bytes(), &[0]].concat();
            names.windows(needle.len()).position(|w| w == needle).unwrap() as u32 + 1
        };
        let mut types: Vec<u32> = Vec::new();
        let mut record = |words: &[u32]| types.extend_from_slice(words);
        let info = |kind: u32, vlen: u32| kind << 24 | vlen;
        record(&[name("u32"), info(KIND_INT, 0), 4, 32]); // 1
        record(&[name("u64"), info(KIND_INT, 0), 8, 64]); // 2
        record(&[0, info(KIND_UNION, 1), 8, name("b"), 2, 0]); // 3: union { u64 b; }
        record(&[0, info(KIND_ARRAY, 0), 0, 1, 1, 3]); // 4: u32[3]
        record(&[0, info(KIND_STRUCT, 1), 4, name("d"), 1, 0]); // 5: struct { u32 d; }
        record(&[0, info(KIND_TYPEDEF, 0), 5]); // 6: a typedef of it
        let members = [name("a"), 1, 0, 0, 3, 64, name("c"), 4, 128, name("e"), 6, 224];
        record(&[name("s"), info(KIND_STRUCT, 4), 32]);
        record(&members); // 7
        let type_section: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&[1, 0]);
        for word in
            [24u32, 0, type_section.len() as u32, type_section.len() as u32, names.len() as u32]
        {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.extend_from_slice(&type_section);
        bytes.extend_from_slice(names);
        bytes
    }

    #[test]
    fn finds_members_inside_anonymous_unions_arrays_and_typedefs() {
        let btf = Btf::parse(blob()).unwrap();
        let s = btf.struct_named("s").unwrap();
        assert_eq!(btf.offset_of(s, "a").unwrap(), (0, 4));
        assert_eq!(btf.offset_of(s, "b").unwrap(), (8, 8), "inside the anonymous union");
        assert_eq!(btf.offset_of(s, "c").unwrap(), (16, 12));
        assert_eq!(btf.offset_of(s, "c[2]").unwrap(), (24, 4));
        assert_eq!(btf.offset_of(s, "e.d").unwrap(), (28, 4), "through the typedef");
        assert!(btf.offset_of(s, "c[3]").is_err(), "out of bounds");
        assert!(btf.offset_of(s, "f").unwrap_err().to_string().contains("no member `f`"));
        assert!(btf.struct_named("t").is_err());
    }

    #[test]
    fn a_missing_file_or_one_that_is_not_btf_is_an_error_that_names_it() {
        let error = format!("{:#}", Btf::read("/nonexistent/vmlinux").err().unwrap());
        assert!(error.contains("/nonexistent/vmlinux"), "{error}");
        let error = format!("{:#}", Btf::parse(b"not BTF at all".to_vec()).err().unwrap());
        assert!(error.contains("no BTF magic"), "{error}");
        let mut cut = blob();
        cut.truncate(40);
        assert!(Btf::parse(cut).is_err(), "cut short");
    }
}
