"""A choreography (order, payment, stock) through the real coordinator, driven from Python
with a client generated from openapi/coordinator.yaml, the participants being scripted
tcc-fake-participant processes."""

from tcc_coordinator_client.api.reservations import (
    get_reservations_id,
    get_reservations_id_events,
    post_reservations,
    post_reservations_id_confirm,
)
from tcc_coordinator_client.models import (
    NewParticipantWithTry,
    NewReservation,
    NewReservationMetadata,
    ParticipantState,
    State,
    TryRequest,
)

from conftest import wait_for


def create(client, shop, order="A-17"):
    bodies = {
        "order": {"order": order, "total_cents": 1200},
        "payment": {"account": "alice", "amount_cents": 1200},
        "stock": {"sku": "apple", "quantity": 2},
    }
    metadata = NewReservationMetadata()
    metadata["order"] = order
    body = NewReservation(
        timeout_ms=30_000,
        participants=[
            NewParticipantWithTry(name=name, try_=TryRequest(url=fake.try_url, body=bodies[name]))
            for name, fake in shop.items()
        ],
        metadata=metadata,
    )
    response = post_reservations.sync_detailed(client=client, body=body)
    assert response.status_code == 202, response.content
    return response.parsed.id


def reservation(client, id):
    """The reservation's status code and, while it is open, its body."""
    response = get_reservations_id.sync_detailed(id, client=client)
    return response.status_code, response.parsed


def settles(client, id):
    """Waits for 303 (confirmed) or 410 (cancelled)."""
    return wait_for(
        f"reservation {id} settles",
        lambda: (lambda s: s if s in (303, 410) else None)(reservation(client, id)[0]),
    )


def reserved(client, id):
    wait_for(
        f"reservation {id} is reserved",
        lambda: reservation(client, id)[0] == 200 and reservation(client, id)[1].state == State.RESERVED,
    )


def events(client, id):
    return get_reservations_id_events.sync(id, client=client).events


def test_an_order_its_payment_and_its_stock_confirm_together(coordinator, shop):
    id = create(coordinator, shop)
    reserved(coordinator, id)
    confirm = post_reservations_id_confirm.sync_detailed(id, client=coordinator)

    assert confirm.status_code == 202
    assert settles(coordinator, id) == 303
    for index, (name, fake) in enumerate(shop.items()):
        tries, confirms = fake.calls("try"), fake.calls("confirm")
        assert [c["status"] for c in tries] == [201], name
        assert tries[0]["idempotency_key"] == f"{id}/{index}"
        assert tries[0]["reservation"].endswith(f"/reservations/{id}")
        assert tries[0]["deadline"], "every try carries TCC-Deadline"
        assert [c["status"] for c in confirms] == [204], name
        assert fake.calls("cancel") == []
        assert [h["state"] for h in fake.holds()] == ["confirmed"]
    confirmed = [(e.participant_name, e.result) for e in events(coordinator, id) if e.verb == "confirm"]
    assert sorted(confirmed) == [("order", "confirmed"), ("payment", "confirmed"), ("stock", "confirmed")]


def test_a_declined_payment_cancels_every_hold(coordinator, shop):
    shop["payment"].script("try", {"status": 409})

    id = create(coordinator, shop)

    assert settles(coordinator, id) == 410
    assert [c["status"] for c in shop["payment"].calls("try")] == [409]
    assert shop["payment"].holds() == []
    for name in ("order", "stock"):
        wait_for(f"{name} is cancelled", lambda: [h["state"] for h in shop[name].holds()] == ["cancelled"])
        assert [c["status"] for c in shop[name].calls("cancel")] == [204]
        assert shop[name].calls("confirm") == []
    tried = [e for e in events(coordinator, id) if e.verb == "try" and e.participant_name == "payment"]
    assert tried and "409" in tried[-1].result


def test_a_stock_confirm_answering_503_twice_is_retried_until_it_confirms(coordinator, shop):
    shop["stock"].script("confirm", {"status": 503}, {"status": 503})
    id = create(coordinator, shop)
    reserved(coordinator, id)

    post_reservations_id_confirm.sync_detailed(id, client=coordinator)

    assert settles(coordinator, id) == 303
    assert [(c["status"], c["scripted"]) for c in shop["stock"].calls("confirm")] == [
        (503, True),
        (503, True),
        (204, False),
    ]
    results = [e.result for e in events(coordinator, id) if e.verb == "confirm" and e.participant_name == "stock"]
    assert len(results) == 3 and results[-1] == "confirmed", results


def test_a_try_whose_answer_is_lost_is_repeated_and_holds_once(coordinator, shop):
    shop["stock"].script("try", {"status": 503, "apply": True})

    id = create(coordinator, shop)
    reserved(coordinator, id)

    tries = shop["stock"].calls("try")
    assert [c["status"] for c in tries] == [503, 200]
    assert tries[0]["idempotency_key"] == tries[1]["idempotency_key"]
    assert len(shop["stock"].holds()) == 1
    _, body = reservation(coordinator, id)
    stock = next(p for p in body.participants if p.name == "stock")
    assert stock.state == ParticipantState.RESERVED
