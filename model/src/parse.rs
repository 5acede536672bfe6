//! Turning user input (multi-document YAML or JSON) into checked resources,
//! all or nothing, with errors that name the source, document, line and field.

use serde_json::Value;

use crate::check::FieldError;
use crate::resource::Resource;

/// The most documents one input may hold. Larger inputs are rejected before
/// any document is checked, so a 100,000-document file costs little.
pub const MAX_DOCUMENTS: usize = 10_000;

/// One problem with user input.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// The file name (or `request` for an API body).
    pub source: String,
    /// 1-based index of the document in the stream, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    /// Field path within the document, empty for syntax errors.
    pub path: String,
    pub reason: String,
    /// `Kind/namespace/name` of the document, when it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ": line {l}, column {c}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl Problem {
    fn syntax(source: &str, reason: impl Into<String>) -> Box<Problem> {
        Box::new(Problem {
            source: source.into(),
            document: None,
            line: None,
            column: None,
            path: String::new(),
            reason: reason.into(),
            object: None,
        })
    }
}

/// Splits input into documents. JSON (an object, an array of objects, or a
/// Kubernetes `List`) is read as JSON; anything else as YAML with limits on
/// depth, aliases and size so that hostile input cannot exhaust memory.
pub fn documents(source: &str, text: &str) -> Result<Vec<Value>, Box<Problem>> {
    let trimmed = text.trim_start();
    let values = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => items,
            Ok(v) => vec![v],
            Err(e) => {
                let mut p = Problem::syntax(source, format!("invalid JSON: {e}"));
                p.line = Some(e.line() as u64);
                p.column = Some(e.column() as u64);
                return Err(p);
            }
        }
    } else {
        let separators = text.lines().filter(|l| l.starts_with("---")).count();
        if separators > MAX_DOCUMENTS {
            return Err(Problem::syntax(
                source,
                format!("too many documents ({separators}+): at most {MAX_DOCUMENTS} per request"),
            ));
        }
        yaml_documents(source, text)?
    };
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        match v {
            Value::Null => {}
            Value::Object(mut o) if o.get("kind").and_then(Value::as_str) == Some("List") => match o.remove("items") {
                Some(Value::Array(items)) => out.extend(items),
                _ => return Err(Problem::syntax(source, "a List needs an `items` array")),
            },
            v => out.push(v),
        }
    }
    if out.len() > MAX_DOCUMENTS {
        return Err(Problem::syntax(
            source,
            format!("too many documents ({}): at most {MAX_DOCUMENTS} per request", out.len()),
        ));
    }
    Ok(out)
}

fn yaml_documents(source: &str, text: &str) -> Result<Vec<Value>, Box<Problem>> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 64,
            max_documents: MAX_DOCUMENTS,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_recorded_anchor_events: 100_000,
            max_nodes: 2_000_000,
            max_total_scalar_bytes: 16 << 20,
        },
    };
    serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|e| {
        let mut p = Problem::syntax(source, yaml_reason(&e));
        if let Some(loc) = e.location().filter(|l| l.line() > 0) {
            p.line = Some(loc.line());
            p.column = Some(loc.column());
            p.document = Some(document_at_line(text, loc.line()));
        }
        p
    })
}

/// The first line of the parser's message, without its own location suffix
/// (we print line and column ourselves).
fn yaml_reason(e: &serde_saphyr::Error) -> String {
    let msg = e.to_string();
    let first = msg.lines().next().unwrap_or("invalid YAML").trim();
    let first = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    format!("invalid YAML: {first}")
}

/// 1-based index of the document that contains `line`, counting `---`
/// separators before it (a leading separator opens the first document).
fn document_at_line(text: &str, line: u64) -> usize {
    let mut doc = 1;
    let mut seen_content = false;
    for l in text.lines().take(line.saturating_sub(1) as usize) {
        if l.starts_with("---") {
            if seen_content {
                doc += 1;
            }
            seen_content = true;
        } else if !l.trim().is_empty() && !l.trim_start().starts_with('#') {
            seen_content = true;
        }
    }
    doc
}

/// Parses and checks every document. All or nothing: any problem in any
/// document rejects the input, and every problem found is reported.
pub fn decode(source: &str, text: &str, namespace: &str) -> Result<Vec<Resource>, Vec<Problem>> {
    let docs = documents(source, text).map_err(|p| vec![*p])?;
    let mut resources = Vec::with_capacity(docs.len());
    let mut problems = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let object = describe(&doc, namespace);
        match Resource::from_value(doc, namespace) {
            Ok(r) => resources.push((i + 1, r)),
            Err(errors) => problems.extend(errors.into_iter().map(|FieldError { path, reason }| Problem {
                source: source.to_string(),
                document: Some(i + 1),
                line: None,
                column: None,
                path,
                reason,
                object: object.clone(),
            })),
        }
    }
    let mut seen = std::collections::BTreeMap::new();
    for (doc, r) in &resources {
        let key = (r.kind, r.namespace().to_string(), r.name().to_string());
        if let Some(first) = seen.insert(key, *doc) {
            problems.push(Problem {
                source: source.to_string(),
                document: Some(*doc),
                line: None,
                column: None,
                path: "metadata.name".into(),
                reason: format!("duplicate: document {first} already defines this object"),
                object: Some(format!("{}/{}/{}", r.kind, r.namespace(), r.name())),
            });
        }
    }
    if problems.is_empty() { Ok(resources.into_iter().map(|(_, r)| r).collect()) } else { Err(problems) }
}

fn describe(doc: &Value, namespace: &str) -> Option<String> {
    let kind = doc.get("kind")?.as_str()?;
    let meta = doc.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or(namespace);
    Some(format!("{kind}/{ns}/{name}"))
}
