//! What the tracker asks of the datapath: mapping lookups, learning, counting, logging.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use aya_log_ebpf::{info, warn};
use lnat_common::{
    maps::{Config, FlowKey, FlowState, LearnEvent, Mapping, NidKey, Origin, Work},
    nid::Nid,
    tracker::{Direction, Env, Note},
};

use crate::{
    maps,
    side::{self, Side, Tally},
};

/// The errno a `BPF_NOEXIST` insert fails with when the key is there.
const EEXIST: i32 = 17;

/// The tracker's environment for one packet of side `S`.
pub struct DpEnv<'a, const N: usize, S: Side<N>> {
    ctx: &'a TcContext,
    cfg: *mut Config,
    flow: *mut FlowState<N>,
    work: *mut Work,
    side: core::marker::PhantomData<S>,
}

// Pointers only, each to memory that outlives the program run: a copy is the same
// environment (the kept segment's pass takes one).
impl<const N: usize, S: Side<N>> Clone for DpEnv<'_, N, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<const N: usize, S: Side<N>> Copy for DpEnv<'_, N, S> {}

impl<'a, const N: usize, S: Side<N>> DpEnv<'a, N, S> {
    /// The environment for `seg`, whose flow state is `flow`.
    pub fn new(ctx: &'a TcContext, flow: *mut FlowState<N>, work: *mut Work) -> Option<Self> {
        let cfg = maps::LNAT_CONFIG.get_ptr_mut(0)?;
        Some(DpEnv {
            ctx,
            cfg,
            flow,
            work,
            side: core::marker::PhantomData,
        })
    }

    /// The connection, from the segment in the work area.
    fn key(&self) -> FlowKey {
        // SAFETY: this CPU's work area.
        unsafe { (*self.work).seg.key }
    }

    fn now() -> u64 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    }

    /// Credits this packet's rewrites to the mapping that made them.
    pub fn finish(&mut self) {
        // SAFETY: this CPU's work area.
        let rewrites = unsafe { (*self.work).rewrites } as u64;
        if rewrites == 0 {
            return;
        }
        // SAFETY: the flow value outlives the packet's processing.
        let flow = unsafe { &mut *self.flow };
        flow.rewrites += rewrites;
        let cache = flow.cache;
        if cache.valid == 0 || cache.mapped == 0 {
            return;
        }
        if let Some(m) = maps::MAPPINGS.get_ptr_mut(NidKey::of(Nid(cache.nid))) {
            // SAFETY: a live mapping value; CPUs share it, so hits are added with BPF's atomic
            // add (the target has no compare-and-swap, hence no `AtomicU64::fetch_add`).
            unsafe {
                core::intrinsics::atomic_xadd::<
                    u64,
                    u64,
                    { core::intrinsics::AtomicOrdering::Relaxed },
                >(&raw mut (*m).hits, rewrites);
                (*m).last_used_ns = Self::now();
            }
        }
    }
}

impl<const N: usize, S: Side<N>> Env for DpEnv<'_, N, S> {
    fn mapping(&mut self, nid: Nid) -> Option<u32> {
        // SAFETY: config and flow values outlive the packet's processing.
        let (generation, cache) = unsafe { ((*self.cfg).generations(), &mut (*self.flow).cache) };
        if cache.valid != 0 && cache.nid == nid.0 && cache.generation == generation {
            return (cache.mapped != 0).then_some(cache.local);
        }
        // SAFETY: the value is read at once, before any other map operation.
        let found = unsafe { maps::MAPPINGS.get(NidKey::of(nid)) }
            .map(|m| u32::from_be_bytes(m.local_addr));
        cache.nid = nid.0;
        cache.generation = generation;
        cache.valid = 1;
        cache.mapped = found.is_some() as u8;
        cache.local = found.unwrap_or(0);
        found
    }

    fn learning(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.cfg).learn != 0 }
    }

    fn learn(&mut self, ext: Nid, local: Nid) {
        let m = Mapping {
            local_addr: [0; 4],
            learned_on: local.addr().to_be_bytes(),
            origin: Origin::Learned as u8,
            _pad: [0; 7],
            hits: 0,
            last_used_ns: Self::now(),
        };
        let key = NidKey::of(ext);
        if let Err(e) = maps::MAPPINGS.insert(key, m, aya_ebpf::bindings::BPF_NOEXIST as u64) {
            // Another CPU learned it first, from another connection: nothing left to do.
            if e == -EEXIST {
                return;
            }
            maps::count(|c| c.learn_failed += 1);
            warn!(
                self.ctx,
                "no room to learn external NID {:i} (LND {}, net {})",
                ext.addr(),
                ext.lnd(),
                ext.num()
            );
            return;
        }
        // SAFETY: as above; the hint and generation are single words any CPU may overwrite.
        unsafe {
            (*self.cfg).hint = key;
            (*self.cfg).learn_generation = (*self.cfg).learn_generation.wrapping_add(1);
        }
        maps::count(|c| c.learned += 1);
        let event = LearnEvent {
            external: key,
            local: NidKey::of(local),
            flow: self.key(),
        };
        let _ = maps::LNAT_EVENTS.output(event, 0);
        info!(
            self.ctx,
            "learned external NID {:i} (LND {}, net {}) from {:i}:{}",
            ext.addr(),
            ext.lnd(),
            ext.num(),
            u32::from_be_bytes(self.key().peer_addr),
            self.key().peer_port
        );
    }

    /// The NID the server named this host by in its HELLO on this connection, when the egress
    /// program runs: the hint of the connection's incoming stream (read without its claim: one
    /// aligned word, which the ingress program writes once, at the HELLO, before this host
    /// sends any LNet message).
    fn external(&mut self) -> Option<Nid> {
        // SAFETY: the config value outlives the packet's processing.
        if S::DIR == Direction::In && unsafe { (*self.cfg).egress } == 0 {
            return None;
        }
        let f = maps::FLOWS.get_ptr(self.key())?;
        // SAFETY: a live flow-table value; the word is read whole.
        let hint = unsafe { core::ptr::read_volatile(&raw const (*f).tracker.hint) };
        (hint != 0).then_some(Nid(hint))
    }

    /// A REPLY may come while the GETs the egress program counted on this connection outnumber
    /// the REPLYs framed; only where rule I1 applies (the egress program runs).
    fn replies_due(&mut self) -> bool {
        if S::DIR != Direction::In || self.external().is_none() {
            return false;
        }
        // SAFETY: the flow value outlives the packet's processing; `gets` is one aligned word
        // the egress program adds to.
        let (gets, replies) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*self.flow).gets),
                (*self.flow).replies,
            )
        };
        gets != replies
    }

    fn note(&mut self, what: Note) {
        match what {
            Note::GetSent => {
                // Counted on the incoming stream's entry, which decides what goes ahead. One
                // writer: the egress program, under its outgoing flow's claim.
                if let Some(f) = maps::FLOWS.get_ptr_mut(self.key()) {
                    // SAFETY: a live flow-table value; the ingress program only reads the word.
                    unsafe {
                        let gets = &raw mut (*f).gets;
                        core::ptr::write_volatile(
                            gets,
                            core::ptr::read_volatile(gets).wrapping_add(1),
                        );
                    }
                }
            }
            Note::ReplyFramed => {
                // SAFETY: this CPU holds the flow's claim.
                unsafe { (*self.flow).replies = (*self.flow).replies.wrapping_add(1) };
            }
            Note::Rewrote => {
                // SAFETY: this CPU's work area.
                unsafe { (*self.work).rewrites += 1 };
                match S::DIR {
                    Direction::In => maps::count(|c| c.rewritten += 1),
                    Direction::Out => maps::count(|c| c.own_nids += 1),
                }
            }
            Note::Compensated => maps::count(|c| c.compensated += 1),
            Note::Undiscovering => maps::count(|c| c.undiscovered += 1),
            Note::Discoverable => maps::count(|c| c.discoverable += 1),
            Note::Conflict => {
                maps::count(|c| c.conflicts += 1);
                warn!(
                    self.ctx,
                    "a NID split across segments from {:i}:{} was not the one its first bytes promised",
                    u32::from_be_bytes(self.key().peer_addr),
                    self.key().peer_port
                );
            }
            Note::Desynced(why) if S::DIR == Direction::Out => {
                side::count::<N, S>(Tally::Desynced);
                warn!(
                    self.ctx,
                    "stopped following the stream to {:i}:{} from port {}: {}",
                    u32::from_be_bytes(self.key().peer_addr),
                    self.key().peer_port,
                    self.key().local_port,
                    why.name()
                );
            }
            Note::Desynced(why) => {
                side::count::<N, S>(Tally::Desynced);
                warn!(
                    self.ctx,
                    "stopped following {:i}:{} -> port {}: {}",
                    u32::from_be_bytes(self.key().peer_addr),
                    self.key().peer_port,
                    self.key().local_port,
                    why.name()
                );
            }
        }
    }
}
