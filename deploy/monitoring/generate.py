#!/usr/bin/env python3
"""Molt's Grafana dashboards, as code, and the monitoring files the Helm chart ships.

    python3 deploy/monitoring/generate.py           # write dashboards/*.json and the chart's copies
    python3 deploy/monitoring/generate.py --check   # exit 1 if any committed file differs from what this writes

Writes deploy/monitoring/dashboards/molt-{dataplane,controlplane}.json (Grafana dashboard JSON, schema 39, a
`datasource` and a `job` variable) and copies them, with the alert and recording rules of
deploy/monitoring/rules/, into deploy/helm/molt/files/ (a chart cannot read files outside itself).
Standard library only. Every query here is PromQL that `deploy/validate.py monitoring` checks with promtool and
whose metric names deploy/tests/test_metrics.py finds on a live `molt dev`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DASHBOARDS = HERE / "dashboards"
RULES = HERE / "rules"
CHART_FILES = HERE.parent / "helm" / "molt" / "files"

# Every selector narrows to the jobs picked in the dashboard's `job` variable.
J = 'job=~"$job"'
RATE = "$__rate_interval"


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 8
    stack: bool = False


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def quantiles(metric: str, by: str, legend: str, qs: tuple[float, ...] = (0.5, 0.99)) -> list[tuple[str, str]]:
    """histogram_quantile of `metric`_bucket for each q, keeping the `by` labels."""
    keep = f"le, {by}" if by else "le"
    return [
        (
            f"histogram_quantile({q}, sum by ({keep}) (rate({metric}_bucket{{{J}}}[{RATE}])))",
            f"p{int(q * 100)} {legend}".strip(),
        )
        for q in qs
    ]


def dataplane_rows() -> list[Row]:
    return [
        Row(
            "Traffic",
            [
                Panel(
                    "Requests by route",
                    [(f"sum by (route) (rate(molt_requests_total{{{J}}}[{RATE}]))", "{{route}}")],
                    unit="reqps",
                ),
                Panel(
                    "Responses by status",
                    [(f"sum by (status) (rate(molt_requests_total{{{J}}}[{RATE}]))", "{{status}}")],
                    unit="reqps",
                    stack=True,
                ),
                Panel(
                    "5xx share of requests",
                    [
                        (
                            f'sum(rate(molt_requests_total{{{J},status=~"5.."}}[{RATE}]))'
                            f" / sum(rate(molt_requests_total{{{J}}}[{RATE}]))",
                            "5xx",
                        )
                    ],
                    unit="percentunit",
                    description="MoltHighErrorRate fires above 5% for 10 minutes.",
                ),
            ],
        ),
        Row(
            "Latency",
            [
                Panel(
                    "Added latency (proxy's own time)",
                    quantiles("molt_proxy_overhead_seconds", "", ""),
                    unit="s",
                    description="From the body fully read to the request sent upstream, plus from the upstream "
                    "header to the client header. SLO: 99% under 1 ms.",
                ),
                Panel(
                    "Requests over the 1 ms added-latency SLO",
                    [
                        (
                            f'1 - sum(rate(molt_proxy_overhead_seconds_bucket{{{J},le="0.001"}}[{RATE}]))'
                            f" / sum(rate(molt_proxy_overhead_seconds_count{{{J}}}[{RATE}]))",
                            "over 1 ms",
                        )
                    ],
                    unit="percentunit",
                    description="The error budget is 1%; MoltAddedLatencyBudgetBurn* watch how fast it goes.",
                ),
                Panel(
                    "Upstream time to first byte by provider",
                    quantiles("molt_upstream_ttfb_seconds", "provider", "{{provider}}"),
                    unit="s",
                ),
                Panel(
                    "Request duration by route",
                    quantiles("molt_request_duration_seconds", "route", "{{route}}"),
                    unit="s",
                    width=12,
                ),
                Panel(
                    "Spool group commit (usage fsync)",
                    quantiles("molt_usage_spool_commit_seconds", "", "", (0.5, 0.99)),
                    unit="s",
                    width=12,
                    description="What holding a response's end until its usage is durable costs.",
                ),
            ],
        ),
        Row(
            "Errors by kind",
            [
                Panel(
                    "Upstream failures by provider and kind",
                    [
                        (
                            f"sum by (provider, kind) (rate(molt_upstream_errors_total{{{J}}}[{RATE}]))",
                            "{{provider}} {{kind}}",
                        )
                    ],
                    unit="reqps",
                    width=12,
                ),
                Panel(
                    "Limit rejections by limit",
                    [
                        (
                            f'sum by (kind) (rate(molt_limit_decisions_total{{{J},decision="rejected"}}[{RATE}]))',
                            "{{kind}}",
                        )
                    ],
                    unit="reqps",
                    width=12,
                    stack=True,
                ),
            ],
        ),
        Row(
            "Streams and WebSockets",
            [
                Panel("Active streams", [(f"sum(molt_active_streams{{{J}}})", "streams")]),
                Panel("Open WebSockets", [(f"sum(molt_ws_open_connections{{{J}}})", "connections")]),
                Panel(
                    "WebSocket messages by direction",
                    [
                        (
                            f"sum by (direction) (rate(molt_ws_messages_total{{{J}}}[{RATE}]))",
                            "{{direction}}",
                        )
                    ],
                    unit="ops",
                ),
            ],
        ),
        Row(
            "Tokens and limits",
            [
                Panel(
                    "Tokens by model and direction",
                    [
                        (
                            f"sum by (model, direction) (rate(molt_tokens_total{{{J}}}[{RATE}]))",
                            "{{model}} {{direction}}",
                        )
                    ],
                    unit="short",
                    stack=True,
                ),
                Panel(
                    "Limiter decisions",
                    [
                        (
                            f"sum by (decision) (rate(molt_limit_decisions_total{{{J}}}[{RATE}]))",
                            "{{decision}}",
                        )
                    ],
                    unit="ops",
                ),
                Panel(
                    "Redis: fallback to local limits, lease latency",
                    [
                        (f"max(molt_limits_redis_fallback{{{J}}})", "fallback (1 = Redis unreachable)"),
                        (
                            "histogram_quantile(0.99, sum by (le) "
                            f"(rate(molt_limits_redis_seconds_bucket{{{J}}}[{RATE}])))",
                            "p99 lease operation (s)",
                        ),
                    ],
                ),
            ],
        ),
        Row(
            "Config",
            [
                Panel(
                    "Config version per data plane",
                    [
                        (f"molt_config_version{{{J}}}", "{{instance}} runtime"),
                        (f"molt_control_plane_snapshot_version{{{J}}}", "{{instance}} snapshot"),
                    ],
                ),
                Panel(
                    "Reloads applied and rejected",
                    [
                        (f"sum(increase(molt_config_reloads_total{{{J}}}[{RATE}]))", "applied"),
                        (f"sum(increase(molt_config_reload_failures_total{{{J}}}[{RATE}]))", "rejected"),
                    ],
                ),
                Panel(
                    "Snapshot fields this data plane does not know",
                    [(f"molt_control_plane_snapshot_unknown_fields{{{J}}}", "{{instance}}")],
                    description="Above 0 while a newer control plane sends fields this build ignores: "
                    "finish the upgrade (deploy/README.md, Upgrades).",
                ),
                Panel(
                    "Since the last control-plane answer",
                    [(f"time() - molt_control_plane_last_sync_timestamp_seconds{{{J}}}", "{{instance}}")],
                    unit="s",
                    description="MoltControlPlaneUnreachable fires above 2 minutes.",
                ),
            ],
        ),
        Row(
            "Usage spool",
            [
                Panel(
                    "Spool fill per data plane",
                    [(f"molt_usage_spool_bytes{{{J}}} / molt_usage_spool_max_bytes{{{J}}}", "{{instance}}")],
                    unit="percentunit",
                    description="Usage recorded and not yet acknowledged by the control plane, over spool_max_bytes.",
                ),
                Panel(
                    "Usage events recorded, shipped, dropped",
                    [
                        (f"sum(rate(molt_usage_spool_recorded_total{{{J}}}[{RATE}]))", "recorded"),
                        (f"sum(rate(molt_usage_shipped_total{{{J}}}[{RATE}]))", "shipped"),
                        (f"sum(rate(molt_usage_events_dropped_total{{{J}}}[{RATE}]))", "dropped"),
                    ],
                    unit="ops",
                ),
                Panel(
                    "Usage waits that timed out",
                    [(f"sum(increase(molt_usage_record_wait_timeouts_total{{{J}}}[{RATE}]))", "timeouts")],
                    description="Responses that ended before their usage event was durable (commit over 2 s).",
                ),
            ],
        ),
    ]


def controlplane_rows() -> list[Row]:
    return [
        Row(
            "API",
            [
                Panel(
                    "Requests by route and status",
                    [
                        (
                            f"sum by (route, status) (rate(molt_cp_http_requests_total{{{J}}}[{RATE}]))",
                            "{{route}} {{status}}",
                        )
                    ],
                    unit="reqps",
                    width=12,
                ),
                Panel(
                    "Latency by route",
                    quantiles("molt_cp_http_request_duration_seconds", "route", "{{route}}", (0.99,)),
                    unit="s",
                    width=12,
                ),
            ],
        ),
        Row(
            "Data planes and usage ingest",
            [
                Panel("Connected data planes", [(f"sum(molt_cp_connected_dataplanes{{{J}}})", "long-polls")]),
                Panel(
                    "Published snapshot, rejected compilations",
                    [
                        (f"max(molt_cp_snapshot_version{{{J}}})", "version"),
                        (f"sum(increase(molt_cp_snapshot_rejected_total{{{J}}}[{RATE}]))", "rejected"),
                    ],
                ),
                Panel(
                    "Usage events ingested by result",
                    [
                        (
                            f"sum by (result) (rate(molt_cp_ingest_events_total{{{J}}}[{RATE}]))",
                            "{{result}}",
                        )
                    ],
                    unit="ops",
                ),
                Panel(
                    "Ingest lag (request start to usage stored)",
                    quantiles("molt_cp_ingest_lag_seconds", "", ""),
                    unit="s",
                    width=12,
                    description="MoltIngestLagHigh fires when p99 stays above 60 s.",
                ),
                Panel(
                    "Time to store one usage batch",
                    quantiles("molt_cp_ingest_batch_seconds", "", ""),
                    unit="s",
                    width=12,
                ),
            ],
        ),
        Row(
            "Provisioning",
            [
                Panel(
                    "Bots by status",
                    [(f"sum by (status) (molt_cp_bots{{{J}}})", "{{status}}")],
                    stack=True,
                ),
                Panel(
                    "Longest in an unfinished state",
                    [(f"max by (status) (molt_cp_provision_oldest_step_seconds{{{J}}})", "{{status}}")],
                    unit="s",
                    description="MoltProvisioningStuck fires above 15 minutes.",
                ),
                Panel(
                    "Step duration by step",
                    quantiles("molt_cp_provision_step_seconds", "step", "{{step}}", (0.9,)),
                    unit="s",
                ),
            ],
        ),
        Row(
            "Billing",
            [
                Panel(
                    "Meter events by result",
                    [
                        (
                            f"sum by (result) (rate(molt_cp_billing_meter_events_total{{{J}}}[{RATE}]))",
                            "{{result}}",
                        )
                    ],
                    unit="ops",
                ),
                Panel(
                    "Tokens reported to Stripe",
                    [(f"sum(rate(molt_cp_billing_tokens_reported_total{{{J}}}[{RATE}]))", "tokens/s")],
                ),
                Panel(
                    "Meter flush: runs and duration",
                    [
                        (
                            f'sum by (result) (increase(molt_cp_job_runs_total{{{J},job="billing_flush"}}[{RATE}]))',
                            "runs {{result}}",
                        ),
                        (
                            "histogram_quantile(0.99, sum by (le) "
                            f"(rate(molt_cp_billing_flush_seconds_bucket{{{J}}}[{RATE}])))",
                            "p99 duration (s)",
                        ),
                    ],
                ),
                Panel(
                    "Since the last flush that left nothing pending",
                    [(f"time() - max(molt_cp_billing_last_flush_success_timestamp_seconds{{{J}}})", "age")],
                    unit="s",
                    description="MoltMeterFlushFailing fires above 3 hours.",
                ),
                Panel(
                    "Reconciliation: billable tokens Stripe should hold and does not",
                    [(f"sum by (reason) (molt_cp_billing_overdue_tokens{{{J}}})", "{{reason}}")],
                    stack=True,
                    description="Updated after each periodic flush; MoltBillingReconciliationDifference fires "
                    "when above 0 for an hour.",
                ),
                Panel(
                    "Stripe webhooks by type and result",
                    [
                        (
                            f"sum by (type, result) (rate(molt_cp_billing_webhooks_total{{{J}}}[{RATE}]))",
                            "{{type}} {{result}}",
                        )
                    ],
                    unit="ops",
                ),
            ],
        ),
        Row(
            "Notifications",
            [
                Panel(
                    "Outbox depth by channel",
                    [(f"sum by (channel) (molt_cp_notification_outbox_depth{{{J}}})", "{{channel}}")],
                    description="Deliveries waiting to be sent (email, webhooks); in-app entries need none.",
                ),
                Panel(
                    "Oldest waiting delivery by channel",
                    [(f"max by (channel) (molt_cp_notification_outbox_oldest_seconds{{{J}}})", "{{channel}}")],
                    unit="s",
                    description="MoltNotificationsBacklogged fires above 30 minutes.",
                ),
                Panel(
                    "Delivery attempts by channel and result",
                    [
                        (
                            f"sum by (channel, result) (rate(molt_cp_notification_deliveries_total{{{J}}}[{RATE}]))",
                            "{{channel}} {{result}}",
                        )
                    ],
                    unit="ops",
                    description="MoltNotificationsFailed fires on any `failed`.",
                ),
            ],
        ),
    ]


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "expr": expr,
            "legendFormat": legend,
            "refId": chr(ord("A") + i),
        }
        for i, (expr, legend) in enumerate(panel.exprs)
    ]
    custom: dict[str, Any] = {"fillOpacity": 10, "lineWidth": 1, "showPoints": "never"}
    if panel.stack:
        custom["stacking"] = {"group": "A", "mode": "normal"}
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "description": panel.description,
        "fieldConfig": {"defaults": {"custom": custom, "unit": panel.unit}, "overrides": []},
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "id": panel_id,
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": targets,
        "title": panel.title,
        "type": panel.kind,
    }


def dashboard(uid: str, title: str, description: str, job_metric: str, rows: list[Row]) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row in rows:
        panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "id": next_id,
                "panels": [],
                "title": row.title,
                "type": "row",
            }
        )
        next_id += 1
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x = 0
                y += 8
            panels.append(panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
        y += 8
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["molt"],
        "templating": {
            "list": [
                {
                    "current": {},
                    "hide": 0,
                    "label": "Data source",
                    "name": "datasource",
                    "options": [],
                    "query": "prometheus",
                    "refresh": 1,
                    "type": "datasource",
                },
                {
                    "current": {},
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "definition": f"label_values({job_metric}, job)",
                    "hide": 0,
                    "includeAll": True,
                    "allValue": ".*",
                    "label": "Job",
                    "multi": True,
                    "name": "job",
                    "options": [],
                    "query": {"qryType": 1, "query": f"label_values({job_metric}, job)", "refId": "job"},
                    "refresh": 2,
                    "type": "query",
                },
            ]
        },
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": title,
        "uid": uid,
        "version": 1,
    }


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        "molt-dataplane.json": dashboard(
            "molt-dataplane",
            "Molt data plane",
            "Traffic, errors by kind, added latency, time to first byte, streams and WebSockets, tokens, limits, "
            "reloads and the usage spool of Molt's data planes. Generated by deploy/monitoring/generate.py.",
            "molt_config_version",
            dataplane_rows(),
        ),
        "molt-controlplane.json": dashboard(
            "molt-controlplane",
            "Molt control plane",
            "API, data planes and usage ingest lag, provisioning states, billing flush and reconciliation of "
            "Molt's control plane. Generated by deploy/monitoring/generate.py.",
            "molt_cp_snapshot_version",
            controlplane_rows(),
        ),
    }


def expected_files() -> dict[Path, str]:
    """Every file this script owns, with the text it should hold."""
    files: dict[Path, str] = {}
    for name, board in dashboards().items():
        text = json.dumps(board, indent=2) + "\n"
        files[DASHBOARDS / name] = text
        files[CHART_FILES / "dashboards" / name] = text
    for rules in sorted(RULES.glob("*.yaml")):
        files[CHART_FILES / "rules" / rules.name] = rules.read_text()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args()
    files = expected_files()
    if args.check:
        stale = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
        for directory in (CHART_FILES / "dashboards", CHART_FILES / "rules"):
            stale += [p for p in sorted(directory.glob("*")) if p not in files]
        for path in stale:
            print(f"out of date: {path} (run deploy/monitoring/generate.py)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in (CHART_FILES / "dashboards", CHART_FILES / "rules"):
        for extra in directory.glob("*"):
            if extra not in files:
                extra.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
