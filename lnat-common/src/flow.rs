//! A followed connection's life: what a segment's TCP flags mean for its flow entry, and when an
//! ended connection may be forgotten.
//!
//! The rule, which follows TCP rather than the first FIN:
//! - A handshake (the peer's SYN-ACK on a connection we opened, its SYN on one it opened)
//!   starts a flow; a handshake on the same four-tuple with another initial sequence number
//!   starts a new one in place, which frees whatever the old one kept.
//! - A FIN or RST ends nothing at once. It marks the flow *closing* and the segment is handled
//!   like any other: bytes before it may still come (retransmissions of segments lnat dropped
//!   out of order, or that the stack dropped after TC), and each is rewritten exactly as its
//!   first copy was, from the flow's position and patch history, which stay.
//! - A closing flow is freed once no segment has reached it for [`CLOSING_IDLE_NS`] (`lnat
//!   attach` sweeps the table), by a new handshake on its four-tuple, or by LRU pressure.

use crate::{
    maps::FlowState,
    tracker::{Direction, Role},
};

/// TCP flag: no more data from the sender.
pub const FIN: u8 = 0x01;
/// TCP flag: synchronise, a connection opens.
pub const SYN: u8 = 0x02;
/// TCP flag: reset, the connection is aborted.
pub const RST: u8 = 0x04;
/// TCP flag: the acknowledgement field is valid.
pub const ACK: u8 = 0x10;

/// How long a closing flow is kept after the last segment that reached it: twice RFC 793's
/// maximum segment lifetime (2 minutes), as TIME_WAIT would be, which also exceeds the longest
/// gap between two retransmissions Linux makes (`TCP_RTO_MAX`, 120 s). A segment of the old
/// connection cannot arrive later than that.
pub const CLOSING_IDLE_NS: u64 = 240 * 1_000_000_000;

/// What a segment means for the flow table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// A handshake: follow the stream that begins after it.
    Open(Role),
    /// A FIN or RST: the flow is closing; any payload is handled as data.
    End,
    /// Anything else.
    Data,
}

/// The event a segment with TCP `flags`, flowing `dir`, carries on a connection opened by
/// `role`'s side.
pub const fn event(flags: u8, role: Role, dir: Direction) -> Event {
    if flags & (RST | FIN) != 0 {
        Event::End
    } else if flags & SYN != 0 {
        // Each direction sees one half of the handshake: from the peer, its SYN-ACK when we
        // connected and its SYN when it did; to the peer, our SYN and our SYN-ACK.
        let opens = match (role, dir, flags & ACK != 0) {
            (Role::Active, Direction::In, ack) | (Role::Passive, Direction::Out, ack) => ack,
            (Role::Passive, Direction::In, ack) | (Role::Active, Direction::Out, ack) => !ack,
        };
        if opens {
            Event::Open(role)
        } else {
            Event::Data
        }
    } else {
        Event::Data
    }
}

impl<const N: usize> FlowState<N> {
    /// True once a FIN or RST was seen on the connection.
    pub const fn closing(&self) -> bool {
        self.closing_ns != 0
    }

    /// Marks the flow closing at `now` (`bpf_ktime_get_ns`), or notes that a segment reached
    /// it while closing: the idle time counts from the last one.
    pub const fn touch_closing(&mut self, now: u64) {
        self.closing_ns = if now == 0 { 1 } else { now };
    }

    /// True when the flow is closing and no segment has reached it for [`CLOSING_IDLE_NS`].
    pub const fn expired(&self, now: u64) -> bool {
        self.closing() && now.saturating_sub(self.closing_ns) > CLOSING_IDLE_NS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fin_and_rst_end_and_each_direction_opens_on_its_half_of_the_handshake() {
        use Direction::{In, Out};
        assert_eq!(event(FIN | ACK, Role::Active, In), Event::End);
        assert_eq!(event(RST, Role::Passive, Out), Event::End);
        assert_eq!(
            event(SYN | ACK, Role::Active, In),
            Event::Open(Role::Active)
        );
        assert_eq!(event(SYN, Role::Passive, In), Event::Open(Role::Passive));
        assert_eq!(event(SYN, Role::Active, In), Event::Data);
        assert_eq!(event(ACK, Role::Active, In), Event::Data);
        assert_eq!(event(SYN, Role::Active, Out), Event::Open(Role::Active));
        assert_eq!(
            event(SYN | ACK, Role::Passive, Out),
            Event::Open(Role::Passive)
        );
        assert_eq!(event(SYN | ACK, Role::Active, Out), Event::Data);
        assert_eq!(event(SYN, Role::Passive, Out), Event::Data);
    }
}
