//! How `trmctl` speaks: times as RFC 3339 (in JSON, a string or `null`, never `-` or an
//! epoch), and errors as one line for people that names the flag to fix, never a gRPC
//! status dump or a backtrace.

use serde_json::Value;

/// Returns a wire time as RFC 3339 UTC, if present and representable.
pub fn rfc3339(t: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = t?;
    let at = time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Returns a wire time for a table: RFC 3339, `-` when absent.
pub fn when(t: Option<&prost_types::Timestamp>) -> String {
    rfc3339(t).unwrap_or_else(|| "-".to_owned())
}

/// Returns a wire time for JSON: an RFC 3339 string, `null` when absent.
pub fn json_time(t: Option<&prost_types::Timestamp>) -> Value {
    rfc3339(t).map_or(Value::Null, Value::String)
}

/// Returns a time for JSON as RFC 3339.
pub fn json_datetime(t: time::OffsetDateTime) -> Value {
    t.format(&time::format_description::well_known::Rfc3339)
        .map_or(Value::Null, Value::String)
}

/// Prints `v` as pretty JSON on standard output.
pub fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The request fields a node names in its refusals, and the flags that set them.
const FLAGS: &[(&str, &str)] = &[
    ("serial_hex", "--serial"),
    ("peer.node_id", "--node-id"),
    ("node_id", "--node-id"),
    ("peer.endpoint", "--endpoint"),
    ("peer.tls_ca_pem", "--tls-ca"),
    ("peer.tls_pin_sha256", "--pin"),
    ("peer.signing_keys_pem", "--signing-key"),
    ("peer.signing_keys", "--signing-key"),
    ("message_id", "--message-id"),
    ("overlap_days", "--overlap-days"),
    ("path", "--out"),
    ("period_start", "--from"),
    ("period_end", "--to"),
    ("peer", "--peer"),
];

/// Returns a node's refusal message with the request field it names replaced by the flag
/// that sets it (`serial_hex: must be ...` -> `--serial: must be ...`).
pub fn with_flag(message: &str) -> String {
    let (field, rest) = match message.split_once(": ") {
        Some(split) => split,
        None => return message.to_owned(),
    };
    // `peer.signing_keys_pem[1]` names the same flag as `peer.signing_keys_pem`.
    let bare = field.split('[').next().unwrap_or(field);
    let bare = bare.split('.').take(2).collect::<Vec<_>>().join(".");
    match FLAGS
        .iter()
        .find(|(f, _)| *f == bare || *f == field)
        .map(|(_, flag)| *flag)
    {
        Some(flag) => format!("{flag}: {rest}"),
        None => message.to_owned(),
    }
}

/// Returns a gRPC code in words.
fn code_words(code: tonic::Code) -> String {
    let name = format!("{code:?}");
    let mut words = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
}

/// Returns a refusal by the node, in one line.
fn status_line(s: &tonic::Status) -> String {
    if s.code() == tonic::Code::Unavailable || s.message() == "transport error" {
        if let Some(cause) = transport_cause(s) {
            return cause;
        }
    }
    let message = with_flag(s.message());
    let message = if message.is_empty() {
        "no reason given".to_owned()
    } else {
        message
    };
    format!("{message} (the node refused: {})", code_words(s.code()))
}

/// Returns the first error under `e` that says more than "transport error", in one line.
fn transport_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = e.source();
    let mut last = None;
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io_line(io));
        }
        let text = c.to_string();
        if !text.is_empty() && text != "transport error" {
            last = Some(text);
        }
        cause = c.source();
    }
    last
}

/// Returns an I/O error in one line, with what usually causes it.
fn io_line(io: &std::io::Error) -> String {
    if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::InvalidCertificate(_) => format!(
                "{tls}: the node's server certificate does not verify against --ca (the CA of \
                 the node's services and admin server certificate)"
            ),
            rustls::Error::AlertReceived(_) => format!(
                "{tls}: the node refused the client certificate of --client (not issued by its \
                 client CA, or expired)"
            ),
            other => other.to_string(),
        };
    }
    match io.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        _ => io.to_string(),
    }
}

/// Returns an error as one line for people: each context and its cause joined by `: `,
/// a node's refusal as its message with the flag it concerns, never a status dump.
pub fn describe(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let part = if let Some(s) = cause.downcast_ref::<tonic::Status>() {
            Some(status_line(s))
        } else if cause.downcast_ref::<tonic::transport::Error>().is_some() {
            transport_cause(cause)
        } else if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            Some(io_line(io))
        } else {
            Some(cause.to_string())
        };
        let stop = cause.downcast_ref::<tonic::Status>().is_some()
            || cause.downcast_ref::<tonic::transport::Error>().is_some()
            || cause.downcast_ref::<std::io::Error>().is_some();
        if let Some(p) = part {
            let p = p.replace('\n', " ");
            if !p.is_empty() && !parts.iter().any(|q| q.contains(&p)) {
                parts.push(p);
            }
        }
        if stop {
            break;
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_flag_and_says_it_was_the_node_without_a_dump() {
        let e = anyhow::Error::from(tonic::Status::invalid_argument(
            "serial_hex: must be the serial number in lower-case hex",
        ));
        let line = describe(&e.context("revoking"));
        assert_eq!(
            line,
            "revoking: --serial: must be the serial number in lower-case hex (the node refused: invalid argument)"
        );
        assert_eq!(
            with_flag("peer.signing_keys_pem[2]: bad"),
            "--signing-key: bad"
        );
        assert_eq!(
            with_flag("consent: no active consent"),
            "consent: no active consent"
        );
    }

    #[test]
    fn times_in_json_are_rfc3339_or_null() {
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(
            json_time(Some(&t)),
            Value::String("2023-11-14T22:13:20Z".into())
        );
        assert_eq!(json_time(None), Value::Null);
        assert_eq!(when(None), "-");
    }
}
