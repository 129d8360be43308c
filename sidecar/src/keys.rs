//! The gateway's own client keys (`--api-key`): the key a client presents is checked against
//! every accepted key in constant time.

use subtle::{Choice, ConstantTimeEq};

/// Whether `presented` is one of `accepted`. Every accepted key is compared, each in time that
/// depends only on the lengths, so the time taken reveals neither which key matched nor how
/// much of a key a guess got right.
pub fn accepts(accepted: &[String], presented: &str) -> bool {
    accepted
        .iter()
        .fold(Choice::from(0), |acc, k| {
            acc | k.as_bytes().ct_eq(presented.as_bytes())
        })
        .into()
}

#[cfg(test)]
mod tests {
    use super::accepts;

    #[test]
    fn only_a_whole_accepted_key_is_accepted() {
        let keys = vec!["key-one-0123".to_string(), "key-two-4567".to_string()];
        assert!(accepts(&keys, "key-one-0123"));
        assert!(accepts(&keys, "key-two-4567"));
        assert!(!accepts(&keys, "key-one-012"));
        assert!(!accepts(&keys, "key-one-01234"));
        assert!(!accepts(&keys, "key-two-4568"));
        assert!(!accepts(&keys, ""));
        assert!(!accepts(&[], "key-one-0123"));
    }
}
