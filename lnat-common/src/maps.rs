//! The types of lnat's BPF maps, shared by the datapath and the `lnat` command.
//!
//! All are `#[repr(C)]` plain data. Addresses are kept as four bytes in dotted order and NIDs as
//! (address, LND, number) so that `bpftool map dump` of the BTF-typed maps reads naturally.

use crate::{ahead::Scan, history::RUNS, nid::Nid, segment::Driver, tracker::Tracker};

/// Most LNet ports one attachment follows.
pub const MAX_PORTS: usize = 8;
/// Default capacity of the flow table.
pub const DEFAULT_FLOWS: u32 = 4096;
/// Capacity of the mapping table.
pub const MAX_MAPPINGS: u32 = 256;

/// Names of the pinned maps, as `bpftool` and `lnat status` find them.
pub mod names {
    /// Per-interface settings written by `lnat attach` ([`super::Config`]).
    pub const CONFIG: &str = "LNAT_CONFIG";
    /// External NID to local address ([`super::NidKey`] to [`super::Mapping`]).
    pub const MAPPINGS: &str = "LNAT_MAPPINGS";
    /// Followed connections ([`super::FlowKey`] to [`super::FlowState`]).
    pub const FLOWS: &str = "LNAT_FLOWS";
    /// Where each followed connection's segments pass without the tracker
    /// ([`super::FlowKey`] to [`crate::quiet::Quiet`]): apart from the large flow entries, so
    /// that the lookup most packets make stays in cache with thousands of connections.
    pub const QUIET: &str = "LNAT_QUIET";
    /// Per-CPU decision counters ([`super::Counters`]).
    pub const COUNTERS: &str = "LNAT_COUNTERS";
    /// Learned mappings, as they happen ([`super::LearnEvent`]).
    pub const EVENTS: &str = "LNAT_EVENTS";
    /// Scratch space for building a flow entry ([`super::FlowState`]).
    pub const SCRATCH: &str = "LNAT_SCRATCH";
    /// Per-packet working state of the datapath ([`super::Work`]).
    pub const WORK: &str = "LNAT_WORK";
    /// The streams this host sends on followed connections ([`super::FlowKey`] to
    /// [`super::OutFlowState`]), followed by the egress program for its discovery pushes.
    pub const OUT_FLOWS: &str = "LNAT_OUT_FLOWS";
    /// [`QUIET`] for the streams this host sends.
    pub const OUT_QUIET: &str = "LNAT_OUT_QUIET";
    /// [`SCRATCH`] for an outgoing flow entry ([`super::OutFlowState`]).
    pub const OUT_SCRATCH: &str = "LNAT_OUT_SCRATCH";
    /// [`WORK`] for the egress program: its own, as an egress run may begin on a CPU whose
    /// ingress run it interrupted.
    pub const OUT_WORK: &str = "LNAT_OUT_WORK";
    /// The bytes of segments passed ahead of the tracker ([`super::FlowKey`] to
    /// [`super::Kept`], [`crate::ahead`]) until it parses them.
    pub const KEPT: &str = "LNAT_KEPT";
    /// Where a segment's bytes are read and scanned before they are kept.
    pub const KEPT_NEW: &str = "LNAT_KEPT_NEW";
    /// Every map lnat pins, in the order `lnat status` reports them.
    pub const ALL: [&str; 14] = [
        CONFIG,
        MAPPINGS,
        FLOWS,
        QUIET,
        COUNTERS,
        EVENTS,
        SCRATCH,
        WORK,
        OUT_FLOWS,
        OUT_QUIET,
        OUT_SCRATCH,
        OUT_WORK,
        KEPT,
        KEPT_NEW,
    ];
}

/// An IPv4 address as four bytes in dotted order.
pub type Addr = [u8; 4];

/// A connection as an ingress packet names it: the peer sends from `peer`, we receive on `local`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct FlowKey {
    /// The sender's address.
    pub peer_addr: Addr,
    /// Our address.
    pub local_addr: Addr,
    /// The sender's port.
    pub peer_port: u16,
    /// Our port.
    pub local_port: u16,
}

/// An IPv4 NID as a map key.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, PartialOrd, Ord)]
pub struct NidKey {
    /// Address in dotted order.
    pub addr: Addr,
    /// LND type (2 for tcp).
    pub lnd: u16,
    /// Net number.
    pub num: u16,
}

impl Config {
    /// Both generations as one value: any mapping change, from either side, changes it.
    pub const fn generations(&self) -> u64 {
        ((self.generation as u64) << 32) | self.learn_generation as u64
    }

    /// Which end of a connection between the peer's port `peer` and our port `local` is a
    /// followed LNet port: `Some(true)` when the peer's (we connected to it), `Some(false)` when
    /// ours, `None` when neither.
    ///
    /// One pass over the ports, each compared as it is read: two separate passes made the
    /// compiler keep every port in its own stack slot, which the eBPF stack cannot spare.
    pub fn lnet_side(&self, peer: u16, local: u16) -> Option<bool> {
        let n = self.nports as usize;
        let mut ours = false;
        let mut i = 0;
        while i < MAX_PORTS && i < n {
            let p = self.ports[i];
            if p == peer {
                return Some(true);
            }
            ours |= p == local;
            i += 1;
        }
        ours.then_some(false)
    }
}

impl NidKey {
    /// The key of `nid`.
    pub const fn of(nid: Nid) -> Self {
        NidKey {
            addr: nid.addr().to_be_bytes(),
            lnd: nid.lnd(),
            num: nid.num(),
        }
    }

    /// The NID this key names.
    pub const fn nid(&self) -> Nid {
        Nid::new(u32::from_be_bytes(self.addr), self.lnd, self.num)
    }
}

/// Where a mapping came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Origin {
    /// From a server's HELLO on a connection we opened.
    Learned = 1,
    /// From `--external` or `lnat map add`.
    Static = 2,
}

/// What an external NID becomes.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Mapping {
    /// The local address to write; 0.0.0.0 means each connection's own address.
    pub local_addr: Addr,
    /// For a learned mapping, the address of the connection it was learned on (for display).
    pub learned_on: Addr,
    /// [`Origin`].
    pub origin: u8,
    /// Keeps the counters aligned.
    pub _pad: [u8; 7],
    /// NIDs rewritten through this mapping.
    pub hits: u64,
    /// `bpf_ktime_get_ns` of the last rewrite (or of creation).
    pub last_used_ns: u64,
}

/// Settings of one attachment, in slot 0 of the config array.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Config {
    /// LNet acceptor ports to follow.
    pub ports: [u16; MAX_PORTS],
    /// How many of `ports` are set.
    pub nports: u8,
    /// 1 to learn external NIDs from HELLOs.
    pub learn: u8,
    /// Bytes of link-layer header before IPv4 (14 on Ethernet, 0 on IP-only devices).
    pub l2_len: u8,
    /// 1 when the egress program rewrites this host's discovery pushes (not
    /// `--ingress-only`): only then does the ingress one make a server ask for them.
    pub egress: u8,
    /// Bumped by `lnat` on every mapping change, so flows drop cached lookups.
    pub generation: u32,
    /// Bumped by the datapath on every mapping it learns, for the same reason. Kept apart from
    /// `generation` so neither side's read-modify-write can swallow the other's bump.
    pub learn_generation: u32,
    /// The external NID most recently learned or added: the first guess for new connections.
    pub hint: NidKey,
}

/// Declares [`Counters`] from one table: each counter once, with the doc comment that is also
/// its description in `lnat status --help`. Adding a counter is adding a line here; the struct,
/// the sum over CPUs and what `lnat status` prints follow, in this order.
macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// What the datapath decided, summed over CPUs by `lnat status`.
        ///
        /// Plain `u64` fields, so that the datapath counts with `c.field += 1` and `bpftool`
        /// prints them by name from BTF.
        #[repr(C)]
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
        pub struct Counters {
            $($(#[doc = $doc])+ pub $name: u64,)+
        }

        impl Counters {
            /// How many counters there are.
            pub const COUNT: usize = [$(stringify!($name)),+].len();

            /// Each counter's name and what it counts, in the order `lnat status` prints them.
            pub const DESCRIPTIONS: [(&'static str, &'static str); Self::COUNT] =
                [$((stringify!($name), concat!($($doc),+).trim_ascii())),+];

            /// Each counter's name and value, in the order `lnat status` prints them.
            pub const fn fields(&self) -> [(&'static str, u64); Self::COUNT] {
                [$((stringify!($name), self.$name)),+]
            }

            /// Adds `other` field by field (the sum of the per-CPU copies).
            pub const fn add(&mut self, other: &Counters) {
                $(self.$name = self.$name.wrapping_add(other.$name);)+
            }
        }
    };
}

counters! {
    /// TCP segments with payload on a followed connection.
    segments,
    /// NID addresses rewritten.
    rewritten,
    /// V2 checksummed messages whose dest_pid compensates a rewrite.
    compensated,
    /// External NIDs learned from HELLOs.
    learned,
    /// Learned NIDs the mapping table had no room for.
    learn_failed,
    /// Segments dropped because they start past a header not yet seen (TCP resends them).
    dropped_ooo,
    /// Segments past a header not yet seen passed unchanged all the same, as nothing in them
    /// can change (their SACK starts the sender's fast retransmit); their bytes are kept
    /// until the tracker reaches them.
    passed_ahead,
    /// Segments dropped because the patch history had no room for theirs without forgetting
    /// patches the client had not yet received (TCP resends them once it has).
    held,
    /// Connections given up as unfollowable and passed through from then on.
    desynced,
    /// Segments on an LNet port of a connection with no flow state, passed untouched: opened
    /// before the attachment, pushed out of a full flow table, or freed after it closed.
    untracked,
    /// NIDs decided on their first bytes that the whole NID contradicted.
    conflicts,
    /// Segments overlapping a stretch whose patches the history forgot before the client had
    /// received it (a patch could have applied there), passed with what it still knows. 0
    /// where nothing is ever rewritten.
    history_misses,
    /// Connections followed from their handshake.
    flows_opened,
    /// Connections that began to close (their first FIN or RST). Their state stays while
    /// their bytes can still come (README, Flows).
    flows_closed,
    /// Packets passed without a look at their payload (not IPv4 TCP on an LNet port).
    passed,
    /// IPv4 fragments on an LNet port, passed untouched.
    fragments,
    /// Segments dropped because another CPU was working on their connection (TCP resends them).
    contended,
    /// Of `segments`, those passed on their flow's quiet window without the tracker: the
    /// middle of payloads, most of a bulk transfer (see `quiet`).
    quiet,
    /// Of `segments`, those of connections already closing (after their FIN or RST):
    /// retransmissions and late copies, rewritten as their first copy was.
    closing,
    /// Server ping replies given the DISCOVERY feature, so that this host pushes its ping
    /// information to a server whose discovery is off (docs/discovery.md, ingress rule I1).
    discoverable,
    /// Segments with payload this host sent on a followed connection (the egress program).
    out_segments,
    /// This host's own NIDs in its discovery pushes, made its external NID.
    own_nids,
    /// Discovery pushes sent without the DISCOVERY feature, so that the server needs no push
    /// back over a connection it cannot open (docs/discovery.md, R2).
    undiscovered,
    /// Outgoing segments dropped for TCP to resend: past a header not yet seen, on a stream
    /// another CPU was working on, or held for the patch history.
    out_dropped,
    /// Outgoing streams given up as unfollowable and passed through from then on.
    out_desynced,
    /// Outgoing segments overlapping a stretch whose patches the history forgot.
    out_history_misses,
    /// Outgoing streams followed from their handshake.
    out_flows_opened,
}

/// The adapter's cache of the last mapping lookup, so headers to the same NID skip the map.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LookupCache {
    /// The NID looked up.
    pub nid: u64,
    /// [`Config::generation`] and [`Config::learn_generation`] when it was looked up.
    pub generation: u64,
    /// The mapped address (0 for the flow's own) when `mapped` is 1.
    pub local: u32,
    /// 1 when `nid` is mapped, 0 when not.
    pub mapped: u8,
    /// 1 when the cache holds a lookup.
    pub valid: u8,
    /// Keeps the struct a multiple of 8 bytes.
    pub _pad: [u8; 2],
}

/// Runs of patch history an outgoing stream keeps: its patches are only in discovery pushes,
/// a few per push, and pushes are rare.
pub const OUT_RUNS: usize = 8;

/// One followed direction of a connection; `N` runs of patch history.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FlowState<const N: usize = RUNS> {
    /// Where the stream is and what was rewritten in it.
    pub tracker: Tracker<N>,
    /// The last mapping lookup.
    pub cache: LookupCache,
    /// `bpf_ktime_get_ns` when the handshake was seen.
    pub opened_ns: u64,
    /// NIDs rewritten on this connection.
    pub rewrites: u64,
    /// The CPU working on the flow right now, plus one (0: none); see the datapath's `Claim`.
    pub owner: u64,
    /// 0 while open; once a FIN or RST was seen, `bpf_ktime_get_ns` of the last segment that
    /// reached the flow (see [`crate::flow`] for when a closing flow is freed).
    pub closing_ns: u64,
    /// Sequence number of the stream's first byte: tells a repeated handshake from a new one.
    pub start: u32,
    /// GETs this host sent on the connection (counted by the egress program on the incoming
    /// stream's entry), against `replies`: a REPLY may still come while they differ.
    pub gets: u16,
    /// REPLYs framed on the incoming stream.
    pub replies: u16,
}

/// Connections whose segments passed ahead may be kept at once ([`crate::ahead`]); beyond it a
/// segment is dropped as before. One per connection in recovery at a time.
pub const MAX_KEPT: u32 = 32;

/// The bytes of a segment passed ahead ([`crate::ahead`]); where it lies in the stream is in its
/// flow's tracker.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Kept {
    /// The segment's payload, from its first byte.
    pub bytes: [u8; crate::ahead::AHEAD_MAX],
}

/// The stream a host sends on a followed connection.
pub type OutFlowState = FlowState<OUT_RUNS>;

/// A TCP segment on an LNet port, as the datapath found it in a packet.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SegmentInfo {
    /// The connection, as the packet names it.
    pub key: FlowKey,
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// Payload bytes.
    pub len: u32,
    /// Packet offset of the first payload byte.
    pub payload_off: u32,
    /// Packet offset of the TCP checksum field.
    pub check_off: u32,
    /// TCP flags.
    pub flags: u8,
    /// 1 when the LNet port is the sender's (we connected), 2 when it is ours.
    pub role: u8,
    /// 1 for the first fragment of a fragmented segment.
    pub fragment: u8,
    /// Keeps the struct a multiple of 4 bytes.
    pub _pad: u8,
}

/// What the datapath knows and changes while it works through one packet.
///
/// Kept in a per-CPU map rather than on the stack: the 512-byte eBPF stack is shared by the
/// entry point and the `bpf_loop` callbacks, and the verifier treats map memory as unknown, so
/// the callbacks that update it converge in a few passes instead of being followed once per
/// possible value.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Work {
    /// The segment being rewritten.
    pub seg: SegmentInfo,
    /// Where its rewrite is.
    pub driver: Driver,
    /// NIDs rewritten in this packet.
    pub rewrites: u32,
    /// Bytes from the start of the packet made linear (writable) so far.
    pub pulled: u32,
    /// The connection as a socket lookup takes it (addresses and ports in network order,
    /// sender first): the helper reads it from memory, and the stack has no room for it.
    pub tuple: [u8; 12],
    /// The scan of a segment that may go ahead ([`crate::ahead`]): in map memory, as the
    /// `bpf_loop` callback that feeds it changes it (state on the stack would be verified
    /// once per value it takes).
    pub scan: Scan,
    /// 1 when the segment just passed brought its flow's cursor into the segment kept ahead,
    /// whose pass the ingress program then tail-calls.
    pub kept_due: u8,
    /// Keeps the struct a multiple of 8 bytes.
    pub _pad: [u8; 7],
}

/// A learned mapping, as the datapath reports it to `lnat attach`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LearnEvent {
    /// The NID the server named us by.
    pub external: NidKey,
    /// Our NID on that net.
    pub local: NidKey,
    /// The connection it was learned on.
    pub flow: FlowKey,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each is `#[repr(C)]`, `Copy`, made of integers and arrays of integers with explicit
    // padding fields, so every byte pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::NidKey {}
    unsafe impl aya::Pod for super::Mapping {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl<const N: usize> aya::Pod for super::FlowState<N> {}
    unsafe impl aya::Pod for super::LearnEvent {}
    unsafe impl aya::Pod for super::Work {}
    unsafe impl aya::Pod for super::Kept {}
}

#[cfg(test)]
mod tests {
    use super::Counters;

    #[test]
    fn the_counter_table_names_values_and_sums_each_field_once() {
        let a = Counters {
            segments: 1,
            quiet: 7,
            ..Counters::default()
        };
        let mut sum = a;
        sum.add(&Counters {
            segments: 2,
            fragments: 5,
            ..Counters::default()
        });
        let fields = sum.fields();
        assert_eq!(fields.len(), Counters::COUNT);
        assert_eq!(fields[0], ("segments", 3));
        let quiet = fields.iter().position(|f| f.0 == "quiet").expect("quiet");
        assert_eq!(fields[quiet], ("quiet", 7));
        assert!(fields.contains(&("fragments", 5)));
        assert_eq!(
            size_of::<Counters>(),
            8 * Counters::COUNT,
            "one u64 per counter, no padding"
        );
        for ((name, _), (described, text)) in fields.iter().zip(Counters::DESCRIPTIONS) {
            assert_eq!(*name, described);
            assert!(
                !text.is_empty() && !text.starts_with(' '),
                "{name}: {text:?}"
            );
        }
        assert_eq!(
            Counters::DESCRIPTIONS[quiet].1,
            "Of `segments`, those passed on their flow's quiet window without the tracker: the \
             middle of payloads, most of a bulk transfer (see `quiet`)."
        );
    }
}
