//! Telemetry for kcdsync's binaries: `tracing` everywhere, bridged to
//! OpenTelemetry and exported over OTLP/gRPC when — and only when — an
//! endpoint is configured the standard way (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! or the traces/metrics variants). `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER` are honoured by the
//! SDK. Without an endpoint there is no exporter, no error and no cost
//! beyond plain logging.
//!
//! Also owns W3C trace context: `traceparent` in gRPC metadata and in
//! migration attempts, so an agent's failed attempt, the controller's
//! reconcile and LDAP writes, and the purge sent back are one trace.

mod transport;

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
pub use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use opentelemetry::metrics::Meter;
pub use transport::{ALLOW_PLAINTEXT, is_loopback_host};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    /// Human, without terminal colours: for log files.
    Plain,
    Json,
}

/// Keeps the exporters alive; `shutdown` flushes what is buffered.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

/// Where to export, from the standard environment variables.
fn endpoint_configured(signal: &str) -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
}

fn resource(service: &str) -> Resource {
    let mut b = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        b = b.with_service_name(service.to_owned());
    }
    b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// An exporter builder with `tls` (from [`transport::client_tls`]) when set.
fn with_tls<B: opentelemetry_otlp::WithTonicConfig>(b: B, tls: Option<tonic::transport::ClientTlsConfig>) -> B {
    match tls {
        Some(tls) => b.with_tls_config(tls),
        None => b,
    }
}

/// Installs the global subscriber (logs to stderr, in `format`, filtered by
/// `RUST_LOG` or `default_filter`) and, when configured, the OTLP exporters.
/// Must run inside a tokio runtime when an endpoint is configured.
pub fn init(service: &str, format: LogFormat, default_filter: &str) -> Telemetry {
    init_with_writer(service, format, default_filter, BoxMakeWriter::new(std::io::stderr))
}

/// `init`, with log lines going to `writer` (tests capture them).
pub fn init_with_writer(service: &str, format: LogFormat, default_filter: &str, writer: BoxMakeWriter) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));

    let mut problems = Vec::new();
    // The exporters talk tonic, so their background work runs on the
    // caller's tokio runtime, not on the SDK's own thread.
    let current_thread = tokio::runtime::Handle::try_current()
        .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
        .unwrap_or(false);
    let tracer = if endpoint_configured("TRACES") {
        match transport::client_tls("TRACES").and_then(|tls| {
            with_tls(opentelemetry_otlp::SpanExporter::builder().with_tonic(), tls)
                .build()
                .map_err(|e| format!("OTLP trace exporter: {e}"))
        }) {
            Ok(exporter) => {
                use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
                let b = SdkTracerProvider::builder().with_resource(resource(service));
                let b = if current_thread {
                    b.with_span_processor(
                        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::TokioCurrentThread).build(),
                    )
                } else {
                    b.with_span_processor(
                        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build(),
                    )
                };
                Some(b.build())
            }
            Err(e) => {
                problems.push(e);
                None
            }
        }
    } else {
        None
    };
    let meter = if endpoint_configured("METRICS") {
        match transport::client_tls("METRICS").and_then(|tls| {
            with_tls(opentelemetry_otlp::MetricExporter::builder().with_tonic(), tls)
                .build()
                .map_err(|e| format!("OTLP metrics exporter: {e}"))
        }) {
            Ok(exporter) => {
                use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
                let b = SdkMeterProvider::builder().with_resource(resource(service));
                let b = if current_thread {
                    b.with_reader(
                        PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::TokioCurrentThread).build(),
                    )
                } else {
                    b.with_reader(PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::Tokio).build())
                };
                let p = b.build();
                opentelemetry::global::set_meter_provider(p.clone());
                Some(p)
            }
            Err(e) => {
                problems.push(e);
                None
            }
        }
    } else {
        None
    };

    // Log verbosity (RUST_LOG) must not decide what is traced: the trace
    // layer has its own filter (KCDSYNC_TRACE_FILTER, default info).
    let trace_filter = std::env::var("KCDSYNC_TRACE_FILTER")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let otel = tracer.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("kcdsync"))
            .with_filter(trace_filter)
    });
    let registry = tracing_subscriber::registry().with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Human => registry.with(fmt.with_filter(filter)).init(),
        LogFormat::Plain => registry.with(fmt.with_ansi(false).with_filter(filter)).init(),
        LogFormat::Json => registry
            .with(
                fmt.json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_filter(filter),
            )
            .init(),
    }
    // An exporter refused here exports nothing: the process still runs (telemetry is
    // not worth an outage), and says so loudly at start-up.
    for p in problems {
        tracing::error!("{p}; continuing without that exporter");
    }
    Telemetry { tracer, meter }
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.tracer.is_some() || self.meter.is_some()
    }

    /// Flushes and stops the exporters.
    pub fn shutdown(self) {
        if let Some(t) = self.tracer {
            let _ = t.force_flush();
            let _ = t.shutdown();
        }
        if let Some(m) = self.meter {
            let _ = m.force_flush();
            let _ = m.shutdown();
        }
    }
}

/// The meter all kcdsync instruments hang off (a no-op without exporter).
pub fn meter() -> Meter {
    opentelemetry::global::meter("kcdsync")
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The W3C `traceparent` of a span, if it belongs to a sampled trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut MapCarrier(&mut map));
    map.remove("traceparent")
}

/// The trace id of a span, for log lines; empty when not traced.
pub fn trace_id(span: &tracing::Span) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Makes `span` a child of the remote span in `traceparent` (ignored when
/// empty or malformed).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let cx: Context = TraceContextPropagator::new().extract(&OneHeader(traceparent));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Adds the current span's `traceparent` to outgoing gRPC metadata.
pub fn inject_metadata(span: &tracing::Span, md: &mut tonic::metadata::MetadataMap) {
    if let Some(tp) = traceparent(span)
        && let Ok(v) = tp.parse()
    {
        md.insert("traceparent", v);
    }
}

/// A server span per gRPC call, named and attributed after the
/// OpenTelemetry RPC conventions, continuing the caller's `traceparent`.
/// For tonic's `Server::trace_fn`.
/// The server span of a request on a listener that serves gRPC and the
/// dashboard: an HTTP span for `/ui/…` pages, a gRPC span otherwise.
pub fn server_span<B>(req: &http::Request<B>) -> tracing::Span {
    let path = req.uri().path();
    if path == "/ui" || path.starts_with("/ui/") {
        return tracing::info_span!(
            "http",
            otel.name = %format!("{} /ui", req.method()),
            otel.kind = "server",
            http.request.method = %req.method(),
            url.path = %path,
        );
    }
    grpc_server_span(req)
}

pub fn grpc_server_span<B>(req: &http::Request<B>) -> tracing::Span {
    let path = req.uri().path();
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    if let Some(tp) = req.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
        set_parent(&span, tp);
    }
    span
}

/// The `traceparent` of incoming gRPC metadata, if any.
pub fn metadata_traceparent(md: &tonic::metadata::MetadataMap) -> Option<String> {
    md.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_traceparent_is_ignored() {
        let span = tracing::info_span!("x");
        set_parent(&span, "garbage");
        set_parent(&span, "");
        assert_eq!(traceparent(&span), None, "no tracer installed: nothing to propagate");
    }
}
