//! "Did you mean" hints for misspelt field names and values.

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| {
            let c_lower = c.to_ascii_lowercase();
            let score = if c_lower.starts_with(&lower) || lower.starts_with(&c_lower) {
                0.95
            } else {
                strsim::jaro_winkler(&lower, &c_lower)
            };
            (score, *c)
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::nearest;

    #[test]
    fn typos_find_their_field() {
        assert_eq!(nearest("retry", &["route", "retries", "rewrite", "redirect"]), Some("retries"));
        assert_eq!(nearest("subsit", &["host", "subset", "port"]), Some("subset"));
        assert_eq!(nearest("timeOut", &["timeout", "fault"]), Some("timeout"));
        assert_eq!(nearest("zzz", &["host", "subset"]), None);
    }
}
