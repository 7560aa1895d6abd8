//! The OpenAPI document as served: what poem-openapi derives, refined where its derive
//! macros cannot say what the API does.
//!
//! - Request bodies reject unknown fields (a typo such as `timeout` for `timeout_ms` is an
//!   error, not a silent default): `additionalProperties: false`.
//! - A participant has exactly one of `link` or `try` (`null` counting as absent): `oneOf`
//!   of two titled object schemas.
//! - A described field of a named type is `allOf: [{$ref}]` with its description beside, not
//!   inside: client generators such as openapi-python-client take it.
//! - The configured limits: `timeout_ms` and the number of participants.
//! - Participant URLs are absolute http(s) URLs; `after` is a reservation id.
//! - Bearer tokens: an optional `bearer` security scheme and a `401` on every operation but
//!   the health probes.

use serde_json::{json, Value};

/// The limits the document states, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SpecLimits {
    pub max_timeout_ms: u64,
    pub max_participants: usize,
}

impl Default for SpecLimits {
    /// The command line's defaults: what `openapi/coordinator.yaml` states.
    fn default() -> Self {
        let limits = crate::Config::default().limits;
        Self {
            max_timeout_ms: u64::try_from(limits.max_timeout.as_millis()).unwrap_or(u64::MAX),
            max_participants: limits.max_participants,
        }
    }
}

/// Request bodies parsed with `deny_unknown_fields`.
const CLOSED_SCHEMAS: [&str; 6] = [
    "NewReservation",
    "NewParticipant",
    "ParticipantLink",
    "TryRequest",
    "ParticipantLinks",
    "AtomikosLink",
];

/// What an absolute http(s) URL looks like, for generators and validators.
const HTTP_URL: &str = "^[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9._~-]+|\\[[0-9A-Fa-f:.]+\\])\
     (:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?\
     ([/?#][!-~]*)?$";

/// 1 to 255 visible ASCII characters.
const IDEMPOTENCY_KEY: &str = "^[!-~]{1,255}$";

/// What a reservation id looks like.
const UUID: &str = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";

/// The refined document for `spec` (poem-openapi's JSON).
#[must_use]
pub fn refine(spec: &str, limits: SpecLimits) -> Value {
    let mut doc: Value = serde_json::from_str(spec).expect("poem-openapi writes valid JSON");
    let schemas = &mut doc["components"]["schemas"];
    for schema in schemas
        .as_object_mut()
        .into_iter()
        .flat_map(|s| s.values_mut())
    {
        mark_nullable(schema);
    }
    for name in CLOSED_SCHEMAS {
        schemas[name]["additionalProperties"] = json!(false);
    }
    // `null` counts as absent, so "present" means "present and an object". Each branch is a
    // whole object schema with a title, so that client generators make one type of each.
    let given = |field: &str, schema: &str| json!({"required": [field], "properties": {field: {"$ref": format!("#/components/schemas/{schema}")}}});
    let name = schemas["NewParticipant"]["properties"]["name"].clone();
    let with = |field: &str, schema: &str, title: &str, other: &str, other_schema: &str| {
        let mut branch = given(field, schema);
        branch["type"] = json!("object");
        branch["title"] = json!(title);
        branch["properties"]["name"] = name.clone();
        branch["not"] = given(other, other_schema);
        branch
    };
    schemas["NewParticipant"]["oneOf"] = json!([
        with(
            "link",
            "ParticipantLink",
            "NewParticipantWithLink",
            "try",
            "TryRequest"
        ),
        with(
            "try",
            "TryRequest",
            "NewParticipantWithTry",
            "link",
            "ParticipantLink"
        ),
    ]);
    let create = &mut schemas["NewReservation"]["properties"];
    create["timeout_ms"]["minimum"] = json!(1);
    create["timeout_ms"]["maximum"] = json!(limits.max_timeout_ms);
    create["participants"]["maxItems"] = json!(limits.max_participants);
    schemas["ParticipantLinks"]["properties"]["participantLinks"]["maxItems"] =
        json!(limits.max_participants);
    for (schema, field) in [
        ("ParticipantLink", "uri"),
        ("TryRequest", "url"),
        ("AtomikosLink", "uri"),
        ("NewReservation", "callback"),
    ] {
        schemas[schema]["properties"][field]["pattern"] = json!(HTTP_URL);
    }

    schemas["Problem"]["properties"]["required_role"] = json!({
        "type": "string",
        "enum": ["client", "operator"],
        "description": "With `forbidden` (403): the role the request needs."
    });
    describe_refs_beside(&mut doc);
    doc["components"]["securitySchemes"] = json!({"bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the coordinator's tokens (`--api-token`, `--api-tokens-file`). \
                        Needed only when the coordinator runs with tokens; each operation's \
                        `x-required-role` names the role its token needs (viewer, client, \
                        operator)."
    }});
    let unauthorized = json!({
        "description": "Tokens are configured and the request carries none of them.",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(operations) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in operations.iter_mut() {
                if path.starts_with("/health/") {
                    operation["security"] = json!([]);
                    continue;
                }
                // Either no token (a coordinator without tokens) or a bearer token.
                operation["security"] = json!([{}, {"bearer": []}]);
                operation["responses"]["401"] = unauthorized.clone();
                let method = method
                    .to_uppercase()
                    .parse::<poem::http::Method>()
                    .unwrap_or_default();
                let role = super::access::required_role(&method, path);
                operation["x-required-role"] = json!(role.as_str());
                if role > super::access::Role::Viewer {
                    operation["responses"]["403"] = json!({
                        "description": format!(
                            "The token's role is short of `{}`, the role this operation needs \
                             (named in `required_role`).",
                            role.as_str()
                        ),
                        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
                    });
                }
                let parameters = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut);
                for parameter in parameters.into_iter().flatten() {
                    if parameter["name"] == "after" || parameter["in"] == "path" {
                        parameter["schema"]["pattern"] = json!(UUID);
                    }
                    if parameter["name"] == "Idempotency-Key" {
                        parameter["schema"]["pattern"] = json!(IDEMPOTENCY_KEY);
                    }
                }
            }
        }
    }
    doc
}

/// poem-openapi describes a field of a named type as `allOf: [{$ref}, {description}]`; some
/// client generators (openapi-python-client) cannot take an `allOf` of an enum with another
/// schema. The description moves beside the `allOf`, which says the same in OpenAPI 3.0.
fn describe_refs_beside(value: &mut Value) {
    match value {
        Value::Object(object) => {
            let described = match object.get("allOf").and_then(Value::as_array) {
                Some(parts) if parts.len() == 2 && parts[0].get("$ref").is_some() => parts[1]
                    .as_object()
                    .filter(|second| second.len() == 1)
                    .and_then(|second| second.get("description"))
                    .cloned()
                    .map(|description| (parts[0].clone(), description)),
                _ => None,
            };
            if let Some((reference, description)) = described {
                object.insert("allOf".into(), json!([reference]));
                object.entry("description").or_insert(description);
            }
            object.values_mut().for_each(describe_refs_beside);
        }
        Value::Array(items) => items.iter_mut().for_each(describe_refs_beside),
        _ => {}
    }
}

/// An `Option` field is written as `null` when absent (and accepts `null` in requests):
/// every property that is neither required nor defaulted is nullable. A `$ref` cannot carry
/// `nullable` beside it in OpenAPI 3.0, so it is wrapped in `allOf`.
fn mark_nullable(schema: &mut Value) {
    let required: Vec<String> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, property) in properties.iter_mut() {
        if required.contains(name) || property.get("default").is_some() {
            continue;
        }
        if let Some(reference) = property.get("$ref").cloned() {
            let mut wrapped = json!({"allOf": [{"$ref": reference}], "nullable": true});
            if let Some(description) = property.get("description") {
                wrapped["description"] = description.clone();
            }
            *property = wrapped;
        } else {
            property["nullable"] = json!(true);
        }
    }
}

/// The methods each path of the document accepts, for the `Allow` header of a 405.
#[derive(Debug, Clone, Default)]
pub struct AllowedMethods(std::sync::Arc<Vec<(Vec<Option<String>>, String)>>);

impl AllowedMethods {
    /// Reads the paths of `doc`; `{name}` segments match any segment.
    #[must_use]
    pub fn of(doc: &Value) -> Self {
        let mut routes = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            let segments = path
                .split('/')
                .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
                .collect();
            let mut methods: Vec<String> = item
                .as_object()
                .into_iter()
                .flatten()
                .map(|(m, _)| m.to_ascii_uppercase())
                .collect();
            if methods.iter().any(|m| m == "GET") {
                methods.push("HEAD".into());
            }
            routes.push((segments, methods.join(", ")));
        }
        Self(std::sync::Arc::new(routes))
    }

    /// The `Allow` value for `path`, when the document knows the path.
    #[must_use]
    pub fn for_path(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.0
            .iter()
            .find(|(pattern, _)| {
                pattern.len() == segments.len()
                    && pattern
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| p.as_deref().is_none_or(|p| p == *s))
            })
            .map(|(_, methods)| methods.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refined_schema_exists() {
        let doc = refine(&super::super::service().spec(), SpecLimits::default());
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in CLOSED_SCHEMAS {
            assert!(
                schemas[name]["properties"].is_object(),
                "{name} is not a schema with properties"
            );
        }
        assert_eq!(
            schemas["NewReservation"]["properties"]["timeout_ms"]["maximum"],
            3_600_000
        );
        let reservation = &schemas["Reservation"]["properties"];
        assert_eq!(reservation["decided_at"]["nullable"], true);
        assert_eq!(reservation["reason"]["nullable"], true);
        assert_eq!(
            reservation["reason"]["allOf"][0]["$ref"],
            "#/components/schemas/Reason"
        );
        assert!(reservation["id"].get("nullable").is_none());
    }

    #[test]
    fn no_all_of_mixes_a_reference_with_a_description() {
        let doc = refine(&super::super::service().spec(), SpecLimits::default());
        let text = doc.to_string();
        assert!(!text.contains(r#"},{"description":"#), "{text}");
        let state = &doc["components"]["schemas"]["Transaction"]["properties"]["state"];
        assert_eq!(
            state["allOf"],
            json!([{"$ref": "#/components/schemas/State"}])
        );
        assert!(state["description"].is_string(), "{state}");
    }

    #[test]
    fn a_405_names_the_methods_of_the_path() {
        let doc = refine(&super::super::service().spec(), SpecLimits::default());
        let allowed = AllowedMethods::of(&doc);
        assert_eq!(allowed.for_path("/reservations/0190/confirm"), Some("POST"));
        assert_eq!(allowed.for_path("/reservations"), Some("POST, GET, HEAD"));
        assert_eq!(allowed.for_path("/nothing/here"), None);
    }
}
