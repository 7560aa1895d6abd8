//! Reservations from creation to a terminal state, in every participant style.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};

use tcc_coordinator::{App, Config, Storage};

use crate::helpers::{expires_at, in_secs, is_settled, spawn_app, Behaviour, Participant, Reply};

/// The three ways a test gives participants.
#[derive(Clone, Copy, Debug)]
enum Style {
    Links,
    Tries,
    Mixed,
}

/// `n` participants (each its own server) and their entries in `style`.
async fn participants(n: u32, style: Style) -> (Vec<Participant>, Vec<Value>) {
    let mut servers = Vec::new();
    let mut entries = Vec::new();
    for i in 0..n {
        let p = Participant::start().await;
        let as_link = match style {
            Style::Links => true,
            Style::Tries => false,
            Style::Mixed => i % 2 == 0,
        };
        entries.push(if as_link {
            p.link(i + 1)
        } else {
            p.try_(&format!("svc-{i}"))
        });
        servers.push(p);
    }
    (servers, entries)
}

async fn confirm_ends_in_a_transaction_with_one_put_each(n: u32, style: Style) {
    // Arrange
    let app = spawn_app().await;
    let (servers, entries) = participants(n, style).await;
    let id = app
        .create(
            &json!({"timeout_ms": 30_000, "participants": entries, "metadata": {"order": "A-17"}}),
        )
        .await;
    let (status, reserved) = app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    assert_eq!(status, 200);
    assert_eq!(
        reserved["_links"]["confirm"]["href"],
        format!("/reservations/{id}/confirm")
    );
    assert_eq!(
        reserved["_links"]["cancel"]["href"],
        format!("/reservations/{id}/cancel")
    );
    assert!(reserved["participants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["state"] == "reserved" && p["uri"].is_string()));

    // Act
    let confirm = app.post(&format!("/reservations/{id}/confirm")).await;
    assert!(
        [202, 303].contains(&confirm.status().as_u16()),
        "{}",
        confirm.status()
    );
    let (status, _) = app.wait_for(&id, |s, _| s == 303).await;

    // Assert
    assert_eq!(status, 303);
    let see_other = app.get(&format!("/reservations/{id}")).await;
    assert_eq!(
        see_other.headers()["location"],
        format!("/transactions/{id}").as_str()
    );
    let tx: Value = app
        .get(&format!("/transactions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tx["state"], "confirmed");
    assert_eq!(tx["metadata"]["order"], "A-17");
    assert_eq!(tx["participants"].as_array().unwrap().len(), n as usize);
    for p in &servers {
        assert_eq!(p.count("PUT"), 1, "{style:?}: {:?}", p.summary());
        assert_eq!(p.count("DELETE"), 0, "{style:?}: {:?}", p.summary());
    }
    // Repeating the confirm changes nothing and calls nobody.
    let again = app.post(&format!("/reservations/{id}/confirm")).await;
    assert_eq!(again.status(), 303);
    assert!(servers.iter().all(|p| p.count("PUT") == 1));
    app.stop().await;
}

#[tokio::test]
async fn two_links_confirm_into_a_transaction() {
    confirm_ends_in_a_transaction_with_one_put_each(2, Style::Links).await;
}

#[tokio::test]
async fn five_links_confirm_into_a_transaction() {
    confirm_ends_in_a_transaction_with_one_put_each(5, Style::Links).await;
}

#[tokio::test]
async fn two_coordinator_tries_confirm_into_a_transaction() {
    confirm_ends_in_a_transaction_with_one_put_each(2, Style::Tries).await;
}

#[tokio::test]
async fn five_coordinator_tries_confirm_into_a_transaction() {
    confirm_ends_in_a_transaction_with_one_put_each(5, Style::Tries).await;
}

#[tokio::test]
async fn two_mixed_participants_confirm_into_a_transaction() {
    confirm_ends_in_a_transaction_with_one_put_each(2, Style::Mixed).await;
}

#[tokio::test]
async fn five_mixed_participants_confirm_into_a_transaction() {
    confirm_ends_in_a_transaction_with_one_put_each(5, Style::Mixed).await;
}

#[tokio::test]
async fn a_try_carries_the_idempotency_key_the_reservation_url_and_its_deadline_and_hides_its_headers(
) {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app
        .create(&json!({"participants": [p.try_("stock")]}))
        .await;
    let (_, body) = app.wait_for(&id, |_, b| b["state"] == "reserved").await;

    let tries = p.calls();
    assert_eq!(tries.len(), 1);
    let call = &tries[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.headers["idempotency-key"], format!("{id}/0").as_str());
    assert_eq!(
        call.headers["tcc-reservation"],
        app.url(&format!("/reservations/{id}")).as_str()
    );
    let deadline: DateTime<Utc> = call.headers["tcc-deadline"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let behind = expires_at(&body) - deadline;
    assert!(
        behind >= TimeDelta::zero() && behind < TimeDelta::milliseconds(1),
        "TCC-Deadline {deadline} is the reservation's expires_at {} to the millisecond",
        expires_at(&body)
    );
    assert_eq!(call.headers["authorization"], "Bearer secret");
    assert_eq!(
        serde_json::from_slice::<Value>(&call.body).unwrap(),
        json!({"sku": "stock"})
    );
    assert!(!body.to_string().contains("Bearer secret"), "{body}");
    assert_eq!(body["participants"][0]["uri"], p.hold_uri(1));
    app.stop().await;
}

#[tokio::test]
async fn a_confirm_puts_application_tcc_json_with_an_empty_body() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app.create(&json!({"participants": [p.link(1)]})).await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    app.wait_for(&id, |s, _| s == 303).await;

    let put = p.calls().into_iter().find(|c| c.method == "PUT").unwrap();
    assert_eq!(put.path, "/holds/1");
    assert_eq!(put.headers["content-type"], "application/tcc+json");
    assert_eq!(put.headers["accept"], "application/tcc+json");
    assert!(put.body.is_empty());
    app.stop().await;
}

async fn cancel_releases_every_participant(verb: &str) {
    // Arrange
    let app = spawn_app().await;
    let (servers, entries) = participants(3, Style::Mixed).await;
    let id = app.create(&json!({"participants": entries})).await;
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;

    // Act
    let response = match verb {
        "DELETE" => app.delete(&format!("/reservations/{id}")).await,
        _ => app.post(&format!("/reservations/{id}/cancel")).await,
    };

    // Assert
    assert_eq!(response.status(), 202);
    let (status, gone) = app.wait_for(&id, |s, _| s == 410).await;
    assert_eq!(status, 410);
    assert_eq!(gone["state"], "cancelled");
    assert_eq!(gone["reason"], "client");
    assert_eq!(gone["status"], 410);
    for p in &servers {
        assert_eq!(p.count("DELETE"), 1, "{:?}", p.summary());
        assert_eq!(p.count("PUT"), 0, "{:?}", p.summary());
    }
    let again = app.post(&format!("/reservations/{id}/cancel")).await;
    assert_eq!(again.status(), 410);
    let confirm = app.post(&format!("/reservations/{id}/confirm")).await;
    assert_eq!(confirm.status(), 410);
    assert!(servers
        .iter()
        .all(|p| p.count("DELETE") == 1 && p.count("PUT") == 0));
    app.stop().await;
}

#[tokio::test]
async fn cancel_by_post_releases_every_participant_and_answers_410() {
    cancel_releases_every_participant("POST").await;
}

#[tokio::test]
async fn cancel_by_delete_releases_every_participant_and_answers_410() {
    cancel_releases_every_participant("DELETE").await;
}

#[tokio::test]
async fn a_timeout_cancels_every_participant_with_reason_expired() {
    // Arrange
    let app = spawn_app().await;
    let (servers, entries) = participants(2, Style::Mixed).await;

    // Act
    let id = app
        .create(&json!({"timeout_ms": 600, "participants": entries}))
        .await;

    // Assert
    let (_, gone) = app.wait_for(&id, |s, _| s == 410).await;
    assert_eq!(gone["reason"], "expired");
    for p in &servers {
        p.wait_until("one DELETE", |p| p.count("DELETE") == 1).await;
        assert_eq!(p.count("PUT"), 0);
    }
    app.stop().await;
}

#[tokio::test]
async fn confirm_after_the_deadline_answers_410_and_calls_no_participant() {
    // Arrange: a reservation whose deadline passes before anyone confirms.
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app
        .create(&json!({"timeout_ms": 300, "participants": [p.link(1)]}))
        .await;
    let body = app.get_json(&format!("/reservations/{id}")).await;
    crate::helpers::wait_past(crate::helpers::expires_at(&body)).await;

    // Act
    let confirm = app.post(&format!("/reservations/{id}/confirm")).await;

    // Assert
    assert_eq!(confirm.status(), 410);
    assert_eq!(
        confirm.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = confirm.json().await.unwrap();
    assert_eq!(body["reason"], "expired");
    app.wait_for(&id, |s, _| s == 410).await;
    assert_eq!(p.count("PUT"), 0, "{:?}", p.summary());
    assert_eq!(p.count("DELETE"), 1, "{:?}", p.summary());
    app.stop().await;
}

#[tokio::test]
async fn a_try_answering_4xx_cancels_everything_tried_so_far_with_reason_try_failed() {
    // Arrange
    let app = spawn_app().await;
    let linked = Participant::start().await;
    let tried = Participant::start().await;
    let refusing = Participant::start_with(Behaviour {
        try_reply: Reply::Status(409),
        ..Behaviour::default()
    })
    .await;

    // Act
    let id = app
        .create(&json!({"participants": [linked.link(1), tried.try_("ok"), refusing.try_("no")]}))
        .await;

    // Assert
    let (_, gone) = app.wait_for(&id, |s, _| s == 410).await;
    assert_eq!(gone["reason"], "try_failed");
    let states: Vec<_> = gone["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["cancelled", "cancelled", "try_failed"]);
    assert_eq!(linked.paths("DELETE"), ["/holds/1"]);
    assert_eq!(tried.paths("DELETE"), ["/holds/1"]);
    assert_eq!(refusing.count("DELETE"), 0);
    assert!([&linked, &tried, &refusing]
        .iter()
        .all(|p| p.count("PUT") == 0));
    app.stop().await;
}

#[tokio::test]
async fn a_participant_joined_to_a_reserved_reservation_is_confirmed_with_the_others() {
    // Arrange
    let app = spawn_app().await;
    let first = Participant::start().await;
    let joined_link = Participant::start().await;
    let joined_try = Participant::start().await;
    let id = app.create(&json!({"participants": [first.link(1)]})).await;

    // Act
    let join = app
        .post_json(
            &format!("/reservations/{id}/participants"),
            &joined_link.link(7),
        )
        .await;
    assert_eq!(join.status(), 202);
    let join = app
        .post_json(
            &format!("/reservations/{id}/participants"),
            &joined_try.try_("late"),
        )
        .await;
    assert_eq!(join.status(), 202);
    app.wait_for(&id, |_, b| {
        b["state"] == "reserved" && b["participants"].as_array().unwrap().len() == 3
    })
    .await;
    app.post(&format!("/reservations/{id}/confirm")).await;

    // Assert
    app.wait_for(&id, |s, _| s == 303).await;
    assert_eq!(first.paths("PUT"), ["/holds/1"]);
    assert_eq!(joined_link.paths("PUT"), ["/holds/7"]);
    assert_eq!(joined_try.paths("PUT"), ["/holds/1"]);
    app.stop().await;
}

#[tokio::test]
async fn a_join_with_an_early_expiry_moves_the_deadline_earlier_never_later() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app
        .create(&json!({"timeout_ms": 60_000, "participants": []}))
        .await;
    let (_, before) = app.wait_for(&id, |_, _| true).await;

    app.post_json(
        &format!("/reservations/{id}/participants"),
        &p.link_expiring(1, &in_secs(3600)),
    )
    .await;
    let (_, unchanged) = app.wait_for(&id, |_, _| true).await;
    assert_eq!(unchanged["expires_at"], before["expires_at"]);

    app.post_json(
        &format!("/reservations/{id}/participants"),
        &p.link_expiring(2, &in_secs(20)),
    )
    .await;
    let (_, earlier) = app.wait_for(&id, |_, _| true).await;
    assert!(crate::helpers::expires_at(&earlier) < crate::helpers::expires_at(&before));
    app.stop().await;
}

#[tokio::test]
async fn a_reservation_in_progress_answers_with_retry_after_and_an_eta() {
    let app = spawn_app().await;
    let slow = Participant::start_with(Behaviour {
        try_reply: Reply::Slow(std::time::Duration::from_millis(800)),
        ..Behaviour::default()
    })
    .await;
    let id = app
        .create(&json!({"participants": [slow.try_("slow")]}))
        .await;

    let response = app.get(&format!("/reservations/{id}")).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "trying");
    assert!(body["eta"].is_string(), "{body}");
    assert!(
        body["activity"]
            .as_str()
            .unwrap()
            .starts_with("trying: 0 of 1"),
        "{body}"
    );
    assert!(
        body["_links"]["confirm"].is_null(),
        "no confirm while trying: {body}"
    );
    assert!(body["_links"]["cancel"].is_object(), "{body}");
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    app.stop().await;
}

#[tokio::test]
async fn listing_shows_reservations_newest_first_filtered_by_state() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let first = app.create(&json!({"participants": [p.link(1)]})).await;
    let second = app.create(&json!({"participants": [p.link(2)]})).await;
    let third = app.create(&json!({"participants": [p.link(3)]})).await;
    app.post(&format!("/reservations/{second}/cancel")).await;
    app.wait_for(&second, |s, _| s == 410).await;

    let page: Value = app.get("/reservations?limit=2").await.json().await.unwrap();
    let ids: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, [json!(third), json!(second)]);
    let next: Value = app
        .get(page["next"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["items"][0]["id"], json!(first));
    assert!(next["next"].is_null());

    let reserved: Value = app
        .get("/reservations?state=reserved")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = reserved["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, [json!(third), json!(first)]);
    app.stop().await;
}

#[tokio::test]
async fn listing_finds_reservations_by_participant_host_and_text_and_next_keeps_the_filters() {
    let app = spawn_app().await;
    let stock = Participant::start().await;
    let pay = Participant::start().await;
    let order = |participants: Value, order: &str| json!({"participants": participants, "metadata": {"order": order}});
    let a = app.create(&order(json!([stock.link(1)]), "A-17")).await;
    let b = app.create(&order(json!([pay.link(2)]), "B-99")).await;
    let c = app
        .create(&order(json!([stock.link(3), pay.link(4)]), "a-18"))
        .await;
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let stock_host = stock.base.trim_start_matches("http://");
    let first = app
        .get_json(&format!(
            "/reservations?participant_host={stock_host}&limit=1"
        ))
        .await;
    assert_eq!(ids(&first), std::slice::from_ref(&c));
    let next = first["next"].as_str().unwrap();
    assert!(next.contains("participant_host="), "{next}");
    let second = app.get_json(next).await;
    assert_eq!(ids(&second), std::slice::from_ref(&a));
    assert!(second["next"].is_null());

    // Metadata values, case-insensitively; and an id.
    let orders = app.get_json("/reservations?q=a-1").await;
    assert_eq!(ids(&orders), [c, a]);
    let by_id = app.get_json(&format!("/reservations?q={b}")).await;
    assert_eq!(ids(&by_id), [b]);

    let empty = app.get("/reservations?q=").await;
    assert_eq!(empty.status(), 400);
    assert!(empty.text().await.unwrap().contains("q"));
    app.stop().await;
}

#[tokio::test]
async fn health_says_live_and_ready_once_recovery_is_done() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health/live").await.status(), 200);
    let start = std::time::Instant::now();
    while app.get("/health/ready").await.status() != 200 {
        assert!(start.elapsed() < crate::helpers::PATIENCE);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_coordinator_has_released_its_log_when_its_run_returns() {
    // Arrange: a log with writes in it.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let on_data = |config: &mut Config| config.storage = Storage::Dir(data.clone());
    let p = Participant::start().await;

    // Act + Assert: each run stops, and the next opens the same directory at once (sled
    // holds a lock on its files until its last handle is dropped: a CI run once found it
    // still held).
    for n in 0..20u32 {
        let app = crate::helpers::spawn_app_with(on_data).await;
        app.create(&json!({"participants": [p.link(n)]})).await;
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_answers_its_first_create_with_202_however_soon_after_it_reports_its_address()
{
    // Arrange: a log of 3,000 unfinished reservations, which takes a while to read back.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let on_data = |config: &mut Config| config.storage = Storage::Dir(data.clone());
    let first = crate::helpers::spawn_app_with(on_data).await;
    let p = Participant::start().await;
    for chunk in (0..3000u32).collect::<Vec<_>>().chunks(50) {
        let bodies: Vec<Value> = chunk
            .iter()
            .map(|n| json!({"participants": [p.link(*n)]}))
            .collect();
        futures_util::future::join_all(bodies.iter().map(|body| first.create(body))).await;
    }
    first.stop().await;

    // Act: a coordinator on it, and a create the moment it reports its address.
    let mut config = Config::ephemeral();
    on_data(&mut config);
    let app = App::build(config).await.unwrap();
    let base = app.base_url().to_owned();
    let stop = app.stop_handle();
    let server = tokio::spawn(app.run_until_stopped());
    let answer = crate::helpers::client()
        .post(format!("{base}/reservations"))
        .json(&json!({"participants": [p.link(4000)]}))
        .send()
        .await
        .unwrap();

    // Assert: taken, once the log was read back.
    let status = answer.status();
    assert_eq!(status, 202, "{:?}", answer.text().await);
    stop.stop();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn zero_participants_is_allowed_and_confirms_at_once() {
    let app = spawn_app().await;
    let id = app.create(&json!({})).await;
    let confirm = app.post(&format!("/reservations/{id}/confirm")).await;
    assert!([202, 303].contains(&confirm.status().as_u16()));
    let (status, _) = app.wait_for(&id, is_settled).await;
    assert_eq!(status, 303);
    app.stop().await;
}

#[tokio::test]
async fn in_a_storm_of_deadlines_no_confirm_is_accepted_after_its_deadline() {
    // Arrange: 200 reservations whose deadlines fall close together, and a confirm for each
    // sent between half a second before and 300 ms after its own deadline.
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut created = Vec::new();
    for n in 0..200 {
        let id = app
            .create(&json!({"timeout_ms": 1000, "participants": [p.link(n)]}))
            .await;
        let body = app.get_json(&format!("/reservations/{id}")).await;
        created.push((id, expires_at(&body)));
    }

    // Act
    let confirms = created.iter().enumerate().map(|(n, (id, deadline))| {
        let app = &app;
        let offset = i64::try_from(n % 40).unwrap() * 20 - 500;
        let at = *deadline + TimeDelta::milliseconds(offset);
        async move {
            tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await;
            app.post(&format!("/reservations/{id}/confirm"))
                .await
                .status()
                .as_u16()
        }
    });
    let answers = futures_util::future::join_all(confirms).await;

    // Assert: an accepted confirm was decided by its deadline and ends confirmed; a refused
    // one ends cancelled because it expired.
    let (mut accepted, mut refused) = (0, 0);
    for ((id, deadline), answer) in created.iter().zip(answers) {
        let (status, body) = app.wait_for(id, is_settled).await;
        match answer {
            202 => {
                accepted += 1;
                assert_eq!(status, 303, "{id}: accepted, then {status} {body}");
                let transaction = app.get_json(&format!("/transactions/{id}")).await;
                let decided: DateTime<Utc> =
                    transaction["decided_at"].as_str().unwrap().parse().unwrap();
                assert!(
                    decided <= *deadline,
                    "{id}: decided {decided}, deadline {deadline}"
                );
            }
            410 => {
                refused += 1;
                assert_eq!(status, 410, "{id}: {body}");
                assert_eq!(body["reason"], "expired", "{id}: {body}");
            }
            other => panic!("{id}: confirm answered {other}"),
        }
    }
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    assert_eq!(p.count("PUT"), accepted, "{:?}", p.summary());
    assert_eq!(p.count("DELETE"), refused, "{:?}", p.summary());
    app.stop().await;
}
