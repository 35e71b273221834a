//! W3C trace context (`traceparent`) parsing and formatting.

/// A parsed `traceparent` header: `00-<trace-id>-<parent-id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    // Only lower-case hex is valid per the spec.
    if s.len() != out.len() * 2 || s.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    out.copy_from_slice(&crate::ids::from_hex(s)?);
    Some(())
}

/// Parses a `traceparent` value; `None` if it is not valid (then the request
/// starts a new trace, as the spec asks).
pub fn parse_traceparent(v: &str) -> Option<TraceParent> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let mut ver = [0u8; 1];
    hex_into(version, &mut ver)?;
    // Version ff is invalid; version 00 has exactly four fields.
    if ver[0] == 0xff || (ver[0] == 0 && parts.next().is_some()) {
        return None;
    }
    let mut tp = TraceParent {
        trace_id: [0; 16],
        parent_id: [0; 8],
        flags: 0,
    };
    hex_into(trace, &mut tp.trace_id)?;
    hex_into(parent, &mut tp.parent_id)?;
    let mut f = [0u8; 1];
    hex_into(flags, &mut f)?;
    tp.flags = f[0];
    if tp.trace_id == [0; 16] || tp.parent_id == [0; 8] {
        return None;
    }
    Some(tp)
}

/// The `tracestate` key under which Sonde passes the caller's transaction
/// (record) id, so the callee's transaction links to it.
pub const SONDE_KEY: &str = "sonde";

/// The caller's record id from a `tracestate` value (`sonde=<32 hex>`).
pub fn sonde_parent(tracestate: &str) -> Option<[u8; 16]> {
    tracestate.split(',').find_map(|m| {
        let (k, v) = m.trim().split_once('=')?;
        if k != SONDE_KEY {
            return None;
        }
        let mut id = [0u8; 16];
        hex_into(v.trim(), &mut id)?;
        Some(id)
    })
}

/// `00-<trace>-<span>-01` for an outgoing call.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8]) -> String {
    format!(
        "00-{}-{}-01",
        crate::ids::to_hex(trace_id),
        crate::ids::to_hex(span_id)
    )
}

/// The `tracestate` passed on to a callee: the incoming members other than
/// an older Sonde's `sonde=` entry (which would name the wrong caller), at
/// most 32 (the spec's limit); empty when none remain. The callee finds
/// its caller by trace id and the caller's span id (`traceparent`).
pub fn passed_on(incoming: &str) -> String {
    let members: Vec<&str> = incoming
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty() && m.split_once('=').is_some_and(|(k, _)| k != SONDE_KEY))
        .take(32)
        .collect();
    members.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracestate_round_trip() {
        let id = [0xabu8; 16];
        // What extensions before 2026-11-27 sent: our member first.
        let ts = format!("sonde={},vendor=x,other=y", "ab".repeat(16));
        assert_eq!(sonde_parent(&ts), Some(id));
        assert_eq!(sonde_parent("vendor=x"), None);
        assert_eq!(sonde_parent("sonde=zz"), None);
        assert_eq!(
            traceparent(&[1; 16], &[2; 8]),
            "00-01010101010101010101010101010101-0202020202020202-01"
        );
        assert!(parse_traceparent(&traceparent(&[1; 16], &[2; 8])).is_some());
    }

    #[test]
    fn passed_on_drops_our_old_entry_only() {
        assert_eq!(passed_on(""), "");
        assert_eq!(passed_on("sonde=ab"), "");
        assert_eq!(
            passed_on("vendor=x, sonde=00000000000000000000000000000000,other=y"),
            "vendor=x,other=y"
        );
        let many: Vec<String> = (0..40).map(|i| format!("v{i}=1")).collect();
        assert_eq!(passed_on(&many.join(",")).split(',').count(), 32);
    }

    #[test]
    fn parses_spec_example() {
        let tp =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert_eq!(tp.flags, 1);
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }
}
