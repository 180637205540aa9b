//! What the kernel's verifier said when it refused the datapath, on one line.
//!
//! Its log runs to thousands of lines and starts with the program's first instruction; the
//! reason is at the end, just before the statistics. An old kernel says what it lacks there
//! too (`invalid func unknown#181`: it has never heard of `bpf_loop`).

use std::{fmt, io};

/// The helpers lnat calls that came late to Linux: names for the ids a kernel that predates
/// them prints as `unknown`, and the release that brought each.
const LATE_HELPERS: [(u32, &str, &str); 5] = [
    (130, "bpf_ringbuf_output", "5.8"),
    (131, "bpf_ringbuf_reserve", "5.8"),
    (132, "bpf_ringbuf_submit", "5.8"),
    (133, "bpf_ringbuf_discard", "5.8"),
    (181, "bpf_loop", "5.17"),
];

/// How the verifier says a helper is missing, before the helper's `name#id`.
const MISSING_HELPER: [&str; 3] = [
    "unknown func ",
    "invalid func ",
    "program of this type cannot use helper ",
];

/// Most lines of the verifier's message quoted.
const MAX_REASON_LINES: usize = 3;

/// Longest instruction quoted with the reason.
const MAX_INSN_LEN: usize = 60;

/// The kernel refused to load the datapath: the one-line reason, and the whole log for
/// `LNAT_DEBUG=1`.
#[derive(Debug)]
pub struct Rejected {
    line: String,
    log: String,
}

impl Rejected {
    /// The refusal of a load that failed with `error` and verifier output `log` on `kernel`
    /// (as [`crate::kernel::name`] gives it).
    pub fn new(kernel: &str, error: &io::Error, log: &str) -> Rejected {
        Rejected {
            line: explain(kernel, error, log),
            log: log.to_owned(),
        }
    }

    /// The verifier's whole output.
    pub fn log(&self) -> &str {
        &self.log
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

impl std::error::Error for Rejected {}

/// The one-line explanation of a refused load: a missing helper by name, else the verifier's
/// own reason, else the load's error.
pub fn explain(kernel: &str, error: &io::Error, log: &str) -> String {
    if let Some(helper) = missing_helper(log) {
        return format!("{kernel} lacks {helper}, which lnat's datapath needs");
    }
    match reason(log) {
        Some(reason) => format!("the kernel's verifier rejected the datapath: {reason}"),
        None => format!("{kernel} refused the datapath ({error}) and gave no verifier output"),
    }
}

/// The helper the verifier says the kernel lacks, as "the BPF helper NAME (Linux V+)".
pub fn missing_helper(log: &str) -> Option<String> {
    let call = log.lines().rev().find_map(|line| {
        MISSING_HELPER
            .iter()
            .find_map(|m| line.split_once(m).map(|(_, call)| call.trim()))
    })?;
    let (name, id) = call.split_once('#').unwrap_or((call, ""));
    let id: Option<u32> = id.parse().ok();
    let late = LATE_HELPERS
        .iter()
        .find(|(n, known, _)| Some(*n) == id || *known == name);
    Some(match (late, id) {
        (Some((_, known, since)), _) => format!("the BPF helper {known} (Linux {since}+)"),
        (None, _) if !name.is_empty() && name != "unknown" => format!("the BPF helper {name}"),
        (None, Some(id)) => format!("BPF helper #{id}"),
        (None, None) => "a BPF helper".to_owned(),
    })
}

/// The verifier's reason for refusing a program: its last message lines (up to
/// [`MAX_REASON_LINES`], joined by "; "), after the instruction trace and before the
/// statistics, with the instruction it stopped at when that is short. `None` for an empty log.
pub fn reason(log: &str) -> Option<String> {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let end = lines.iter().rposition(|l| !is_statistics(l))? + 1;
    let body = &lines[..end];
    let start = body.iter().rposition(|l| is_trace(l)).map_or(0, |i| i + 1);
    let message = if start == end {
        // Nothing but trace: the last line is all there is.
        &body[end - 1..]
    } else {
        &body[start.max(end.saturating_sub(MAX_REASON_LINES))..]
    };
    let mut text = message.join("; ");
    let insn = body[..start]
        .iter()
        .rev()
        .take(2)
        .find_map(|l| instruction(l))
        .filter(|i| i.len() <= MAX_INSN_LEN && start < end);
    if let Some(insn) = insn {
        text.push_str(&format!(" (at insn {insn})"));
    }
    Some(text)
}

/// The statistics the verifier ends every log with.
fn is_statistics(line: &str) -> bool {
    (line.starts_with("processed ") && line.contains(" insns"))
        || line.starts_with("verification time ")
        || line.starts_with("stack depth ")
}

/// A line of the verifier's trace rather than of its message: an instruction, a register
/// state, a source line, a branch or call it follows, or precision tracking.
fn is_trace(line: &str) -> bool {
    const PREFIXES: [&str; 11] = [
        "; ",
        "last_idx ",
        "regs=",
        "mark_precise:",
        "parent didn't have",
        "propagating ",
        "caller:",
        "callee:",
        "returning from callee:",
        "to caller at ",
        "Func#",
    ];
    numbered(line).is_some()
        || is_register_state(line)
        || is_frame(line)
        || (line.starts_with("from ") && line.contains(" to ") && line.contains(": "))
        || PREFIXES.iter().any(|p| line.starts_with(p))
}

/// A call frame's state: "frame1: R1=...", not the message "frame pointer is read only".
fn is_frame(line: &str) -> bool {
    line.strip_prefix("frame")
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The rest of a line that starts with an instruction number ("1192: ...").
fn numbered(line: &str) -> Option<&str> {
    let (n, rest) = line.split_once(": ")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(rest)
}

/// A register state: "R1=ctx() R10=fp0", "R2_w=scalar()".
fn is_register_state(line: &str) -> bool {
    let first = line.split(' ').next().unwrap_or_default();
    let Some(reg) = first.strip_prefix('R') else {
        return false;
    };
    let digits = reg.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0
        && reg[digits..]
            .split_once('=')
            .is_some_and(|(suffix, _)| suffix.is_empty() || suffix.starts_with('_'))
}

/// An instruction line as "N: ASM" without its opcode and register-state comment:
/// "1192: (85) call bpf_skb_load_bytes#26 ; R0=..." is "1192: call bpf_skb_load_bytes#26".
fn instruction(line: &str) -> Option<String> {
    let rest = numbered(line)?;
    let asm = rest.strip_prefix('(')?.split_once(") ")?.1;
    let asm = asm.split_once("; ").map_or(asm, |(a, _)| a).trim();
    let n = &line[..line.len() - rest.len() - 2];
    Some(format!("{n}: {asm}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of what Debian 12's 6.1 said of an lnat that read past a map value.
    const DEBIAN_6_1: &str = "0: R1=ctx(off=0,imm=0) R10=fp0\n\
        0: (bf) r6 = r1                       ; R1=ctx(off=0,imm=0) R6_w=ctx(off=0,imm=0)\n\
        1: (b7) r7 = 0                        ; R7_w=0\n\
        from 1188 to 1190: R0=map_value(off=0,ks=4,vs=1224,imm=0) R10=fp0\n\
        1190: R0=map_value(off=0,ks=4,vs=1224,imm=0) R10=fp0\n\
        1190: (bf) r3 = r0                    ; R0=map_value(off=0,ks=4,vs=1224,imm=0)\n\
        1191: (bf) r2 = r5\n\
        1192: (85) call bpf_skb_load_bytes#26\n\
        invalid access to map value, value_size=1224 off=48 size=0\n\
        R3 min value is outside of the allowed memory range\n\
        processed 1289 insns (limit 1000000) max_states_per_insn 2 total_states 66 peak_states 66 mark_read 20\n";

    fn einval() -> io::Error {
        io::Error::from_raw_os_error(libc::EINVAL)
    }

    #[test]
    fn the_reason_is_the_message_before_the_statistics_not_the_first_line() {
        assert_eq!(
            reason(DEBIAN_6_1).as_deref(),
            Some(
                "invalid access to map value, value_size=1224 off=48 size=0; R3 min value is \
                 outside of the allowed memory range (at insn 1192: call bpf_skb_load_bytes#26)"
            )
        );
        assert_eq!(
            explain("kernel 6.1.0-18-amd64", &einval(), DEBIAN_6_1),
            "the kernel's verifier rejected the datapath: invalid access to map value, \
             value_size=1224 off=48 size=0; R3 min value is outside of the allowed memory range \
             (at insn 1192: call bpf_skb_load_bytes#26)"
        );
    }

    #[test]
    fn statistics_of_every_log_level_are_skipped() {
        let log = "5: (95) exit\n\
            BPF program is too large. Processed 1000001 insn\n\
            verification time 2135427 usec\n\
            stack depth 136+56+0\n\
            processed 1000001 insns (limit 1000000) max_states_per_insn 21 total_states 52910\n";
        assert_eq!(
            reason(log).as_deref(),
            Some("BPF program is too large. Processed 1000001 insn (at insn 5: exit)")
        );
    }

    #[test]
    fn long_instructions_and_long_messages_are_cut() {
        let log = "7: (61) r2 = *(u32 *)(r1 +80)          ; R1=ctx() R2_w=pkt_end()\n\
            8: (07) r3 += 0x123456789 some very long instruction text that goes on and on\n\
            one\ntwo\nthree\nfour\n\
            processed 9 insns (limit 1000000)\n";
        assert_eq!(reason(log).as_deref(), Some("two; three; four"));
    }

    #[test]
    fn a_log_of_trace_only_gives_its_last_line_and_an_empty_one_none() {
        assert_eq!(
            reason("0: R1=ctx() R10=fp0\n0: (95) exit\nprocessed 1 insns\n").as_deref(),
            Some("0: (95) exit")
        );
        assert_eq!(reason(""), None);
        assert_eq!(reason("processed 0 insns (limit 1000000)\n"), None);
        assert_eq!(
            explain("kernel 6.1.0", &einval(), ""),
            "kernel 6.1.0 refused the datapath (Invalid argument (os error 22)) and gave no \
             verifier output"
        );
    }

    #[test]
    fn register_states_are_trace_and_register_messages_are_not() {
        assert!(is_register_state("R1=ctx() R10=fp0"));
        assert!(is_register_state("R2_w=scalar(umax=255)"));
        assert!(!is_register_state(
            "R3 min value is outside of the allowed memory range"
        ));
        assert!(!is_register_state("R1 type=scalar expected=fp"));
        assert!(!is_register_state("Reason=none"));
        assert!(is_trace("frame1: R1=ctx() R10=fp0"));
        assert!(is_trace(
            "from 1188 to 1190: R0=map_value(off=0,ks=4,vs=1224,imm=0)"
        ));
        assert!(!is_trace("frame pointer is read only"));
    }

    #[test]
    fn a_kernel_without_bpf_loop_is_named_with_what_it_lacks() {
        // 5.13 to 5.16: helper ids past their own are "invalid", and named "unknown".
        let old = "1190: (b7) r4 = 0\n1191: (85) call unknown#181\ninvalid func unknown#181\n\
            processed 1204 insns (limit 1000000) max_states_per_insn 1 total_states 60\n";
        assert_eq!(
            explain("kernel 5.15.0-1-amd64", &einval(), old),
            "kernel 5.15.0-1-amd64 lacks the BPF helper bpf_loop (Linux 5.17+), which lnat's \
             datapath needs"
        );
        let named = "12: (85) call bpf_loop#181\nunknown func bpf_loop#181\nprocessed 13 insns\n";
        assert_eq!(
            missing_helper(named).as_deref(),
            Some("the BPF helper bpf_loop (Linux 5.17+)")
        );
    }

    #[test]
    fn other_missing_helpers_are_named_as_the_kernel_names_them() {
        let log = "3: (85) call bpf_skb_pull_data#39\n\
            program of this type cannot use helper bpf_skb_pull_data#39\nprocessed 4 insns\n";
        assert_eq!(
            explain("kernel 5.4.0", &einval(), log),
            "kernel 5.4.0 lacks the BPF helper bpf_skb_pull_data, which lnat's datapath needs"
        );
        assert_eq!(
            missing_helper("invalid func unknown#250\n").as_deref(),
            Some("BPF helper #250")
        );
        assert_eq!(missing_helper(DEBIAN_6_1), None);
    }
}
