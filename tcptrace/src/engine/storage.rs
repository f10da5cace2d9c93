//! How the engine stores what it follows, compactly: states inline, addresses in 20 bytes,
//! sides and connections in slabs whose slots are reused (long churn fragments no heap).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::{
    Map,
    records::{Endpoint, Role, TimeWait},
};
use crate::event::{Counters, Home, Owner, Task, TcpState};

/// One state: durations follow from the next state's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Step {
    pub(super) state: TcpState,
    /// [`UNKNOWN_NS`] for the state a socket was in when tracing first saw it.
    pub(super) enter_ns: u64,
}

pub(super) const UNKNOWN_NS: u64 = u64::MAX;

impl Step {
    pub(super) fn enter(&self) -> Option<u64> {
        (self.enter_ns != UNKNOWN_NS).then_some(self.enter_ns)
    }
}

/// States stored inline: a whole life is 5 states (SYN_SENT … CLOSED), so almost no
/// endpoint allocates; longer ones spill the rest to the heap.
pub(super) const INLINE_STEPS: usize = 5;

/// An endpoint's states in order, without a heap allocation for the usual five.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Steps {
    pub(super) enter_ns: [u64; INLINE_STEPS],
    pub(super) states: [TcpState; INLINE_STEPS],
    pub(super) len: u8,
    /// Past the inline ones: rare, so a boxed slice (8 bytes here) regrown on each push.
    pub(super) more: Option<Box<[Step]>>,
}

impl Steps {
    pub(super) fn new() -> Steps {
        Steps {
            enter_ns: [0; INLINE_STEPS],
            states: [TcpState::Closed; INLINE_STEPS],
            len: 0,
            more: None,
        }
    }

    pub(super) fn push(&mut self, step: Step) {
        let len = usize::from(self.len);
        if len < INLINE_STEPS {
            self.enter_ns[len] = step.enter_ns;
            self.states[len] = step.state;
            self.len += 1;
        } else {
            let more = self.more.take().unwrap_or_default();
            self.more = Some(more.iter().copied().chain([step]).collect());
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = Step> + '_ {
        let inline = (0..usize::from(self.len))
            .map(|i| Step { state: self.states[i], enter_ns: self.enter_ns[i] });
        inline.chain(self.more.iter().flat_map(|more| more.iter().copied()))
    }

    pub(super) fn last(&self) -> Option<Step> {
        match (&self.more, usize::from(self.len)) {
            (Some(more), _) if !more.is_empty() => more.last().copied(),
            (_, 0) => None,
            (_, len) => {
                Some(Step { state: self.states[len - 1], enter_ns: self.enter_ns[len - 1] })
            }
        }
    }

    pub(super) fn passed(&self, state: TcpState) -> bool {
        self.iter().any(|step| step.state == state)
    }

    pub(super) fn entered(&self, state: TcpState) -> Option<u64> {
        self.iter().find(|step| step.state == state).and_then(|step| step.enter())
    }

    /// When this side sent its FIN (entered FIN_WAIT1 or LAST_ACK).
    pub(super) fn fin_sent_ns(&self) -> Option<u64> {
        match (self.entered(TcpState::FinWait1), self.entered(TcpState::LastAck)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// An IP address and port in 20 bytes (a `SocketAddr` takes 32): IPv4 is kept as an
/// IPv4-mapped IPv6 address, with `v6` telling the two families apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Address {
    pub(super) ip: [u8; 16],
    pub(super) port: u16,
    pub(super) v6: bool,
}

impl Address {
    /// 127.0.0.0/8 or ::1: an address every network namespace has for itself.
    pub(super) fn is_loopback(&self) -> bool {
        SocketAddr::from(*self).ip().is_loopback()
    }
}

/// A side's key among the unpaired ones: its namespace (0 when unknown) and its (local,
/// remote). Two namespaces can hold the same 4-tuple at once.
pub(super) type TupleKey = (u32, Address, Address);

impl From<SocketAddr> for Address {
    fn from(address: SocketAddr) -> Address {
        let (ip, v6) = match address.ip() {
            IpAddr::V4(ip) => (ip.to_ipv6_mapped(), false),
            IpAddr::V6(ip) => (ip, true),
        };
        Address { ip: ip.octets(), port: address.port(), v6 }
    }
}

impl From<Address> for SocketAddr {
    fn from(address: Address) -> SocketAddr {
        let ip = Ipv6Addr::from(address.ip);
        match ip.to_ipv4_mapped().filter(|_| !address.v6) {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), address.port),
            None => SocketAddr::new(IpAddr::V6(ip), address.port),
        }
    }
}

/// No time yet, in [`Side`]'s optional times (an `Option<u64>` takes twice the room).
pub(super) const NEVER: u64 = u64::MAX;

pub(super) fn at(ns: u64) -> Option<u64> {
    (ns != NEVER).then_some(ns)
}

/// An endpoint while the engine follows it: compact, in the engine's side table, and
/// turned into an [`Endpoint`] when its connection is handed out.
pub(super) struct Side {
    pub(super) sk: u64,
    pub(super) steps: Steps,
    pub(super) reset_sent_ns: u64,
    pub(super) reset_received_ns: u64,
    /// A close straight to CLOSED without FIN: an abort or RST ([`NEVER`] if none).
    pub(super) abort_ns: u64,
    pub(super) local: Address,
    pub(super) remote: Address,
    /// Its network namespace and cgroup, in the engine's table of them ([`Homes`]): 4
    /// bytes, not the 12 the two take, which keeps a side in 176 bytes.
    pub(super) home: HomeIndex,
    /// The socket's owner; pid 0 while unknown (the idle task never owns one).
    pub(super) owner: Owner,
    pub(super) connection: Index,
    /// Its time-wait socket in the engine's time-wait table, or [`NO_INDEX`].
    pub(super) time_wait: Index,
    /// Its counters at close in the engine's counter table, or [`NO_INDEX`]: most sides
    /// followed at once are open and have none, so they take no room here.
    pub(super) counters: Index,
    pub(super) role: Role,
    pub(super) incomplete: bool,
    pub(super) abort_in_process: bool,
    /// See [`Endpoint::seen_at_start`].
    pub(super) seen_at_start: bool,
}

impl Side {
    pub(super) fn is_closed(&self) -> bool {
        self.steps.last().is_some_and(|step| step.state == TcpState::Closed)
    }

    pub(super) fn tuple(&self) -> (Address, Address) {
        (self.local, self.remote)
    }

    pub(super) fn owner(&self) -> Option<Owner> {
        (self.owner.pid != 0).then_some(self.owner)
    }

    /// The current task becomes the owner when it can be trusted to be one.
    pub(super) fn learn_owner(&mut self, task: &Task) -> Option<Owner> {
        if let Some(owner) = task.as_owner() {
            self.owner = owner;
        }
        self.owner()
    }

    /// The endpoint this side is now (its steps copied: they are inline, bar long lives).
    pub(super) fn to_endpoint(
        &self,
        home: Home,
        time_wait: Option<TimeWait>,
        counters: Option<Counters>,
    ) -> Endpoint {
        Endpoint {
            local: self.local.into(),
            remote: self.remote.into(),
            role: self.role,
            seen_at_start: self.seen_at_start,
            home,
            owner: self.owner(),
            steps: self.steps.clone(),
            time_wait: time_wait.map(Box::new),
            counters,
            reset_sent_ns: at(self.reset_sent_ns),
            reset_received_ns: at(self.reset_received_ns),
            incomplete: self.incomplete,
            abort: at(self.abort_ns).map(|ns| (ns, self.abort_in_process)),
        }
    }
}

/// A position in [`Homes`].
pub(super) type HomeIndex = u32;

/// Every (namespace, cgroup) the engine's sides are in, each stored once: a host has few.
pub(super) struct Homes {
    homes: Vec<Home>,
    index: Map<Home, HomeIndex>,
}

impl Homes {
    pub(super) fn new() -> Homes {
        Homes { homes: Vec::new(), index: Map::default() }
    }

    pub(super) fn intern(&mut self, home: Home) -> HomeIndex {
        if let Some(&index) = self.index.get(&home) {
            return index;
        }
        self.homes.push(home);
        let index = (self.homes.len() - 1) as HomeIndex;
        self.index.insert(home, index);
        index
    }

    pub(super) fn get(&self, index: HomeIndex) -> Home {
        self.homes.get(index as usize).copied().unwrap_or_default()
    }

    /// The side's namespace inode, 0 when unknown.
    pub(super) fn netns(&self, side: &Side) -> u32 {
        self.get(side.home).netns.unwrap_or(0)
    }

    /// The side's key among the unpaired ones.
    pub(super) fn key(&self, side: &Side) -> TupleKey {
        (self.netns(side), side.local, side.remote)
    }

    /// The side's home, with the cgroup an event says (only some events carry it; the
    /// namespace stays its first event's: the side is keyed by it).
    pub(super) fn learn(&mut self, side: &mut Side, home: Home) {
        if let Some(cgroup) = home.cgroup
            && self.get(side.home).cgroup != Some(cgroup)
        {
            side.home = self.intern(Home { cgroup: Some(cgroup), ..self.get(side.home) });
        }
    }
}

/// A position in a [`Slab`].
pub(super) type Index = u32;

pub(super) const NO_INDEX: Index = Index::MAX;

/// A table whose freed slots are reused: it stays at the size of the most entries live at
/// once, and long churn fragments no heap (nothing is allocated per entry).
pub(super) struct Slab<T> {
    pub(super) entries: Vec<Option<T>>,
    pub(super) free: Vec<Index>,
}

impl<T> Slab<T> {
    pub(super) fn new() -> Slab<T> {
        Slab { entries: Vec::new(), free: Vec::new() }
    }

    /// Room for `more` entries than there are now, made at once.
    pub(super) fn reserve(&mut self, more: usize) {
        self.entries.reserve(more.saturating_sub(self.free.len()));
    }

    pub(super) fn insert(&mut self, value: T) -> Index {
        match self.free.pop() {
            Some(index) => {
                self.entries[index as usize] = Some(value);
                index
            }
            None => {
                self.entries.push(Some(value));
                (self.entries.len() - 1) as Index
            }
        }
    }

    pub(super) fn remove(&mut self, index: Index) -> Option<T> {
        let value = self.entries.get_mut(index as usize)?.take()?;
        self.free.push(index);
        Some(value)
    }

    pub(super) fn get(&self, index: Index) -> Option<&T> {
        self.entries.get(index as usize)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, index: Index) -> Option<&mut T> {
        self.entries.get_mut(index as usize)?.as_mut()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (Index, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| Some((index as Index, entry.as_ref()?)))
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().flatten()
    }
}

/// A connection being followed: its sides sit in the engine's side table.
pub(super) struct Tracked {
    pub(super) id: u64,
    pub(super) last_activity_ns: u64,
    /// One side, or two when both ends are on this host ([`NO_INDEX`] for none).
    pub(super) sides: [Index; 2],
    pub(super) incomplete: bool,
}

impl Tracked {
    pub(super) fn sides(&self) -> impl Iterator<Item = Index> + use<> {
        self.sides.into_iter().filter(|&side| side != NO_INDEX)
    }
}
