//! Traces of the bridge hop. For Rush-stamped and return-path records the W3C `traceparent`
//! (and `tracestate`) found in the input's headers is continued: a span for the hop is started
//! as its child, with route, service and cluster attributes, and the output carries the new
//! context. Spans are exported over OTLP/HTTP when an endpoint is configured
//! (`telemetry.otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`); without one the context is
//! still continued, so a Rush consumer's own tracing links to the producer's trace.
//!
//! Production copies are never touched: their bytes, headers included, stay identical.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::config::TelemetryConfig;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const PROTOCOL_ENV: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";

#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter to {endpoint}: {reason}")]
pub struct TelemetryError {
    pub endpoint: String,
    pub reason: String,
}

/// One hop's labels.
pub struct Hop<'a> {
    pub route: &'a str,
    pub service: Option<&'a str>,
    pub cluster: &'static str,
    pub direction: &'static str,
    pub output_topic: &'a str,
}

/// The context to write on an output.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Propagated {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Injector for Propagated {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// Reads trace headers through any header lookup (`name → last value`).
struct HeaderExtractor<'a, F>(F, std::marker::PhantomData<&'a [u8]>);

impl<'a, F: Fn(&str) -> Option<&'a [u8]>> Extractor for HeaderExtractor<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

pub struct HopTracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    pub exporting_to: Option<String>,
}

impl HopTracer {
    /// Tracing with export where `config` or the environment name an endpoint.
    pub fn new(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = config.otlp_endpoint.clone().or_else(|| env(ENDPOINT_ENV));
        let protocol = config.otlp_protocol.clone().or_else(|| env(PROTOCOL_ENV));
        let service = config.service_name.clone().unwrap_or_else(|| "tenancy-bridge".into());
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if let Some(base) = &endpoint {
            let url = if base.ends_with("/v1/traces") {
                base.clone()
            } else {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            };
            let protocol = match protocol.as_deref() {
                Some("http/json") => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(&url)
                .with_protocol(protocol)
                .with_timeout(std::time::Duration::from_secs(5))
                .build()
                .map_err(|e| TelemetryError { endpoint: url.clone(), reason: e.to_string() })?;
            builder = builder.with_batch_exporter(exporter);
            tracing::info!(endpoint = %url, "exporting bridge-hop spans over OTLP");
        }
        let provider = builder.build();
        let tracer = provider.tracer("tenancy-bridge");
        Ok(Self { provider, tracer, propagator: TraceContextPropagator::new(), exporting_to: endpoint })
    }

    /// Starts and ends the span of one hop as a child of the context in the input's headers
    /// (a new trace when there is none) and returns the context for the output.
    pub fn hop<'a>(&self, header: impl Fn(&str) -> Option<&'a [u8]>, hop: &Hop<'_>) -> Propagated {
        let parent = self.propagator.extract(&HeaderExtractor(header, std::marker::PhantomData));
        let mut attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.destination.name", hop.output_topic.to_owned()),
            KeyValue::new("tenancy.route", hop.route.to_owned()),
            KeyValue::new("tenancy.cluster", hop.cluster),
            KeyValue::new("tenancy.direction", hop.direction),
        ];
        if let Some(s) = hop.service {
            attributes.push(KeyValue::new("tenancy.service", s.to_owned()));
        }
        let span = self
            .tracer
            .span_builder("tenancy-bridge hop")
            .with_kind(SpanKind::Producer)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let cx = Context::current_with_span(span);
        let mut out = Propagated::default();
        self.propagator.inject_context(&cx, &mut out);
        cx.span().end();
        out
    }

    /// Exports what is still buffered; call once at exit.
    pub fn shutdown(&self) {
        if self.exporting_to.is_some() {
            if let Err(e) = self.provider.shutdown() {
                tracing::warn!(error = %e, "span export at shutdown failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_hop_continues_the_input_trace_as_a_child() {
        let t = HopTracer::new(&TelemetryConfig::default()).unwrap();
        let hop = Hop {
            route: "orders",
            service: Some("payment"),
            cluster: "rush",
            direction: "forward",
            output_topic: "orders.payment",
        };
        let headers = |k: &str| match k {
            TRACEPARENT => Some(PARENT.as_bytes()),
            TRACESTATE => Some(b"vendor=1".as_slice()),
            _ => None,
        };
        let out = t.hop(headers, &hop);
        let tp = out.traceparent.unwrap();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
        assert_ne!(parts[2], "00f067aa0ba902b7", "a new span id");
        assert_eq!(out.tracestate.as_deref(), Some("vendor=1"));

        let fresh = t.hop(|_| None, &hop).traceparent.unwrap();
        assert!(!fresh.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "no parent: a new trace");
        let garbage = t.hop(|k| (k == TRACEPARENT).then_some(b"not-a-traceparent".as_slice()), &hop);
        assert!(garbage.traceparent.is_some());
    }
}
