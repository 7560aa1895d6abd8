//! W3C Trace Context (`traceparent`): the trace a reservation belongs to, so that a
//! transaction can be followed from the client through the coordinator to each participant.

use std::fmt;

/// A trace id and its flags, from a client's `traceparent` or made up by the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    flags: u8,
}

impl TraceContext {
    /// A trace of its own: `trace_id` non-zero random bytes; not sampled.
    #[must_use]
    pub fn new(trace_id: [u8; 16]) -> Option<Self> {
        (trace_id != [0; 16]).then_some(Self { trace_id, flags: 0 })
    }

    /// The same trace, marked sampled: a trace the coordinator starts while it exports its
    /// spans, so that participants record theirs too.
    #[must_use]
    pub fn sampled(self) -> Self {
        Self {
            flags: self.flags | 1,
            ..self
        }
    }

    /// The trace id's 16 bytes.
    #[must_use]
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The flags byte.
    #[must_use]
    pub fn flags(&self) -> u8 {
        self.flags
    }
}

/// Where a new span hangs: a trace, and the span it is a child of (`None` for the trace's
/// root). From a client's `traceparent`, or a span of the coordinator's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanParent {
    pub trace: TraceContext,
    pub span: Option<[u8; 8]>,
}

impl SpanParent {
    /// Reads a `traceparent` header (`00-{trace-id}-{parent-id}-{flags}`): the trace, and
    /// the caller's span. Per the W3C specification an invalid one is ignored (`None`); a
    /// future version is read by its version-00 prefix.
    #[must_use]
    pub fn from_traceparent(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut parts = header.splitn(5, '-');
        let version = parts.next()?;
        let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let rest = parts.next();
        if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
            return None;
        }
        if version == "00" && rest.is_some() {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(trace)?.try_into().ok()?;
        let parent_id: [u8; 8] = decode_hex(parent)?.try_into().ok()?;
        let [flags]: [u8; 1] = decode_hex(flags)?.try_into().ok()?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace: TraceContext { trace_id, flags },
            span: Some(parent_id),
        })
    }
}

impl TraceContext {
    /// Reads the form [`TraceContext::to_stored`] writes.
    #[must_use]
    pub fn from_stored(text: &str) -> Option<Self> {
        let (trace, flags) = text.split_once('-')?;
        let trace_id: [u8; 16] = decode_hex(trace)?.try_into().ok()?;
        let [flags]: [u8; 1] = decode_hex(flags)?.try_into().ok()?;
        Self::new(trace_id).map(|t| Self { flags, ..t })
    }

    /// `{trace-id}-{flags}`, as the log keeps it.
    #[must_use]
    pub fn to_stored(&self) -> String {
        let mut out = String::with_capacity(35);
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// The trace id in hex, for logs.
    #[must_use]
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` of an outgoing call made as span `span_id` of this trace.
    #[must_use]
    pub fn child(&self, span_id: [u8; 8]) -> String {
        let span_id = if span_id == [0; 8] { [1; 8] } else { span_id };
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.trace_id))
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !is_lower_hex(s) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Lowercase hex, by table: made for every participant call and every record written, where
/// `format!` per byte cost thousands of instructions.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_children_keep_its_trace() {
        let caller = SpanParent::from_traceparent(EXAMPLE).unwrap();
        assert_eq!(
            caller.span,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let trace = caller.trace;
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            trace.child([0xab; 8]),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-abababababababab-01"
        );
        assert_eq!(TraceContext::from_stored(&trace.to_stored()), Some(trace));
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert_eq!(SpanParent::from_traceparent(bad), None, "{bad}");
        }
        // A later version is read by its version-00 prefix.
        assert!(SpanParent::from_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        )
        .is_some());
    }
}
