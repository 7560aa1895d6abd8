//! The kit's and the fake participant's OpenAPI documents against the contract
//! (`openapi/participant.yaml`) and the committed `openapi/fake-participant.yaml`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tcc_participant::fake::FakeParticipant;
use tcc_participant::Participant;

use super::Shelf;

const CONTRACT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/participant.yaml");
const FAKE_SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/fake-participant.yaml");

/// One operation, as far as a participant and a coordinator must agree on it.
#[derive(Debug)]
struct Operation {
    method: String,
    headers: BTreeSet<String>,
    required_headers: BTreeSet<String>,
    statuses: BTreeSet<String>,
}

fn operations(doc: &Value) -> BTreeMap<String, Operation> {
    let mut found = BTreeMap::new();
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(id) = op["operationId"].as_str() else {
                continue;
            };
            let mut headers = BTreeSet::new();
            let mut required_headers = BTreeSet::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "header" {
                    let name = p["name"].as_str().unwrap().to_ascii_lowercase();
                    if p["required"] == true {
                        required_headers.insert(name.clone());
                    }
                    headers.insert(name);
                }
            }
            let statuses = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            found.insert(
                id.to_owned(),
                Operation {
                    method: method.clone(),
                    headers,
                    required_headers,
                    statuses,
                },
            );
        }
    }
    found
}

/// Whether the contract allows `status` among its `allowed` ones (exact, or a `4XX` range).
fn covers(allowed: &BTreeSet<String>, status: &str) -> bool {
    allowed.contains(status) || allowed.contains(&format!("{}XX", &status[..1]))
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

#[tokio::test]
async fn kit_operations_match_the_participant_contract() {
    let contract = yaml(&std::fs::read_to_string(CONTRACT).unwrap());
    let kit = yaml(
        &Participant::builder(Shelf::default())
            .start()
            .unwrap()
            .spec_yaml(),
    );
    let (contract_ops, kit_ops) = (operations(&contract), operations(&kit));

    for id in ["try", "confirm", "cancel"] {
        let promised = &contract_ops[id];
        let served = kit_ops
            .get(id)
            .unwrap_or_else(|| panic!("the kit has no `{id}` operation"));
        assert_eq!(served.method, promised.method, "`{id}`'s method");
        assert_eq!(
            served.headers, promised.headers,
            "`{id}` reads the headers the coordinator sends"
        );
        assert!(
            served
                .required_headers
                .is_subset(&promised.required_headers),
            "`{id}` requires {:?}, the coordinator promises {:?}",
            served.required_headers,
            promised.required_headers
        );
        for status in &served.statuses {
            assert!(
                covers(&promised.statuses, status),
                "`{id}` answers {status}, which the contract does not allow ({:?})",
                promised.statuses
            );
        }
    }
    let link = |doc: &Value| -> BTreeSet<String> {
        doc["components"]["schemas"]["ParticipantLink"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(link(&kit), link(&contract), "the link a try answers with");
}

#[tokio::test]
async fn openapi_fake_participant_yaml_matches_the_code() {
    let fake = FakeParticipant::start().await.unwrap();
    let generated = fake.spec_yaml();
    fake.stop().await.unwrap();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(FAKE_SPEC, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(FAKE_SPEC).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/fake-participant.yaml is out of date with the code; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test --test api openapi` and commit the result"
    );
}
