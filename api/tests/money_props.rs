//! Property tests of the money arithmetic: costs are exact integer micro-dollars, rounded half
//! up once per amount, never overflowing (a cost past `u64::MAX` micro-dollars saturates), and
//! amounts written as USD strings read back exactly.

use llmesh_api::money::{MicroUsd, USD, cost_of, format_usd, parse_usd};
use llmesh_api::prices::Prices;
use proptest::prelude::*;

/// `tokens * price / 1M` rounded half up, in arbitrary precision (u128 holds every product).
fn reference(tokens: u64, price: MicroUsd) -> u128 {
    (u128::from(tokens) * u128::from(price) + 500_000) / 1_000_000
}

/// Token counts and prices across the whole range, with the small values and the extremes
/// that real usage and the edges of `u64` produce.
fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=10_000u64,
        0..=10_000_000_000u64,
        any::<u64>(),
        Just(u64::MAX),
        (u64::MAX - 1_000..=u64::MAX),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn a_cost_is_the_exact_product_rounded_half_up(tokens in amount(), price in amount()) {
        let want = reference(tokens, price);
        let got = cost_of(tokens, price);
        prop_assert_eq!(u128::from(got), want.min(u128::from(u64::MAX)));
        // Half up: the rounding error is at most half a micro-dollar, and an exact half rounds up.
        if want <= u128::from(u64::MAX) {
            let exact = u128::from(tokens) * u128::from(price);
            let scaled = u128::from(got) * 1_000_000;
            prop_assert!(scaled + 500_000 > exact && scaled <= exact + 500_000);
        }
    }

    #[test]
    fn costs_of_parts_add_up_to_the_cost_of_the_whole(
        a in 0..=1_000_000_000_000u64, b in 0..=1_000_000_000_000u64, price in 0..=1_000_000_000u64,
    ) {
        // (Up to a trillion tokens at up to $1,000 per 1M: far from saturating.)
        // Each part is rounded once: the parts' sum is within one micro-dollar per extra part.
        let parts = i128::from(cost_of(a, price)) + i128::from(cost_of(b, price));
        let whole = i128::from(cost_of(a + b, price));
        prop_assert!((parts - whole).abs() <= 1, "{parts} vs {whole}");
        // Whole micro-dollars per token (every price in dollars per 1M tokens): exactly.
        let whole_price = price / USD * USD;
        prop_assert_eq!(
            u128::from(cost_of(a, whole_price)) + u128::from(cost_of(b, whole_price)),
            u128::from(cost_of(a + b, whole_price))
        );
        // A million tokens cost exactly the price per million.
        prop_assert_eq!(cost_of(1_000_000 * (a % 1_000), price), (a % 1_000) * price);
    }

    #[test]
    fn a_cost_grows_with_tokens_and_price(t in amount(), dt in amount(), p in amount(), dp in amount()) {
        prop_assert!(cost_of(t, p) <= cost_of(t.saturating_add(dt), p));
        prop_assert!(cost_of(t, p) <= cost_of(t, p.saturating_add(dp)));
    }

    #[test]
    fn usd_strings_read_back_exactly(micro in amount()) {
        let text = format_usd(micro);
        prop_assert_eq!(parse_usd(&text), Ok(micro));
        prop_assert_eq!(text.split_once('.').map(|(_, f)| f.len()), Some(6));
    }

    #[test]
    fn any_text_parses_to_its_exact_value_or_is_refused(text in "[0-9]{0,22}(\\.[0-9]{0,8})?|\\PC{0,12}") {
        let exact = text.split_once('.').map_or((text.as_str(), ""), |(w, f)| (w, f));
        let valid = !exact.0.is_empty()
            && exact.0.bytes().all(|b| b.is_ascii_digit())
            && exact.1.len() <= 6
            && exact.1.bytes().all(|b| b.is_ascii_digit())
            && !(text.contains('.') && exact.1.is_empty());
        let want = valid.then(|| {
            let frac = format!("{:0<6}", exact.1);
            exact.0.parse::<u128>().ok().map(|w| w * 1_000_000 + frac.parse::<u128>().unwrap())
        });
        match parse_usd(&text) {
            Ok(m) => prop_assert_eq!(Some(Some(u128::from(m))), want, "{}", text),
            // Refused: not a USD amount, or more than u64::MAX micro-dollars.
            Err(e) => {
                prop_assert!(e.contains(&text), "{}", e);
                prop_assert!(
                    !matches!(want, Some(Some(v)) if v <= u128::from(u64::MAX)),
                    "refused {}", text
                );
            }
        }
    }

    #[test]
    fn a_blended_price_is_the_exact_mean(input in amount(), output in amount()) {
        let p = Prices { input, output, cached_input: 0, cache_write: 0 };
        prop_assert_eq!(
            u128::from(p.blended()),
            (u128::from(input) + u128::from(output)) / 2
        );
    }
}

/// Found by the property above: a cost past `u64::MAX` micro-dollars wrapped to a small one.
#[test]
fn a_cost_past_u64_saturates() {
    assert_eq!(cost_of(u64::MAX, u64::MAX), u64::MAX);
    assert_eq!(cost_of(u64::MAX, 10_000_000), u64::MAX);
    assert_eq!(cost_of(u64::MAX, 1_000_000), u64::MAX);
    assert_eq!(cost_of(u64::MAX / 2, 1_000_000), u64::MAX / 2);
}

/// And the blended price of two large prices overflowed (a panic in debug builds).
#[test]
fn a_blended_price_of_large_prices_is_their_mean() {
    let p = Prices {
        input: u64::MAX,
        output: u64::MAX - 2,
        cached_input: 0,
        cache_write: 0,
    };
    assert_eq!(p.blended(), u64::MAX - 1);
}
