//! OTLP trace requests (`ExportTraceServiceRequest`) to and from meshgate's
//! spans: agents send theirs this way, and the appliance's `/v1/traces`
//! accepts apps' spans (protobuf or JSON) the same way.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, status::StatusCode};
use prost::Message as _;

use super::trace::{Kind, PROVIDERS_ATTRIBUTE, Span, Value};

/// Most spans one request may carry.
pub const MAX_SPANS: usize = 10_000;

/// Spans from an OTLP request; `from_agent`: the sender is one of the
/// mesh's agents, whose [`PROVIDERS_ATTRIBUTE`] is read (from anyone else
/// it stays an ordinary attribute).
pub fn decode(body: &[u8], json: bool, from_agent: bool) -> Result<Vec<Span>, String> {
    let req: ExportTraceServiceRequest = if json {
        serde_json::from_slice(body).map_err(|e| format!("not an OTLP/JSON ExportTraceServiceRequest: {e}"))?
    } else {
        ExportTraceServiceRequest::decode(body)
            .map_err(|e| format!("not an OTLP/protobuf ExportTraceServiceRequest: {e}"))?
    };
    let mut out = Vec::new();
    for (i, rs) in req.resource_spans.into_iter().enumerate() {
        let service: Arc<str> = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(|v| value(v).to_string())
            .unwrap_or_else(|| "unknown_service".into())
            .into();
        for ss in rs.scope_spans {
            for (j, s) in ss.spans.into_iter().enumerate() {
                if out.len() >= MAX_SPANS {
                    return Err(format!("more than {MAX_SPANS} spans in one request"));
                }
                let at = || format!("resourceSpans[{i}] span {j}");
                let trace_id: [u8; 16] =
                    s.trace_id.as_slice().try_into().map_err(|_| format!("{}: traceId must be 16 bytes", at()))?;
                let span_id: [u8; 8] =
                    s.span_id.as_slice().try_into().map_err(|_| format!("{}: spanId must be 8 bytes", at()))?;
                if trace_id == [0; 16] || span_id == [0; 8] {
                    return Err(format!("{}: traceId and spanId must not be all zero", at()));
                }
                let parent = match s.parent_span_id.len() {
                    0 => None,
                    8 => s.parent_span_id.as_slice().try_into().ok().filter(|p: &[u8; 8]| *p != [0; 8]),
                    _ => return Err(format!("{}: parentSpanId must be 8 bytes or empty", at())),
                };
                let error = s.status.as_ref().is_some_and(|st| st.code == StatusCode::Error as i32);
                let mut attributes: Vec<(String, Value)> =
                    s.attributes.into_iter().filter_map(|kv| Some((kv.key, value(kv.value.as_ref()?)))).collect();
                let providers = attributes.iter().position(|(k, _)| from_agent && k == PROVIDERS_ATTRIBUTE).map(|i| {
                    let names = match attributes.remove(i).1 {
                        Value::Str(s) => s,
                        _ => String::new(),
                    };
                    names.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_string).collect()
                });
                out.push(Span {
                    trace_id,
                    span_id,
                    parent,
                    kind: Kind::from_otlp(s.kind),
                    name: s.name,
                    service: service.clone(),
                    start_unix_nanos: s.start_time_unix_nano,
                    end_unix_nanos: s.end_time_unix_nano.max(s.start_time_unix_nano),
                    error,
                    attributes,
                    providers,
                });
            }
        }
    }
    Ok(out)
}

fn value(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::Str(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(n)) => Value::Int(*n),
        Some(any_value::Value::DoubleValue(x)) => Value::Float(*x),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Str(format!("[{}]", a.values.iter().map(|v| value(v).to_string()).collect::<Vec<_>>().join(",")))
        }
        Some(any_value::Value::BytesValue(b)) => Value::Str(hex::encode(b)),
        Some(any_value::Value::KvlistValue(l)) => Value::Str(
            l.values
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value.as_ref().map(|v| value(v).to_string()).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => Value::Str(String::new()),
    }
}

/// Spans as one OTLP/protobuf request, grouped by service.
pub fn encode(spans: &[Span]) -> Vec<u8> {
    let mut groups: Vec<(Arc<str>, Vec<&Span>)> = Vec::new();
    for s in spans {
        match groups.iter_mut().find(|(svc, _)| Arc::ptr_eq(svc, &s.service) || **svc == *s.service) {
            Some((_, v)) => v.push(s),
            None => groups.push((s.service.clone(), vec![s])),
        }
    }
    let kv = |k: &str, v: &Value| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(match v {
                Value::Str(s) => any_value::Value::StringValue(s.clone()),
                Value::Int(n) => any_value::Value::IntValue(*n),
                Value::Float(x) => any_value::Value::DoubleValue(*x),
                Value::Bool(b) => any_value::Value::BoolValue(*b),
            }),
        }),
        ..Default::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", &Value::Str(service.to_string()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(opentelemetry_proto::tonic::common::v1::InstrumentationScope {
                        name: "meshgate".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: spans
                        .into_iter()
                        .map(|s| opentelemetry_proto::tonic::trace::v1::Span {
                            trace_id: s.trace_id.to_vec(),
                            span_id: s.span_id.to_vec(),
                            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
                            name: s.name.clone(),
                            kind: s.kind.otlp(),
                            start_time_unix_nano: s.start_unix_nanos,
                            end_time_unix_nano: s.end_unix_nanos,
                            attributes: s
                                .attributes
                                .iter()
                                .map(|(k, v)| kv(k, v))
                                .chain(s.providers.as_ref().map(|p| kv(PROVIDERS_ATTRIBUTE, &Value::Str(p.join(",")))))
                                .collect(),
                            status: s.error.then(|| Status { code: StatusCode::Error as i32, ..Default::default() }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    req.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_round_trip_through_otlp() {
        let span = Span {
            trace_id: [7; 16],
            span_id: [8; 8],
            parent: Some([9; 8]),
            kind: Kind::Client,
            name: "users.default.svc.cluster.local/*".into(),
            service: Arc::from("orders.default"),
            start_unix_nanos: 1_000,
            end_unix_nanos: 5_000,
            error: true,
            attributes: vec![
                ("http.status_code".into(), Value::Int(503)),
                ("upstream_cluster".into(), Value::Str("x".into())),
            ],
            providers: None,
        };
        let back = decode(&encode(std::slice::from_ref(&span)), false, true).unwrap();
        assert_eq!(back, vec![span.clone()]);
        // The providers a Telemetry chose travel with the span, not as an attribute.
        let chosen = Span { providers: Some(Arc::from(vec!["otel".to_string(), "zipkin-b".to_string()])), ..span };
        let back = decode(&encode(std::slice::from_ref(&chosen)), false, true).unwrap();
        assert_eq!(back, vec![chosen.clone()]);
        // From anyone but an agent the attribute is an attribute: an app cannot pick providers.
        let back = decode(&encode(std::slice::from_ref(&chosen)), false, false).unwrap();
        assert_eq!(back[0].providers, None);
        assert!(back[0].attributes.iter().any(|(k, _)| k == PROVIDERS_ATTRIBUTE));
        assert!(decode(b"\x0a\x03abc", false, true).is_err());
    }
}
