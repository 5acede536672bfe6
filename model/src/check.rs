//! Field checks shared by every kind: each records a [`FieldError`] with the
//! field's path instead of failing fast, so a user sees every problem at once.

use std::collections::BTreeMap;
use std::time::Duration;

/// One problem with one field of one resource.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// Path from the document root, e.g. `spec.http[0].route[1].weight`.
    pub path: String,
    /// What is wrong and what would be accepted.
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() { f.write_str(&self.reason) } else { write!(f, "{}: {}", self.path, self.reason) }
    }
}

/// Collects field errors while a resource is validated.
#[derive(Debug, Default)]
pub struct Errors {
    pub items: Vec<FieldError>,
}

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.items.push(FieldError { path: path.into(), reason: reason.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Checks a duration in Go/Istio syntax (`5s`, `250ms`, `1m30s`, `1.5s`, `1h`).
    pub fn duration(&mut self, path: impl Into<String>, value: &str) -> Option<Duration> {
        match parse_duration(value) {
            Ok(d) => Some(d),
            Err(reason) => {
                self.push(path, reason);
                None
            }
        }
    }

    /// Checks a duration and that it is at least `min`.
    pub fn duration_at_least(&mut self, path: impl Into<String>, value: &str, min: Duration) -> Option<Duration> {
        let path = path.into();
        let d = self.duration(path.clone(), value)?;
        if d < min {
            self.push(path, format!("duration {value:?} is too short: must be at least {min:?}"));
            return None;
        }
        Some(d)
    }

    /// Checks a percentage in 0..=100.
    pub fn percent(&mut self, path: impl Into<String>, value: f64) {
        if !(0.0..=100.0).contains(&value) || value.is_nan() {
            self.push(path, format!("{value} is not a percentage: must be between 0 and 100"));
        }
    }

    /// Checks a TCP/UDP port number in 1..=65535.
    pub fn port(&mut self, path: impl Into<String>, value: u32) {
        if !(1..=65535).contains(&value) {
            self.push(path, format!("port {value} is out of range: must be 1..=65535"));
        }
    }

    /// Checks a regular expression (RE2 syntax, as Envoy uses).
    pub fn regex(&mut self, path: impl Into<String>, value: &str) {
        if let Err(e) = regex::Regex::new(value) {
            let msg = e.to_string().lines().last().unwrap_or_default().trim().to_string();
            self.push(path, format!("invalid regular expression {value:?}: {msg}"));
        }
    }

    /// Checks a host name: DNS labels, optionally a leading `*` wildcard
    /// (`*.example.com` or `*` alone), and for Gateway hosts a `ns/` prefix
    /// is stripped by the caller.
    pub fn hostname(&mut self, path: impl Into<String>, value: &str, allow_wildcard: bool) {
        if let Err(reason) = check_hostname(value, allow_wildcard) {
            self.push(path, reason);
        }
    }

    /// Checks label keys and values against Kubernetes' label syntax.
    pub fn labels(&mut self, path: &str, labels: &BTreeMap<String, String>) {
        for (k, v) in labels {
            if let Err(reason) = check_label_key(k) {
                self.push(format!("{path}.{k}"), reason);
            }
            if let Err(reason) = check_label_value(v) {
                self.push(format!("{path}.{k}"), reason);
            }
        }
    }

    /// Reports names that appear more than once. `items` yields (path, name).
    pub fn unique<'a>(&mut self, what: &str, items: impl IntoIterator<Item = (String, &'a str)>) {
        let mut seen: BTreeMap<&str, String> = BTreeMap::new();
        for (path, name) in items {
            if let Some(first) = seen.get(name) {
                self.push(path, format!("duplicate {what} {name:?}: already used at {first}"));
            } else {
                seen.insert(name, path);
            }
        }
    }
}

/// Parses a duration in Go syntax as Istio accepts it: one or more
/// `<number><unit>` parts, units `h`, `m`, `s`, `ms`, `us`, `µs`, `ns`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {value:?}: expected a number with a unit, like \"5s\", \"250ms\", \"1m30s\" or \"1h\""
        )
    };
    let s = value.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    if !total.is_finite() || total > 10.0 * 365.0 * 86400.0 {
        return Err(format!("invalid duration {value:?}: too long"));
    }
    Ok(Duration::from_secs_f64(total))
}

fn check_hostname(value: &str, allow_wildcard: bool) -> Result<(), String> {
    if value == "*" {
        return if allow_wildcard { Ok(()) } else { Err("wildcard host \"*\" is not allowed here".into()) };
    }
    let rest = match value.strip_prefix("*.") {
        Some(r) if allow_wildcard => r,
        Some(_) => return Err(format!("wildcard host {value:?} is not allowed here")),
        None if value.starts_with('*') && allow_wildcard => {
            // Istio allows a bare prefix wildcard such as "*example.com".
            &value[1..]
        }
        None => value,
    };
    if rest.is_empty() || rest.len() > 253 {
        return Err(format!("invalid host {value:?}: must be a DNS name of 1 to 253 characters"));
    }
    for label in rest.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "invalid host {value:?}: {label:?} is not a DNS label (letters, digits and '-', 1 to 63 characters, not starting or ending with '-')"
            ));
        }
    }
    Ok(())
}

/// Kubernetes label key: optional DNS-subdomain prefix and `/`, then a name
/// of up to 63 characters of alphanumerics, `-`, `_`, `.`, starting and
/// ending alphanumeric.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        check_hostname(p, false)
            .map_err(|_| format!("invalid label key {key:?}: prefix {p:?} must be a DNS subdomain"))?;
    }
    if !is_label_name(name) {
        return Err(format!(
            "invalid label key {key:?}: name must be 1 to 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Kubernetes label value: empty, or a label name.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: must be empty or 1 to 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks a resource name or namespace: a DNS-1123 subdomain as Kubernetes
/// requires (lower case letters, digits, '-' and '.', up to 253 characters).
pub fn check_object_name(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {value:?}: must be lower case letters, digits, '-' or '.', start and end with a letter or digit, at most 253 characters"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "5", "s", "5 s", "5sec", "-1s", "1x"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn hostnames_and_wildcards() {
        assert!(check_hostname("api.example.com", false).is_ok());
        assert!(check_hostname("*.example.com", true).is_ok());
        assert!(check_hostname("*", true).is_ok());
        assert!(check_hostname("*.example.com", false).is_err());
        assert!(check_hostname("bad_host.com", true).is_err());
        assert!(check_hostname("-a.com", true).is_err());
    }

    #[test]
    fn labels_follow_kubernetes_syntax() {
        assert!(check_label_key("version").is_ok());
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("-bad").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1").is_ok());
        assert!(check_label_value("has space").is_err());
    }

    #[test]
    fn errors_collect_with_paths() {
        let mut e = Errors::default();
        e.percent("spec.x", 101.0);
        e.port("spec.port", 0);
        e.regex("spec.r", "(");
        e.unique("subset", [("spec.subsets[0].name".to_string(), "v1"), ("spec.subsets[1].name".to_string(), "v1")]);
        let paths: Vec<_> = e.items.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["spec.x", "spec.port", "spec.r", "spec.subsets[1].name"]);
    }
}
