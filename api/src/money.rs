//! Money is integer micro-dollars (1 USD = 1,000,000). Manifests write USD as decimal strings
//! (`"2.50"`) so no float ever touches a price or a cost.

/// Micro-dollars: 1 USD = 1,000,000.
pub type MicroUsd = u64;

/// One US dollar in micro-dollars.
pub const USD: MicroUsd = 1_000_000;

/// The pattern the CRD schema enforces for USD amounts.
pub const USD_PATTERN: &str = r"^[0-9]+(\.[0-9]{1,6})?$";

/// Parses a non-negative decimal USD amount with at most six decimal places into micro-dollars.
pub fn parse_usd(text: &str) -> Result<MicroUsd, String> {
    let fail = || {
        format!(
            "`{text}` is not a USD amount: write a decimal string with at most 6 decimals, like \"2.50\""
        )
    };
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 6
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (text.contains('.') && frac.is_empty())
    {
        return Err(fail());
    }
    let whole: u64 = whole.parse().map_err(|_| fail())?;
    let mut frac_micro: u64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        frac_micro += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
    }
    whole
        .checked_mul(USD)
        .and_then(|v| v.checked_add(frac_micro))
        .ok_or_else(fail)
}

/// Formats micro-dollars as a decimal USD string with six decimals (`"0.001250"`).
pub fn format_usd(micro: MicroUsd) -> String {
    format!("{}.{:06}", micro / USD, micro % USD)
}

/// Cost of `tokens` at `price_per_million` micro-dollars per 1M tokens, in micro-dollars,
/// rounded half up. Exact integer arithmetic (u128 for the product); a cost past `u64::MAX`
/// micro-dollars (only absurd usage or prices reach it) saturates instead of wrapping.
pub fn cost_of(tokens: u64, price_per_million: MicroUsd) -> MicroUsd {
    let product = u128::from(tokens) * u128::from(price_per_million);
    MicroUsd::try_from((product + 500_000) / 1_000_000).unwrap_or(MicroUsd::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_usd_exactly() {
        assert_eq!(parse_usd("2.50").unwrap(), 2_500_000);
        assert_eq!(parse_usd("0.15").unwrap(), 150_000);
        assert_eq!(parse_usd("0.000001").unwrap(), 1);
        assert_eq!(parse_usd("15").unwrap(), 15_000_000);
        assert_eq!(parse_usd("0").unwrap(), 0);
    }

    #[test]
    fn rejects_what_is_not_money() {
        for bad in [
            "",
            ".5",
            "1.",
            "-1",
            "1e3",
            "0.0000001",
            "abc",
            "1,50",
            " 1",
        ] {
            assert!(parse_usd(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_six_decimals() {
        assert_eq!(format_usd(2_500_000), "2.500000");
        assert_eq!(format_usd(1), "0.000001");
        assert_eq!(format_usd(0), "0.000000");
    }

    #[test]
    fn cost_rounds_half_up_without_floats() {
        // 1,000 tokens at $2.50 / 1M = $0.0025 = 2,500 micro-dollars.
        assert_eq!(cost_of(1_000, 2_500_000), 2_500);
        // 7 tokens at $0.15 / 1M = 1.05 micro-dollars -> 1.
        assert_eq!(cost_of(7, 150_000), 1);
        // 10 tokens at $0.15 / 1M = 1.5 micro-dollars -> 2 (half up).
        assert_eq!(cost_of(10, 150_000), 2);
        assert_eq!(cost_of(u64::MAX, 1_000_000), u64::MAX);
    }
}
