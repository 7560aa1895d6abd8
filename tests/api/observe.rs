//! Looking inside: Prometheus metrics.

use std::time::Duration;

use serde_json::json;
use tcc_coordinator::ApiToken;

use crate::helpers::{
    eventually, one, spawn_app_with, Behaviour, Collector, ExportedSpan, Participant, Reply,
    TestApp,
};

async fn metrics(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.unwrap()
}

/// `GET /metrics` with `accept` (or none), its content type and body.
async fn scrape(app: &TestApp, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(app.url("/metrics"));
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["vary"], "Accept");
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (kind, response.text().await.unwrap())
}

/// The rules of Prometheus's text format 0.0.4 that OpenMetrics breaks: every sample belongs
/// to a family its `TYPE` line names exactly (a histogram's `_bucket`, `_sum`, `_count`
/// too), the types are 0.0.4's, and no `# EOF` or `# UNIT`.
fn assert_prometheus_text(text: &str) {
    let mut types = std::collections::HashMap::new();
    for line in text.lines() {
        assert!(
            line != "# EOF" && !line.starts_with("# UNIT"),
            "not in 0.0.4: {line}"
        );
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(!samples.is_empty());
    for line in samples {
        let name = line.split(['{', ' ']).next().unwrap();
        let histogram = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| types.get(base).is_some_and(|k| k == "histogram"))
        });
        assert!(
            types.contains_key(name) || histogram,
            "sample {name} has no TYPE line of its own: {line}"
        );
    }
}

#[tokio::test]
async fn metrics_answer_in_the_format_the_scraper_asks_for() {
    let app = spawn_app_with(|_| {}).await;
    let prometheus_text = "text/plain; version=0.0.4; charset=utf-8";

    // curl, and agents that ask for nothing in particular or for plain text.
    for accept in [
        None,
        Some("*/*"),
        Some("text/plain"),
        Some("text/plain;version=0.0.4"),
    ] {
        let (kind, text) = scrape(&app, accept).await;
        assert_eq!(kind, prometheus_text, "Accept: {accept:?}");
        assert_prometheus_text(&text);
        assert!(
            text.contains("# TYPE tcc_deadlines_fired_total counter"),
            "{text}"
        );
    }
    // Prometheus asks for OpenMetrics first.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
        version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (kind, text) = scrape(&app, Some(prometheus)).await;
    assert_eq!(
        kind,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE tcc_deadlines_fired counter"),
        "{text}"
    );
    // OpenMetrics only when it is preferred.
    let (kind, _) = scrape(&app, Some("text/plain, application/openmetrics-text;q=0.5")).await;
    assert_eq!(kind, prometheus_text);
}

/// The value of the sample `name` (with its labels, as written), or 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn metrics_count_states_transitions_calls_and_flushes() {
    let app = spawn_app_with(|_| {}).await;
    let p = Participant::start().await;
    let id = app
        .create(&json!({"participants": [p.link(1), p.link(2)]}))
        .await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    app.wait_for(&id, |s, _| s == 303).await;

    let text = metrics(&app).await;
    assert_eq!(
        sample(&text, r#"tcc_reservations{state="confirmed"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"tcc_reservations{state="reserved"}"#),
        0.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tcc_transitions_total{from="reserved",to="confirming"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tcc_transitions_total{from="confirming",to="confirmed"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tcc_participant_calls_total{verb="confirm",outcome="ok"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tcc_participant_call_duration_seconds_count{verb="confirm"}"#
        ),
        2.0
    );
    assert!(
        sample(&text, "tcc_log_flush_batch_writes_count") >= 2.0,
        "{text}"
    );
    assert!(sample(&text, "tcc_log_flush_duration_seconds_count") >= 2.0);
    assert!(text.contains("# TYPE tcc_log_flush_duration_seconds histogram"));
    app.stop().await;
}

#[tokio::test]
async fn retries_deadlines_and_stuck_reservations_show() {
    let app = spawn_app_with(|c| c.stuck_after = Duration::from_millis(200)).await;
    let failing = Participant::start_with(Behaviour {
        confirm_reply: Reply::Status(503),
        ..Behaviour::default()
    })
    .await;
    let stuck = app
        .create(&json!({"participants": [failing.link(1)]}))
        .await;
    app.post(&format!("/reservations/{stuck}/confirm")).await;
    let expiring = app
        .create(&json!({"timeout_ms": 100, "participants": [failing.link(2)]}))
        .await;
    app.wait_for(&expiring, |s, _| s == 410).await;
    failing
        .wait_until("two failed confirms", |p| p.count("PUT") >= 2)
        .await;
    // The stuck gauge counts once the confirm is older than `stuck_after`.
    let text = crate::helpers::eventually("a stuck reservation in the metrics", || async {
        let text = metrics(&app).await;
        (sample(&text, "tcc_reservations_stuck") >= 1.0).then_some(text)
    })
    .await;
    assert_eq!(sample(&text, "tcc_reservations_stuck"), 1.0, "{text}");
    assert!(sample(&text, r#"tcc_participant_retries_total{verb="confirm"}"#) >= 1.0);
    assert!(
        sample(
            &text,
            r#"tcc_participant_calls_total{verb="confirm",outcome="retry"}"#
        ) >= 2.0
    );
    assert_eq!(sample(&text, "tcc_deadlines_fired_total"), 1.0);
    assert_eq!(sample(&text, "tcc_deadline_lateness_seconds_count"), 1.0);
    app.stop().await;
}

#[tokio::test]
async fn metrics_need_no_token_unless_protected() {
    let open = spawn_app_with(|c| c.api_tokens = vec![ApiToken::new("secret-token-1")]).await;
    assert_eq!(open.get("/metrics").await.status(), 200);
    open.stop().await;
    let protected = spawn_app_with(|c| {
        c.api_tokens = vec![ApiToken::new("secret-token-1")];
        c.protect_metrics = true;
    })
    .await;
    assert_eq!(protected.get("/metrics").await.status(), 401);
    let with_token = protected
        .http
        .get(protected.url("/metrics"))
        .bearer_auth("secret-token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    protected.stop().await;
}

// ---- tracing ------------------------------------------------------------------------------

const CLIENT_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The trace ids of the `traceparent` headers a participant received, checking their form.
fn trace_ids(p: &Participant) -> Vec<String> {
    p.calls()
        .iter()
        .map(|call| {
            let header = call.headers["traceparent"].to_str().unwrap().to_owned();
            let parts: Vec<&str> = header.split('-').collect();
            assert_eq!(parts.len(), 4, "{header}");
            assert_eq!((parts[0], parts[2].len(), parts[3]), ("00", 16, parts[3]));
            assert_ne!(
                parts[2], "00f067aa0ba902b7",
                "each call is a span of its own"
            );
            parts[1].to_owned()
        })
        .collect()
}

/// Creates a reservation with `traceparent`, asserting the 202; its id.
async fn create_traced(app: &TestApp, traceparent: &str, body: &serde_json::Value) -> String {
    let created = app
        .http
        .post(app.url("/reservations"))
        .header("traceparent", traceparent)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202);
    created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_clients_trace_reaches_every_participant_call() {
    let app = spawn_app_with(|_| {}).await;
    let p = Participant::start().await;
    let id = create_traced(
        &app,
        CLIENT_TRACE,
        &json!({"participants": [p.try_("stock"), p.link(9)]}),
    )
    .await;
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    app.wait_for(&id, |s, _| s == 303).await;

    let ids = trace_ids(&p);
    assert_eq!(ids.len(), 3, "a try and two confirms");
    assert!(ids.iter().all(|t| t == "4bf92f3577b34da6a3ce929d0e0e4736"));
    app.stop().await;
}

#[tokio::test]
async fn without_a_client_trace_the_coordinator_starts_one_per_reservation() {
    let app = spawn_app_with(|_| {}).await;
    let p = Participant::start().await;
    let id = create_traced(
        &app,
        "not-a-traceparent",
        &json!({"timeout_ms": 100, "participants": [p.link(1), p.link(2)]}),
    )
    .await;
    app.wait_for(&id, |s, _| s == 410).await;
    let ids = trace_ids(&p);
    assert_eq!(ids.len(), 2, "two cancels");
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], "00000000000000000000000000000000");
    app.stop().await;
}

// ---- history ------------------------------------------------------------------------------

#[tokio::test]
async fn the_history_shows_state_changes_and_every_call_in_order() {
    let app = spawn_app_with(|_| {}).await;
    let p = Participant::start().await;
    p.script("try", [Reply::Status(503)]);
    let id = app
        .create(&json!({"participants": [p.try_("stock")]}))
        .await;
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    app.post(&format!("/reservations/{id}/cancel")).await;
    app.wait_for(&id, |s, _| s == 410).await;

    let response = app.get(&format!("/reservations/{id}/events")).await;
    assert_eq!(
        response.status(),
        200,
        "served for a cancelled reservation too"
    );
    let history: serde_json::Value = response.json().await.unwrap();
    let events = history["events"].as_array().unwrap();
    let summary: Vec<String> = events
        .iter()
        .map(|e| match e["kind"].as_str().unwrap() {
            "called" => format!(
                "{} {}",
                e["verb"].as_str().unwrap(),
                e["result"].as_str().unwrap()
            ),
            kind => format!("{kind} {}", e["state"].as_str().unwrap()),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "created trying",
            "try 503 Service Unavailable",
            "try reserved",
            "changed reserved",
            "changed cancelling",
            "cancel cancelled",
            "changed cancelled",
        ],
        "{history:#}"
    );
    let failed = &events[1];
    assert!(failed["retry_at"].is_string(), "{failed}");
    assert_eq!(failed["participant_name"], "stock");
    assert!(failed["took_ms"].as_u64().is_some());
    assert_eq!(events[4]["reason"], "client");
    assert_eq!(history["dropped"], 0);
    assert_eq!(
        app.get(&format!("/reservations/{}/events", uuid::Uuid::now_v7()))
            .await
            .status(),
        404,
        "an id never seen"
    );
    app.stop().await;
}

// ---- dashboard ----------------------------------------------------------------------------

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page_served_without_a_token() {
    let app = spawn_app_with(|c| c.api_tokens = vec![ApiToken::new("secret-token-1")]).await;
    let page = app.get("/ui").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    for reads in ["/reservations?", "participant_host", "/events", "/metrics"] {
        assert!(html.contains(reads), "{reads}");
    }
    // Nothing from elsewhere: it must work without internet.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "an external URL"
    );
    assert!(!html.contains("<script src") && !html.contains("<link"));
    app.stop().await;
}

// ---- traces in a collector ------------------------------------------------------------------

#[tokio::test]
async fn a_collector_receives_one_trace_with_the_create_tries_decision_and_every_call() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CONFIRMING_CLIENT: &str = "1111111111111111";
    let collector = Collector::start().await;
    let endpoint = collector.base.parse().unwrap();
    let app = spawn_app_with(|c| c.otlp_endpoint = Some(endpoint)).await;
    let p = Participant::start().await;
    let id = create_traced(
        &app,
        CLIENT_TRACE,
        &json!({"participants": [p.try_("stock"), p.try_("seat")]}),
    )
    .await;
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    let confirmed = app
        .http
        .post(app.url(&format!("/reservations/{id}/confirm")))
        .header("traceparent", format!("00-{TRACE}-{CONFIRMING_CLIENT}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 202);
    app.wait_for(&id, |s, _| s == 303).await;
    // Stopping sends what is still queued.
    app.stop().await;

    let spans = collector
        .received(8, "create, tries, 2 tries, decision, phase, 2 confirms")
        .await;
    assert!(
        spans.iter().all(|s| s.trace == TRACE),
        "one trace: {spans:#?}"
    );

    let create = one(&spans, "create");
    assert_eq!(create.parent, "00f067aa0ba902b7", "under the client's span");
    assert!(create
        .attribute("tcc.reservation.id")
        .unwrap()
        .contains(&id));
    let tries = one(&spans, "tries");
    assert_eq!(tries.parent, create.id);
    let decision = one(&spans, "decision");
    assert_eq!(
        decision.parent, CONFIRMING_CLIENT,
        "under the confirming request's span"
    );
    assert!(decision
        .attribute("tcc.decided_by")
        .unwrap()
        .contains("client"));
    let phase = one(&spans, "confirm phase");
    assert_eq!(phase.parent, decision.id);
    let calls = |name: &str, parent: &ExportedSpan| {
        let calls: Vec<&ExportedSpan> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(calls.len(), 2, "two `{name}` spans: {spans:#?}");
        for call in &calls {
            assert_eq!(call.parent, parent.id, "{name} under {}", parent.name);
            assert!(call.attribute("tcc.outcome").unwrap().contains("ok"));
        }
        calls.iter().map(|s| s.id.clone()).collect::<Vec<_>>()
    };
    let mut call_spans = calls("participant try", tries);
    call_spans.extend(calls("participant confirm", phase));

    // Each call carried its own span in `traceparent`: the participant's spans hang under it.
    let mut carried: Vec<String> = p
        .calls()
        .iter()
        .map(|call| {
            let header = call.headers["traceparent"].to_str().unwrap();
            header.split('-').nth(2).unwrap().to_owned()
        })
        .collect();
    carried.sort();
    call_spans.sort();
    assert_eq!(carried, call_spans);
}

#[tokio::test]
async fn a_collector_that_does_not_answer_holds_up_no_request() {
    let collector = Collector::start_held().await;
    let endpoint = collector.base.parse().unwrap();
    let app = spawn_app_with(|c| c.otlp_endpoint = Some(endpoint)).await;
    let p = Participant::start().await;
    // 110 reservations of 5 spans each (create, decision, confirm phase, two calls): more
    // than a batch (512), which the exporter sends at once, and the collector holds.
    let mut ids = Vec::new();
    for n in 0..110 {
        let id = app
            .create(&json!({"participants": [p.link(2 * n), p.link(2 * n + 1)]}))
            .await;
        assert_eq!(
            app.post(&format!("/reservations/{id}/confirm"))
                .await
                .status(),
            202
        );
        ids.push(id);
    }
    eventually("an export reaches the collector, which holds it", || {
        let requests = collector.requests();
        async move { (requests > 0).then_some(()) }
    })
    .await;

    // While the collector holds it, every reservation still completes, and a new one too.
    for id in &ids {
        app.wait_for(id, |s, _| s == 303).await;
    }
    let id = app
        .create(&json!({"participants": [p.try_("stock")]}))
        .await;
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    assert_eq!(
        app.post(&format!("/reservations/{id}/confirm"))
            .await
            .status(),
        202
    );
    app.wait_for(&id, |s, _| s == 303).await;
    assert!(
        collector.spans().is_empty(),
        "the collector has answered nothing yet"
    );

    collector.release();
    app.stop().await;
    // The queued spans, the last reservation's among them, go out at shutdown.
    eventually(
        "the last reservation's spans arrive once the collector answers",
        || {
            let spans = collector.spans();
            async move {
                spans
                    .iter()
                    .any(|s| s.name == "participant try")
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_deadline_decides_under_the_create_in_a_trace_the_coordinator_starts_and_samples() {
    let collector = Collector::start().await;
    let endpoint = collector.base.parse().unwrap();
    let app = spawn_app_with(|c| c.otlp_endpoint = Some(endpoint)).await;
    let p = Participant::start().await;
    let id = app
        .create(&json!({"timeout_ms": 100, "participants": [p.link(1), p.link(2)]}))
        .await;
    app.wait_for(&id, |s, _| s == 410).await;
    app.stop().await;

    let spans = collector
        .received(5, "create, decision, phase, 2 cancels")
        .await;
    let create = one(&spans, "create");
    assert_eq!(create.parent, "", "no client trace: the create is the root");
    assert!(spans.iter().all(|s| s.trace == create.trace));
    let decision = one(&spans, "decision");
    assert_eq!(decision.parent, create.id);
    assert!(decision
        .attribute("tcc.decided_by")
        .unwrap()
        .contains("coordinator"));
    assert!(decision
        .attribute("tcc.reason")
        .unwrap()
        .contains("expired"));
    let phase = one(&spans, "cancel phase");
    assert_eq!(phase.parent, decision.id);
    let cancels: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "participant cancel")
        .collect();
    assert_eq!(cancels.len(), 2);
    assert!(cancels.iter().all(|s| s.parent == phase.id));
    // The coordinator's own trace is sampled, so that participants record theirs too.
    for call in p.calls() {
        let header = call.headers["traceparent"].to_str().unwrap().to_owned();
        assert!(
            header.starts_with(&format!("00-{}-", create.trace)),
            "{header}"
        );
        assert!(header.ends_with("-01"), "{header}");
    }
}
