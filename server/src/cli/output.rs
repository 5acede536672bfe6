//! How the CLI prints objects: tables for people, YAML and JSON for tools.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

pub fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot print as YAML: {e}\n"))
}

/// Documents as a YAML stream: `apply -f` takes it back unchanged.
pub fn yaml_stream(items: &[Value]) -> String {
    items.iter().map(yaml).collect::<Vec<_>>().join("---\n")
}

pub fn json(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// Left-aligned columns, like kubectl.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `5s`, `3m`, `2h`, `4d` since an RFC 3339 time.
pub fn age(timestamp: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(timestamp) else { return "?".into() };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn join(v: &Value) -> String {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")).unwrap_or_default()
}

/// Kind-specific columns, as `kubectl get` shows for Istio's CRDs.
pub fn summary_columns(kind: meshgate_model::Kind) -> &'static [&'static str] {
    use meshgate_model::Kind::*;
    match kind {
        VirtualService => &["GATEWAYS", "HOSTS"],
        DestinationRule => &["HOST", "SUBSETS"],
        ServiceEntry => &["HOSTS", "LOCATION", "RESOLUTION"],
        WorkloadEntry => &["ADDRESS", "LABELS"],
        Gateway => &["SERVERS"],
        PeerAuthentication => &["MODE"],
        AuthorizationPolicy => &["ACTION"],
        Secret => &["TYPE"],
        TrafficSplit => &["SERVICE", "SUBSETS"],
        RequestAuthentication => &["ISSUERS"],
        RateLimitPolicy => &["TARGETS", "LIMITS"],
        Consumer => &["DISPLAY NAME"],
        ApiKeyAuth => &["TARGETS", "REQUIRED"],
        RequestSizeLimit => &["TARGETS", "MAX BYTES"],
        GrpcTranscoder => &["TARGETS", "SERVICES"],
        Telemetry => &["TARGETS", "SAMPLING"],
    }
}

fn targets(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|t| format!("{}/{}", t["kind"].as_str().unwrap_or(""), t["name"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub fn summary(kind: meshgate_model::Kind, doc: &Value) -> Vec<String> {
    use meshgate_model::Kind::*;
    let spec = &doc["spec"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let names = |v: &Value, f: &str| {
        v.as_array().map(|a| a.iter().map(|x| s(&x[f])).collect::<Vec<_>>().join(",")).unwrap_or_default()
    };
    match kind {
        VirtualService => vec![join(&spec["gateways"]), join(&spec["hosts"])],
        DestinationRule => vec![s(&spec["host"]), names(&spec["subsets"], "name")],
        ServiceEntry => vec![join(&spec["hosts"]), s(&spec["location"]), s(&spec["resolution"])],
        WorkloadEntry => vec![
            s(&spec["address"]),
            spec["labels"]
                .as_object()
                .map(|m| {
                    m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
                })
                .unwrap_or_default(),
        ],
        Gateway => vec![
            spec["servers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| format!("{}/{}", x["port"]["number"], s(&x["port"]["protocol"])))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        ],
        PeerAuthentication => vec![s(&spec["mtls"]["mode"])],
        AuthorizationPolicy => vec![spec["action"].as_str().unwrap_or("ALLOW").to_string()],
        Secret => vec![s(&doc["type"])],
        TrafficSplit => vec![
            s(&spec["service"]),
            spec["subsets"]
                .as_array()
                .map(|a| a.iter().map(|x| format!("{}={}", s(&x["name"]), x["weight"])).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
        ],
        RequestAuthentication => vec![names(&spec["jwtRules"], "issuer")],
        Consumer => vec![s(&spec["displayName"])],
        RequestSizeLimit => vec![targets(&spec["targetRefs"]), spec["maxBytes"].to_string()],
        GrpcTranscoder => vec![targets(&spec["targetRefs"]), join(&spec["services"])],
        Telemetry => vec![
            if spec["selector"].is_object() { "selector".into() } else { targets(&spec["targetRefs"]) },
            spec["tracing"][0]["randomSamplingPercentage"].as_f64().map(|p| format!("{p}%")).unwrap_or_default(),
        ],
        ApiKeyAuth => vec![targets(&spec["targetRefs"]), spec["required"].as_bool().unwrap_or(true).to_string()],
        RateLimitPolicy => vec![
            spec["targetRefs"]
                .as_array()
                .map(|a| a.iter().map(|t| format!("{}/{}", s(&t["kind"]), s(&t["name"]))).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            spec["limits"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|l| format!("{}/{}", l["requests"], l["per"].as_str().unwrap_or("minute")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        ],
    }
}
