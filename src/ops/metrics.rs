//! Prometheus metrics: one registry per daemon, conventional names and units.
//!
//! Owns: metric definitions and their label sets. Other modules record through the typed handles
//! here so names and labels are defined in exactly one place.
//! Must not: decide anything from metric values.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All of the daemon's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by tenant, app, component, status code and protocol (`http1.0`,
    /// `http1`, `http2`, `http3`). `tenant` is the tenant of the release's signed document, ""
    /// for apps without one.
    pub requests: IntCounterVec,
    /// Time from request head received to response head sent, by tenant, app and protocol.
    pub request_duration: HistogramVec,
    /// Store creation + instantiation time per request.
    pub instantiate_duration: Histogram,
    /// Linear memory each request's instance reached, by app.
    pub instance_memory: HistogramVec,
    /// Failed requests by app and kind (`trap`, `timeout`, `memory_limit`, `saturated`, ...).
    pub request_errors: IntCounterVec,
    /// Requests served by an instance kept from an earlier request (`reuse` > 1), by app.
    pub reuse_hits: IntCounterVec,
    /// Instances of `reuse` > 1 components not kept for another request, by app and reason
    /// (`trap`, `timeout`, `memory_limit`, `error`, `max_requests`, `idle`, `pool_contended`,
    /// `unsupported`).
    pub reuse_discards: IntCounterVec,
    /// Requests the front door refused as the client's fault (4xx), by reason (`missing_host`,
    /// `duplicate_host`, `invalid_host`, `host_conflict`, `body_too_large`).
    pub client_errors: IntCounterVec,
    /// Requests currently executing a guest, by app.
    pub inflight: IntGaugeVec,
    /// Pooled instance slots in use / in total.
    pub pool_slots_used: IntGauge,
    pub pool_slots_total: IntGauge,
    /// Memory reserved by executing requests (each its component's measured footprint) / the
    /// budget it is admitted against.
    pub pool_memory_reserved: IntGauge,
    pub pool_memory_budget: IntGauge,
    /// Time spent running each app's guests (instantiation, guest code, the host calls it
    /// makes), by app.
    pub guest_cpu_seconds: CounterVec,
    pub guest_thread_requests: IntCounterVec,
    /// Components currently loaded and routable.
    pub components_loaded: IntGauge,
    /// Open client connections.
    pub connections: IntGauge,
    /// Connections the server closed, by listener (`tenant`, `admin`) and reason
    /// (`header_timeout`, `idle_timeout`, `evicted`, `per_ip_limit`).
    pub connections_closed: IntCounterVec,
    /// TLS and QUIC handshakes that did not complete, by reason (`unknown_server_name`,
    /// `timeout`, `error`).
    pub tls_handshake_failures: IntCounterVec,
    /// Node agent: unix time of the last successful exchange with the control plane.
    pub sync_last_success: IntGauge,
    /// Node agent: failed control-plane exchanges and refused desired states, by reason
    /// (`unreachable`, `timeout`, `server_error`, `rejected`, `enroll`, `desired_state`,
    /// `release`).
    pub sync_failures: IntCounterVec,
    /// Node agent: 1 while the last exchange with the control plane succeeded.
    pub sync_up: IntGauge,
    /// Node agent: sequence of the applied desired state.
    pub desired_sequence: IntGauge,
    /// Node agent: bundle bytes received, by `source_kind` (`mirror`, `control_plane`),
    /// whether or not they then matched the digest.
    pub bundle_fetch_bytes: IntCounterVec,
    /// Node agent: bundle download attempts, by `source_kind` and `outcome` (`ok`,
    /// `wrong_digest`, `wrong_size`, `unsupported`, or the sync failure reasons `unreachable`,
    /// `timeout`, `server_error`, `rejected`, `bad_response`).
    pub bundle_fetches: IntCounterVec,
    /// The active release of each app served from the store (always 1); see
    /// [`Metrics::set_app_releases`].
    pub app_release_info: IntGaugeVec,
    /// Releases from the store that failed to load at start, by app (the daemon then serves the
    /// app's previous release, or skips the app).
    pub app_load_failures: IntCounterVec,
    /// Key-value operations guests made, by app, store, op (`open`, `get`, `set`, `delete`,
    /// `exists`, `list`, `increment`, `set_many`, `delete_many`; batches count once per key) and
    /// outcome (`ok`, `denied`, `too_large`, `quota`, `invalid`, `error`).
    pub kv_operations: IntCounterVec,
    /// Keys and bytes (keys + values) each app holds in its key-value stores, as this node last
    /// counted them (the Redis backend counts across the nodes that share it).
    pub kv_keys: IntGaugeVec,
    pub kv_bytes: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| {
            // Registration only fails on duplicate or malformed names, which are fixed strings here.
            unreachable!("metric definitions are static and valid: {e}")
        })
    }

    fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("outpost_http_requests_total", "HTTP requests answered."),
            &["tenant", "app", "component", "status", "protocol"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "outpost_http_request_duration_seconds",
                "Time from request head to response head.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["tenant", "app", "protocol"],
        )?;
        let instantiate_duration = Histogram::with_opts(
            HistogramOpts::new(
                "outpost_instantiate_duration_seconds",
                "Per-request store creation and component instantiation time.",
            )
            .buckets(vec![
                0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                0.005, 0.01, 0.05,
            ]),
        )?;
        let request_errors = IntCounterVec::new(
            Opts::new(
                "outpost_request_errors_total",
                "Requests that failed in the runtime, by cause.",
            ),
            &["app", "kind"],
        )?;
        let reuse_hits = IntCounterVec::new(
            Opts::new(
                "outpost_instance_reuse_hits_total",
                "Requests served by an instance kept from an earlier request (reuse > 1).",
            ),
            &["app"],
        )?;
        let reuse_discards = IntCounterVec::new(
            Opts::new(
                "outpost_instance_reuse_discards_total",
                "Instances of reuse > 1 components dropped instead of kept, by reason.",
            ),
            &["app", "reason"],
        )?;
        let client_errors = IntCounterVec::new(
            Opts::new(
                "outpost_client_errors_total",
                "Requests refused as the client's fault (4xx), by reason.",
            ),
            &["reason"],
        )?;
        let inflight = IntGaugeVec::new(
            Opts::new(
                "outpost_requests_inflight",
                "Requests executing a guest now.",
            ),
            &["app"],
        )?;
        let pool_slots_used = IntGauge::new(
            "outpost_pool_slots_used",
            "Instance slots in use (one per executing request).",
        )?;
        let pool_slots_total = IntGauge::new(
            "outpost_pool_slots",
            "Instance slots available in total (derived from the hardware).",
        )?;
        let pool_memory_reserved = IntGauge::new(
            "outpost_pool_memory_reserved_bytes",
            "Memory reserved by executing requests, each its component's measured footprint.",
        )?;
        let pool_memory_budget = IntGauge::new(
            "outpost_pool_memory_budget_bytes",
            "Memory that executing instances may reserve together (derived from the hardware).",
        )?;
        let guest_cpu_seconds = CounterVec::new(
            Opts::new(
                "outpost_guest_cpu_seconds_total",
                "Time spent running each app's guests: instantiation, guest code and its host calls.",
            ),
            &["app"],
        )?;
        let guest_thread_requests = IntCounterVec::new(
            Opts::new(
                "outpost_guest_thread_requests_total",
                "Requests whose guest ran on a guest thread: how=\"started\" (the app's requests are \
                 heavy) or how=\"moved\" (it ran past its slice on a serving thread).",
            ),
            &["app", "how"],
        )?;
        let components_loaded = IntGauge::new(
            "outpost_components_loaded",
            "Components loaded and routable.",
        )?;
        let connections = IntGauge::new("outpost_connections_open", "Open client connections.")?;
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "outpost_connections_closed_total",
                "Connections the server closed: deadlines passed, evicted at the cap, or over the per-client cap.",
            ),
            &["listener", "reason"],
        )?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "outpost_tls_handshake_failures_total",
                "TLS (TCP) and QUIC handshakes that did not complete, by reason.",
            ),
            &["reason"],
        )?;

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        let instance_memory = HistogramVec::new(
            HistogramOpts::new(
                "outpost_instance_memory_peak_bytes",
                "Peak linear memory of each request's instance, by app.",
            )
            .buckets(
                [
                    64u64 << 10,
                    1 << 20,
                    2 << 20,
                    4 << 20,
                    8 << 20,
                    16 << 20,
                    32 << 20,
                    64 << 20,
                ]
                .into_iter()
                .chain([128 << 20, 256 << 20, 512 << 20, 1 << 30])
                .map(|b| b as f64)
                .collect(),
            ),
            &["app"],
        )?;
        registry.register(Box::new(instantiate_duration.clone()))?;
        registry.register(Box::new(instance_memory.clone()))?;
        registry.register(Box::new(request_errors.clone()))?;
        registry.register(Box::new(reuse_hits.clone()))?;
        registry.register(Box::new(reuse_discards.clone()))?;
        registry.register(Box::new(client_errors.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(pool_slots_used.clone()))?;
        registry.register(Box::new(pool_slots_total.clone()))?;
        registry.register(Box::new(pool_memory_reserved.clone()))?;
        registry.register(Box::new(pool_memory_budget.clone()))?;
        registry.register(Box::new(guest_cpu_seconds.clone()))?;
        registry.register(Box::new(guest_thread_requests.clone()))?;
        registry.register(Box::new(components_loaded.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(connections_closed.clone()))?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;

        let sync_last_success = IntGauge::new(
            "outpost_sync_last_success_timestamp_seconds",
            "Unix time of the last successful exchange with the control plane.",
        )?;
        let sync_failures = IntCounterVec::new(
            Opts::new(
                "outpost_sync_failures_total",
                "Failed control-plane exchanges and refused desired states, by reason.",
            ),
            &["reason"],
        )?;
        let sync_up = IntGauge::new(
            "outpost_sync_up",
            "1 when the last exchange with the control plane succeeded, else 0.",
        )?;
        let desired_sequence = IntGauge::new(
            "outpost_desired_state_sequence",
            "Sequence of the desired state this node applied.",
        )?;
        let app_release_info = IntGaugeVec::new(
            Opts::new(
                "outpost_app_release_info",
                "The active release of each app served from the store; always 1.",
            ),
            &["app", "version", "digest"],
        )?;
        registry.register(Box::new(sync_last_success.clone()))?;
        registry.register(Box::new(sync_failures.clone()))?;
        registry.register(Box::new(sync_up.clone()))?;
        registry.register(Box::new(desired_sequence.clone()))?;
        let bundle_fetch_bytes = IntCounterVec::new(
            Opts::new(
                "outpost_bundle_fetch_bytes_total",
                "Bundle bytes the node agent received, by source kind.",
            ),
            &["source_kind"],
        )?;
        let bundle_fetches = IntCounterVec::new(
            Opts::new(
                "outpost_bundle_fetches_total",
                "Bundle download attempts of the node agent, by source kind and outcome.",
            ),
            &["source_kind", "outcome"],
        )?;
        registry.register(Box::new(bundle_fetch_bytes.clone()))?;
        registry.register(Box::new(bundle_fetches.clone()))?;
        registry.register(Box::new(app_release_info.clone()))?;
        let app_load_failures = IntCounterVec::new(
            Opts::new(
                "outpost_app_load_failures_total",
                "Releases from the store that failed to load at start, by app.",
            ),
            &["app"],
        )?;
        registry.register(Box::new(app_load_failures.clone()))?;
        let kv_operations = IntCounterVec::new(
            Opts::new(
                "outpost_kv_operations_total",
                "Key-value operations guests made, by app, store, operation and outcome.",
            ),
            &["app", "store", "op", "outcome"],
        )?;
        let kv_keys = IntGaugeVec::new(
            Opts::new(
                "outpost_kv_keys",
                "Keys an app holds in its key-value stores (all stores together).",
            ),
            &["app"],
        )?;
        let kv_bytes = IntGaugeVec::new(
            Opts::new(
                "outpost_kv_stored_bytes",
                "Bytes (keys and values) an app holds in its key-value stores.",
            ),
            &["app"],
        )?;
        registry.register(Box::new(kv_operations.clone()))?;
        registry.register(Box::new(kv_keys.clone()))?;
        registry.register(Box::new(kv_bytes.clone()))?;

        let build = IntGaugeVec::new(
            Opts::new("outpost_build_info", "Build information; always 1."),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build))?;

        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Self {
            registry,
            requests,
            request_duration,
            instantiate_duration,
            instance_memory,
            request_errors,
            reuse_hits,
            reuse_discards,
            client_errors,
            inflight,
            pool_slots_used,
            pool_slots_total,
            pool_memory_reserved,
            pool_memory_budget,
            guest_cpu_seconds,
            guest_thread_requests,
            components_loaded,
            connections,
            connections_closed,
            tls_handshake_failures,
            sync_last_success,
            sync_failures,
            sync_up,
            desired_sequence,
            bundle_fetch_bytes,
            bundle_fetches,
            app_release_info,
            app_load_failures,
            kv_operations,
            kv_keys,
            kv_bytes,
        })
    }

    /// Replaces every `outpost_app_release_info` series with one per `(app, version, digest)`:
    /// label sets of releases no longer active disappear.
    pub fn set_app_releases<'a>(
        &self,
        releases: impl IntoIterator<Item = (&'a str, &'a str, String)>,
    ) {
        self.app_release_info.reset();
        for (app, version, digest) in releases {
            self.app_release_info
                .with_label_values(&[app, version, digest.as_str()])
                .set(1);
        }
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The HTTP protocol label of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http10,
    Http1,
    Http2,
    Http3,
}

impl Protocol {
    const ALL: [Protocol; 4] = [
        Protocol::Http10,
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Http3,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Http10 => "http1.0",
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Http3 => "http3",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Request metrics of one app/component, resolved once instead of on every request:
/// `with_label_values` hashes every label and takes a lock, a cost paid tens of thousands of
/// times a second on the hot path. Counters per status code are created on first use.
pub struct RequestMetrics {
    tenant: String,
    app: String,
    component: String,
    /// One slot per (protocol, status 100..=599).
    counters: Box<[std::sync::OnceLock<prometheus::IntCounter>]>,
    durations: [Histogram; 4],
    metrics: Metrics,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics")
            .field("tenant", &self.tenant)
            .field("app", &self.app)
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl RequestMetrics {
    /// `tenant`: the release's tenant, `None` for an app without one (exported as "").
    pub fn new(metrics: &Metrics, tenant: Option<&str>, app: &str, component: &str) -> Self {
        let tenant = tenant.unwrap_or("");
        let durations = Protocol::ALL.map(|p| {
            metrics
                .request_duration
                .with_label_values(&[tenant, app, p.label()])
        });
        Self {
            tenant: tenant.to_owned(),
            app: app.to_owned(),
            component: component.to_owned(),
            counters: (0..Protocol::ALL.len() * 500)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            durations,
            metrics: metrics.clone(),
        }
    }

    /// Counts one answered request and its duration.
    pub fn record(&self, status: http::StatusCode, protocol: Protocol, seconds: f64) {
        let code = status.as_u16();
        let slot = usize::from(code.clamp(100, 599) - 100) + protocol.index() * 500;
        let counter = self.counters[slot].get_or_init(|| {
            self.metrics.requests.with_label_values(&[
                &self.tenant,
                &self.app,
                &self.component,
                status.as_str(),
                protocol.label(),
            ])
        });
        counter.inc();
        self.durations[protocol.index()].observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod dashboard_tests {
    use super::*;

    /// Every Outpost metric the shipped Grafana dashboard queries exists under that name.
    #[test]
    fn grafana_dashboard_queries_only_exported_metrics() {
        let m = Metrics::new();
        RequestMetrics::new(&m, None, "a", "c").record(
            http::StatusCode::OK,
            Protocol::Http1,
            0.001,
        );
        m.request_errors.with_label_values(&["a", "trap"]).inc();
        m.inflight.with_label_values(&["a"]).inc();
        m.tls_handshake_failures.with_label_values(&["x"]).inc();
        m.instantiate_duration.observe(0.00001);
        m.instance_memory.with_label_values(&["a"]).observe(65536.0);
        m.sync_failures.with_label_values(&["unreachable"]).inc();
        m.set_app_releases([("a", "1.0.0", "sha256:00".to_owned())]);
        let exported: std::collections::BTreeSet<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();

        let dashboard = include_str!("../../config/grafana-dashboard.json");
        let mut checked = 0;
        for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("outpost_") {
                continue;
            }
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            assert!(
                exported.contains(name),
                "dashboard queries unknown metric {word}"
            );
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} metric references found");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_release_info_keeps_only_the_current_releases() {
        let m = Metrics::new();
        m.set_app_releases([
            ("a", "1.0.0", "sha256:aa".to_owned()),
            ("b", "2.0.0", "sha256:bb".to_owned()),
        ]);
        m.set_app_releases([("a", "1.1.0", "sha256:cc".to_owned())]);
        let text = m.render();
        assert!(
            text.contains(
                "outpost_app_release_info{app=\"a\",digest=\"sha256:cc\",version=\"1.1.0\"} 1"
            ),
            "{text}"
        );
        assert!(
            !text.contains("sha256:aa") && !text.contains("sha256:bb"),
            "{text}"
        );
        for name in [
            "outpost_sync_up",
            "outpost_sync_last_success_timestamp_seconds",
            "outpost_desired_state_sequence",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} gauge")),
                "{name}: {text}"
            );
        }
    }
}
