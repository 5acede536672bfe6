//! `/metrics?federate=1`: the appliance's metrics and every agent's, in one
//! exposition, for a Prometheus that scrapes one target. Each agent's
//! samples get a `proxy` label (its name), and each metric family appears
//! once (HELP and TYPE once, then every proxy's samples), as the text
//! format requires.

use std::time::Duration;

/// How long one agent may take to answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// A metric family's HELP and TYPE lines and its samples.
type Family = (Option<String>, Option<String>, Vec<String>);

/// Merges expositions: `(proxy label, text)`; `None` adds no label (the appliance's own).
pub fn merge(parts: &[(Option<&str>, &str)]) -> String {
    // Families in order of first appearance: name → (help, type, samples).
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, Family> = Default::default();
    for (proxy, text) in parts {
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
                let name = rest.split_whitespace().next().unwrap_or("").to_string();
                let f = families.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    (None, None, Vec::new())
                });
                if line.starts_with("# HELP ") {
                    f.0.get_or_insert_with(|| line.to_string());
                } else {
                    f.1.get_or_insert_with(|| line.to_string());
                }
                current = name;
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // A sample of the current family (histograms add _bucket, _sum, _count).
            let metric = line.split(['{', ' ']).next().unwrap_or("");
            let family = if !current.is_empty() && metric.starts_with(current.as_str()) {
                current.clone()
            } else {
                metric.to_string()
            };
            let sample = match proxy {
                None => line.to_string(),
                Some(p) => {
                    let label = format!("proxy=\"{}\"", p.replace('\\', "\\\\").replace('"', "\\\""));
                    match line.find('{') {
                        Some(i) if line[i + 1..].starts_with('}') => {
                            format!("{}{{{label}}}{}", &line[..i], &line[i + 2..])
                        }
                        Some(i) => format!("{}{{{label},{}", &line[..i], &line[i + 1..]),
                        None => match line.find(' ') {
                            Some(i) => format!("{}{{{label}}}{}", &line[..i], &line[i..]),
                            None => continue,
                        },
                    }
                }
            };
            families
                .entry(family.clone())
                .or_insert_with(|| {
                    order.push(family.clone());
                    (None, None, Vec::new())
                })
                .2
                .push(sample);
        }
    }
    let mut out = String::new();
    for name in order {
        let Some((help, kind, samples)) = families.remove(&name) else { continue };
        for l in help.iter().chain(kind.iter()).chain(samples.iter()) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Every agent's `/stats/prometheus`, fetched at once; agents that do not
/// answer in time are left out (and named in a comment).
pub async fn scrape(agents: Vec<(String, String)>) -> Vec<(String, Result<String, String>)> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(SCRAPE_TIMEOUT));
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let tasks = agents.into_iter().map(|(name, target)| {
        let client = client.clone();
        async move {
            let got = async {
                let uri: http::Uri =
                    format!("http://{target}/stats/prometheus").parse().map_err(|e| format!("{target}: {e}"))?;
                let resp = client.get(uri).await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("HTTP {}", resp.status().as_u16()));
                }
                let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(resp.into_body(), 16 << 20))
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_string())
            };
            let got = tokio::time::timeout(SCRAPE_TIMEOUT, got).await.unwrap_or_else(|_| Err("timed out".into()));
            (name, got)
        }
    });
    futures_util::future::join_all(tasks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_appear_once_with_each_proxys_samples_labelled() {
        let own = "# HELP up Up.\n# TYPE up gauge\nup 1\n";
        let a = "# HELP istio_requests_total Requests.\n# TYPE istio_requests_total counter\nistio_requests_total{reporter=\"source\"} 3\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0.5\nh_count 1\n";
        let b = "# HELP istio_requests_total Requests.\n# TYPE istio_requests_total counter\nistio_requests_total{reporter=\"destination\"} 4\n";
        let out = merge(&[(None, own), (Some("orders-1"), a), (Some("users-1"), b)]);
        assert_eq!(out.matches("# TYPE istio_requests_total counter").count(), 1, "{out}");
        assert!(out.contains("istio_requests_total{proxy=\"orders-1\",reporter=\"source\"} 3\nistio_requests_total{proxy=\"users-1\",reporter=\"destination\"} 4"), "{out}");
        assert!(out.contains("h_sum{proxy=\"orders-1\"} 0.5"), "{out}");
        assert!(out.contains("\nup 1\n"), "{out}");
    }
}
