//! A reset tracepoint's record: copied once per event into this CPU's state, and read from
//! there at the offsets the loader found in tracefs.

use aya_ebpf::{EbpfContext, helpers::bpf_probe_read_kernel_buf, programs::TracePointContext};
use aya_log_ebpf::error;
use tcptrace_common::{AF_INET, AddressOffsets, Event, RECORD_BYTES};

use crate::{CPU_STATE, CpuState};

/// The current record, copied once. Fields are read from the copy at offsets masked to the
/// buffer, which is what lets the verifier accept offsets only known at load time.
pub struct Record(&'static [u8; RECORD_BYTES]);

impl Record {
    /// Copies the record into this CPU's state.
    #[inline(always)]
    pub fn copy(ctx: &TracePointContext) -> Option<Record> {
        // SAFETY: the per-CPU map value lives as long as the program is loaded, and only
        // this CPU touches it, one program at a time (tracepoint programs don't nest on a
        // CPU), so this is the only reference to it while the program runs.
        let state = unsafe { &mut *CPU_STATE.get_ptr_mut(0)? };
        // SAFETY: the helper reads at most `RECORD_BYTES` from the record into our buffer
        // of that size, and fails (instead of faulting) on an unreadable address.
        let copied =
            unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut state.record) };
        if copied.is_err() {
            // The loader checked that every field is within the first RECORD_BYTES of the
            // record; a record shorter than that is a layout it did not expect.
            error!(ctx, "the tracepoint record is shorter than {} bytes", RECORD_BYTES);
            return None;
        }
        let CpuState { record, .. } = state;
        Some(Record(record))
    }

    /// The field of type `T` at `offset`. Masking the offset with `RECORD_BYTES - size`
    /// keeps the read inside the buffer and aligned (fields are naturally aligned), so it
    /// is one load, not one per byte.
    #[inline(always)]
    pub fn get<T: Copy>(&self, offset: u16) -> T {
        let offset = offset as usize & (RECORD_BYTES - size_of::<T>());
        // SAFETY: the mask keeps `offset + size_of::<T>()` within the buffer (its size and
        // every `T` read are powers of two), and keeps the offset a multiple of the field's
        // size, so the load is in bounds and aligned; `T` is a plain integer type.
        unsafe { *(self.0.as_ptr().add(offset) as *const T) }
    }

    /// Fills what transitions and resets carry about both ends: the family, the ports, and
    /// the source and destination addresses, read at the `v4` (4 bytes each) or `v6` (16
    /// bytes each) offsets by family.
    #[inline(always)]
    pub fn fill_endpoints(
        &self,
        event: &mut Event,
        family: u16,
        (sport, dport): (u16, u16),
        v4: (u16, u16),
        v6: (u16, u16),
    ) {
        event.family = family as u8;
        event.sport = sport;
        event.dport = dport;
        let ((src, dst), words) = if family == AF_INET { (v4, 2) } else { (v6, 8) };
        self.copy_to(src, &mut event.saddr, words);
        self.copy_to(dst, &mut event.daddr, words);
    }

    /// Fills both ends from a record laid out as `offsets` says (`family` and `ports` were
    /// read from it already, for the filters).
    #[inline(always)]
    pub fn fill_from(
        &self,
        event: &mut Event,
        offsets: &AddressOffsets,
        family: u16,
        ports: (u16, u16),
    ) {
        let (v4, v6) = ((offsets.saddr, offsets.daddr), (offsets.saddr_v6, offsets.daddr_v6));
        self.fill_endpoints(event, family, ports, v4, v6);
    }

    /// Copies an address of `words` 2-byte words (2 or 8) at `offset` into `to`. Two bytes
    /// at a time: some records place addresses on 2-byte boundaries (`tcp_receive_reset`).
    #[inline(always)]
    fn copy_to(&self, offset: u16, to: &mut [u8; 16], words: usize) {
        for word in 0..8 {
            if word < words {
                let value: u16 = self.get(offset + 2 * word as u16);
                to[2 * word..2 * word + 2].copy_from_slice(&value.to_ne_bytes());
            }
        }
    }
}
