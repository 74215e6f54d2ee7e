//! The Prometheus endpoint of `peergroup-server` (`--metrics ADDR`, `GET /metrics`).
//!
//! Every value is read from the server library at scrape time ([`Server::stats`], one
//! consistent snapshot under the server's lock), so nothing is counted twice and an idle
//! server costs nothing between scrapes. The text is the OpenMetrics exposition format
//! (Prometheus' own text format's successor, which Prometheus negotiates), written by
//! `prometheus-client`. Names follow Prometheus' conventions: the `peergroup_` prefix,
//! base units (seconds, bytes) in the name, `_total` on counters.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `peergroup_clients` | gauge | `transport` (`quic`, `websocket`) |
//! | `peergroup_groups` | gauge | |
//! | `peergroup_pairs` | gauge | `path` (`direct`, `relay`) |
//! | `peergroup_relayed_messages_total` | counter | `delivery` |
//! | `peergroup_relayed_bytes_total` | counter | `delivery` |
//! | `peergroup_relay_refused_total` | counter | |
//! | `peergroup_datagrams_rate_limited_total` | counter | |
//! | `peergroup_relay_bytes_per_second` | gauge | |
//! | `peergroup_join_ack_latency_seconds` | histogram | |
//! | `peergroup_leave_ack_latency_seconds` | histogram | |
//! | `peergroup_acks_pending` | gauge | |
//! | `peergroup_punch_attempts_total` | counter | |
//! | `peergroup_punch_successes_total` | counter | |
//! | `peergroup_slow_consumer_disconnects_total` | counter | |
//! | `peergroup_handshake_failures_total` | counter | |
//! | `peergroup_auth_failures_total` | counter | |
//! | `peergroup_connections_refused_total` | counter | |
//! | `peergroup_admission_refusals_total` | counter | |
//! | `peergroup_address_validations_total` | counter | |
//! | `peergroup_host_candidates_dropped_total` | counter | |
//! | `peergroup_punch_orders_deferred_total` | counter | |
//! | `peergroup_notices_sent_total` | counter | |
//! | `peergroup_events_queued` | gauge | |

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use peergroup_server::{AckLatency, Server};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

/// The OpenMetrics text content type (OpenMetrics 1.0, section "Overall structure").
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads the server's counters at each scrape.
#[derive(Debug)]
struct ServerCollector {
    server: Server,
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        unit,
        MetricType::Counter,
    )?)
}

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    latency: &AckLatency,
) -> Result<(), std::fmt::Error> {
    // The library counts cumulatively (Prometheus `le` buckets); the encoder wants each
    // bucket's own count and adds them up again.
    let mut buckets = Vec::with_capacity(AckLatency::BOUNDS.len() + 1);
    let mut below = 0;
    for (bound_us, cumulative) in AckLatency::BOUNDS.iter().zip(latency.buckets) {
        buckets.push((*bound_us as f64 / 1e6, cumulative - below));
        below = cumulative;
    }
    buckets.push((f64::INFINITY, latency.count - below));
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(
        latency.sum_us as f64 / 1e6,
        latency.count,
        &buckets,
        None,
    )
}

impl prometheus_client::collector::Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.server.stats();
        let e = &mut encoder;
        {
            // Clients on the WebSocket fallback are counted apart from QUIC ones: a
            // rising share is how an operator sees networks that block UDP.
            let mut family = e.encode_descriptor(
                "peergroup_clients",
                "Connected clients, by transport.",
                None,
                MetricType::Gauge,
            )?;
            let websocket = stats.websocket_clients.min(stats.clients);
            for (transport, n) in [
                ("quic", stats.clients - websocket),
                ("websocket", websocket),
            ] {
                ConstGauge::new(n as i64)
                    .encode(family.encode_family(&[("transport", transport)])?)?;
            }
        }
        gauge(e, "peergroup_groups", "P2P groups.", stats.groups as u64)?;
        {
            let mut family = e.encode_descriptor(
                "peergroup_pairs",
                "Pairs of hosts sharing a group (or lingering after), by the path their traffic takes.",
                None,
                MetricType::Gauge,
            )?;
            for (path, n) in [
                ("direct", stats.direct_pairs),
                ("relay", stats.relayed_pairs),
            ] {
                ConstGauge::new(n as i64).encode(family.encode_family(&[("path", path)])?)?;
            }
        }
        for (name, help, bytes) in [
            (
                "peergroup_relayed_messages",
                "Messages relayed (one per delivered destination), by delivery mode.",
                false,
            ),
            (
                "peergroup_relayed",
                "Payload bytes relayed (counted per delivered destination), by delivery mode.",
                true,
            ),
        ] {
            let unit = bytes.then_some(&Unit::Bytes);
            let mut family = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
            for (delivery, count) in stats.relayed_by_delivery.by_name() {
                let value = if bytes { count.bytes } else { count.messages };
                ConstCounter::new(value)
                    .encode(family.encode_family(&[("delivery", delivery)])?)?;
            }
        }
        counter(
            e,
            "peergroup_relay_refused",
            "Relay destinations refused (no shared group, unknown pair, too large for the path).",
            None,
            stats.relay_refused,
        )?;
        counter(
            e,
            "peergroup_datagrams_rate_limited",
            "Datagrams dropped because their sender was past its delivery rate, or a ping named several peers.",
            None,
            stats.datagrams_rate_limited,
        )?;
        gauge(
            e,
            "peergroup_relay_bytes_per_second",
            "Payload bytes relayed in the last whole second.",
            stats.relay_bytes_per_sec,
        )?;
        histogram(
            e,
            "peergroup_join_ack_latency",
            "Time from a join to its last ack, for joins every host acknowledged.",
            &stats.join_ack_latency,
        )?;
        histogram(
            e,
            "peergroup_leave_ack_latency",
            "Time from a leave to its last ack, for leaves every host acknowledged.",
            &stats.leave_ack_latency,
        )?;
        gauge(
            e,
            "peergroup_acks_pending",
            "Joins and leaves waiting for acks.",
            stats.acks_pending as u64,
        )?;
        counter(
            e,
            "peergroup_punch_attempts",
            "Hole-punch attempts ordered, one per pair and attempt.",
            None,
            stats.punch_attempts,
        )?;
        counter(
            e,
            "peergroup_punch_successes",
            "Pairs that moved to a direct path by hole punching.",
            None,
            stats.punch_successes,
        )?;
        counter(
            e,
            "peergroup_slow_consumer_disconnects",
            "Clients disconnected because they did not read fast enough.",
            None,
            stats.slow_consumer_disconnects,
        )?;
        counter(
            e,
            "peergroup_handshake_failures",
            "Connections that failed the TLS handshake, the hello or the handshake timeout.",
            None,
            stats.handshake_failures,
        )?;
        counter(
            e,
            "peergroup_auth_failures",
            "Logins the auth hook rejected.",
            None,
            stats.auth_rejections,
        )?;
        counter(
            e,
            "peergroup_connections_refused",
            "Connections refused at the client limit, while busy, or while draining.",
            None,
            stats.connections_refused,
        )?;
        counter(
            e,
            "peergroup_admission_refusals",
            "Connections refused at their first packet: too many logging in, in all or from their source.",
            None,
            stats.admission_refusals,
        )?;
        counter(
            e,
            "peergroup_address_validations",
            "Connections asked to validate their address (QUIC Retry) while many were logging in.",
            None,
            stats.address_validations,
        )?;
        counter(
            e,
            "peergroup_host_candidates_dropped",
            "Host candidates clients named that were dropped as unusable.",
            None,
            stats.host_candidates_dropped,
        )?;
        counter(
            e,
            "peergroup_punch_orders_deferred",
            "Punches put off because a host had used up its punch order budget.",
            None,
            stats.punch_orders_deferred,
        )?;
        counter(
            e,
            "peergroup_notices_sent",
            "Membership notices sent (joins, leaves, data changes; one per notice and receiver).",
            None,
            stats.notices_sent,
        )?;
        gauge(
            e,
            "peergroup_events_queued",
            "Lifecycle events queued for the application and not yet read.",
            stats.events_queued as u64,
        )?;
        Ok(())
    }
}

/// The metrics registry for `server`, ready to encode.
pub fn registry(server: Server) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServerCollector { server }));
    registry
}

/// The whole exposition text for `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(8 << 10);
    // Writing into a String cannot fail; an encoder error would be a bug in a collector.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(%error, "metrics could not be encoded");
    }
    text
}

/// The `/metrics` router.
pub fn router(server: Server) -> Router {
    let registry = Arc::new(registry(server));
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)],
                    render(&registry),
                )
                    .into_response()
            }
        }),
    )
}
