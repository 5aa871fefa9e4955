//! An OTLP/gRPC receiver for tests: a real tonic server implementing the
//! OpenTelemetry collector's trace and metrics services on loopback, which
//! keeps what the code under test exports.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// One exported span, flattened.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub attributes: Vec<(String, String)>,
    /// Unix time in nanoseconds, as the exporter stamped them.
    pub start_ns: u64,
    pub end_ns: u64,
}

impl SpanRecord {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// One exported metric point, flattened: name, attributes, value.
#[derive(Debug, Clone)]
pub struct MetricRecord {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    metrics: Arc<Mutex<Vec<MetricRecord>>>,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(SpanRecord {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                        attributes: s
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(&kv.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value as N};
        let mut out = self.metrics.lock().unwrap();
        for rm in req.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    let attrs = |a: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
                        a.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect::<Vec<_>>()
                    };
                    let num = |v: &Option<N>| match v {
                        Some(N::AsDouble(d)) => *d,
                        Some(N::AsInt(i)) => *i as f64,
                        None => 0.0,
                    };
                    match &m.data {
                        Some(Data::Sum(s)) => out.extend(s.data_points.iter().map(|p| MetricRecord {
                            name: m.name.clone(),
                            attributes: attrs(&p.attributes),
                            value: num(&p.value),
                        })),
                        Some(Data::Gauge(g)) => out.extend(g.data_points.iter().map(|p| MetricRecord {
                            name: m.name.clone(),
                            attributes: attrs(&p.attributes),
                            value: num(&p.value),
                        })),
                        Some(Data::Histogram(h)) => out.extend(h.data_points.iter().map(|p| MetricRecord {
                            name: m.name.clone(),
                            attributes: attrs(&p.attributes),
                            value: p.count as f64,
                        })),
                        _ => {}
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    sink: Sink,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Serves OTLP/gRPC (plaintext, loopback) on a free port.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP receiver");
        let addr = listener.local_addr().unwrap();
        let sink = Sink::default();
        let s = sink.clone();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(s.clone()))
                .add_service(MetricsServiceServer::new(s))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("OTLP receiver");
        });
        Receiver {
            addr,
            sink,
            _task: task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    pub fn spans(&self) -> Vec<SpanRecord> {
        self.sink.spans.lock().unwrap().clone()
    }

    pub fn metrics(&self) -> Vec<MetricRecord> {
        self.sink.metrics.lock().unwrap().clone()
    }

    /// The last exported value of counter `name` with attribute `key` = `value`; 0 before any.
    pub fn last_value(&self, name: &str, key: &str, value: &str) -> f64 {
        self.metrics()
            .iter()
            .rev()
            .find(|m| m.name == name && m.attributes.iter().any(|(k, v)| k == key && v == value))
            .map_or(0.0, |m| m.value)
    }
}

/// What a test process's own controller parts log and export: their log lines, and their
/// metrics as an in-process OTLP receiver got them.
pub struct Observed {
    pub logs: crate::logs::Captured,
    pub otlp: Receiver,
}

/// Sets this test process's telemetry up once, as `service`, and returns what it observes.
/// Call it first thing in every test of a binary that uses it: the telemetry is process-global
/// and reads its environment once. The receiver and the exporters run on a runtime of their
/// own, since a test's runtime ends with the test.
pub fn observe_process(service: &'static str) -> &'static Observed {
    static OBSERVED: std::sync::OnceLock<Observed> = std::sync::OnceLock::new();
    OBSERVED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let otlp = Receiver::start().await;
                // SAFETY: set inside the OnceLock, before any test of this binary goes on.
                unsafe {
                    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint());
                    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "300");
                }
                let logs = crate::logs::Captured::default();
                let writer = logs.clone();
                let telemetry = kcdsync_telemetry::init_with_writer(
                    service,
                    kcdsync_telemetry::LogFormat::Human,
                    "info",
                    kcdsync_telemetry::BoxMakeWriter::new(move || writer.clone()),
                );
                assert!(telemetry.exporting());
                tx.send(Observed { logs, otlp }).unwrap();
                let _keep = telemetry;
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("telemetry set up")
    })
}
