//! Durations as people write them in manifests: `250ms`, `30s`, `5m`, `1h30m`.

use std::time::Duration;

/// The pattern the CRD schema enforces for duration strings (Go-style, units ms, s, m, h).
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// Parses a Go-style duration made of integer parts with units `ms`, `s`, `m` and `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let fail =
        || format!("`{text}` is not a duration: write it like `250ms`, `30s`, `5m` or `1h30m`");
    if text.is_empty() {
        return Err(fail());
    }
    let bytes = text.as_bytes();
    let mut total_ms: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(fail());
        }
        let n: u64 = text[start..i].parse().map_err(|_| fail())?;
        let unit_ms = if text[i..].starts_with("ms") {
            i += 2;
            1
        } else if text[i..].starts_with('s') {
            i += 1;
            1_000
        } else if text[i..].starts_with('m') {
            i += 1;
            60_000
        } else if text[i..].starts_with('h') {
            i += 1;
            3_600_000
        } else {
            return Err(fail());
        };
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|v| v.checked_add(total_ms))
            .ok_or_else(fail)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1m500ms").unwrap(),
            Duration::from_millis(60_500)
        );
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        for bad in ["", "5", "s", "1.5s", "10 s", "3d", "-1s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("30s"), "{bad}: {err}");
        }
    }

    #[test]
    fn format_round_trips() {
        for ms in [0u64, 1, 250, 1000, 90_000, 3_600_000, 5_400_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
