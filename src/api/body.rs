//! The JSON request body: read within the size limit, parsed with serde so that every error
//! names the offending field by its JSON path (`participants[1].link.expires`).
//!
//! poem's `SizeLimit` middleware answers 411 to any request without `Content-Length`, so the
//! limit is enforced here, while reading.

use poem::error::{ReadBodyError, ResponseError};
use poem::http::StatusCode;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;

/// The largest body accepted, in bytes; set as request data by the router.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// How long a body may take to arrive; set as request data by the router. A client that
/// trickles its body would otherwise hold a connection and a request slot indefinitely.
#[derive(Debug, Clone, Copy)]
pub struct ReadTimeout(pub std::time::Duration);

/// A JSON request body of type `T`, with the bytes it was parsed from.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Vec<u8>,
}

impl<T> JsonBody<T> {
    /// SHA-256 of the body's canonical form (object keys sorted, no insignificant white
    /// space): two bodies that mean the same JSON have the same fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        let value: serde_json::Value = serde_json::from_slice(&self.raw).unwrap_or_default();
        let mut canonical = String::new();
        write_canonical(&value, &mut canonical);
        sha2::Sha256::digest(canonical.as_bytes()).into()
    }
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Why a body was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request body did not arrive within {0:?}")]
    TooSlow(std::time::Duration),
    #[error("{0}")]
    Malformed(String),
    #[error("`{field}` {message}")]
    Invalid { field: String, message: String },
}

impl ResponseError for BodyError {
    fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
            BodyError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// Parses `bytes` as a `T`, classifying errors: bad syntax is `Malformed` (400), a value of
/// the wrong type or an unknown field is `Invalid` (422) with its path.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Malformed(
            "the request body is empty; send a JSON object".into(),
        ));
    }
    // Parsed without tracking the path first (a third of the cost); a body that fails is
    // parsed again with it, to name the field.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => BodyError::Invalid {
                field: if path == "." { "body".into() } else { path },
                message: strip_position(&inner.to_string()),
            },
            _ => BodyError::Malformed(format!("the request body is not valid JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| BodyError::Malformed(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// serde's messages end in " at line L column C", which means little once a path is given.
fn strip_position(message: &str) -> String {
    message
        .rfind(" at line ")
        .map_or(message, |i| &message[..i])
        .to_owned()
}

impl<'a, T> ApiExtractor<'a> for JsonBody<T>
where
    T: Type + DeserializeOwned + Send,
{
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: T::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let limit = request.data::<BodyLimit>().map_or(usize::MAX, |l| l.0);
        let declared = request
            .header(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(BodyError::TooLarge { limit }.into());
        }
        let timeout = request
            .data::<ReadTimeout>()
            .map_or(std::time::Duration::MAX, |t| t.0);
        // Boxed: poem's read is a 4 KB future, which every operation taking a body would
        // otherwise carry (and move) inline.
        let reading = Box::pin(body.take()?.into_bytes_limit(limit));
        let bytes = tokio::time::timeout(timeout, reading)
            .await
            .map_err(|_| BodyError::TooSlow(timeout))?
            .map_err(|e| match e {
                ReadBodyError::PayloadTooLarge => poem::Error::from(BodyError::TooLarge { limit }),
                other => poem::Error::from(BodyError::Malformed(format!(
                    "the request body could not be read: {other}"
                ))),
            })?;
        Ok(Self {
            value: parse(&bytes)?,
            raw: bytes.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u64,
    }

    #[test]
    fn bodies_meaning_the_same_json_share_a_fingerprint() {
        let body = |raw: &str| JsonBody {
            value: (),
            raw: raw.as_bytes().to_vec(),
        };
        let a = body(r#"{"a": 1, "b": [true, {"y": null, "x": "s"}]}"#);
        let b = body(r#"{ "b":[true,{"x":"s","y":null}],"a":1 }"#);
        let c = body(r#"{"a": 2, "b": [true, {"y": null, "x": "s"}]}"#);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn a_syntax_error_is_malformed() {
        assert!(matches!(
            parse::<Outer>(b"{\"items\": ["),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(parse::<Outer>(b""), Err(BodyError::Malformed(_))));
        assert!(matches!(
            parse::<Outer>(b"{\"items\": []} x"),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn a_wrong_type_names_the_field_by_its_path() {
        match parse::<Outer>(br#"{"items": [{"n": 1}, {"n": "two"}]}"#) {
            Err(BodyError::Invalid { field, message }) => {
                assert_eq!(field, "items[1].n");
                assert!(message.starts_with("invalid type"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::{json, Value};

        use super::*;
        use crate::api::requests::CreateReservationBody;

        /// JSON whose keys are mostly the API's own, so that generated values reach deep
        /// into participants and links.
        fn json_value() -> impl Strategy<Value = Value> {
            let key = prop::sample::select(vec![
                "timeout_ms",
                "participants",
                "metadata",
                "name",
                "link",
                "try",
                "uri",
                "expires",
                "url",
                "body",
                "headers",
                "x",
            ]);
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| json!(f)),
                "[ -~]{0,12}".prop_map(Value::from),
                Just(json!("http://stock:8080/holds/1")),
                Just(json!("2999-01-01T00:00:00Z")),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(key.clone(), inner, 0..5).prop_map(|m| {
                        Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                    }),
                ]
            })
        }

        proptest! {
            /// Any body either parses or is refused with a named field (or as malformed);
            /// nothing panics, also when parsing on into the domain.
            #[test]
            fn any_json_body_is_parsed_or_refused_with_a_named_field(value in json_value()) {
                let bytes = serde_json::to_vec(&value).unwrap();
                match parse::<CreateReservationBody>(&bytes) {
                    Ok(body) => {
                        if let Err((field, message)) = body.into_domain() {
                            prop_assert!(!field.is_empty() && !message.is_empty());
                        }
                    }
                    Err(BodyError::Invalid { field, message }) => {
                        prop_assert!(!field.is_empty() && !message.is_empty());
                    }
                    Err(BodyError::Malformed(message)) => prop_assert!(!message.is_empty()),
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = parse::<CreateReservationBody>(&bytes);
            }
        }
    }
}
