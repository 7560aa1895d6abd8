//! Who may do what: bearer tokens with names and roles, the role each request needs, and the
//! 401 or 403 of a request that lacks it.
//!
//! Tokens come from `--api-token` (each an operator, named `api-token`, `api-token-2`, ...)
//! and from `--api-tokens-file` (`NAME ROLE SECRET` a line), which is read again on SIGHUP:
//! rotating a token needs no restart. A file that cannot be read again leaves the tokens as
//! they were. Secrets are kept as SHA-256 digests and never printed.

use std::cmp::Ordering as CmpOrdering;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use poem::http::{header, Method, StatusCode};
use poem::{IntoResponse, Request, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::problem::Problem;
use crate::config::ApiToken;

/// What a token may do; each role may also do everything of the roles before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: the API's `GET`s, the dashboard without its actions, the metrics.
    Viewer,
    /// Also creates, joins, confirms and cancels reservations.
    Client,
    /// Also forgets reconciled conflicts and retries participants now.
    Operator,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Client, Role::Operator];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Client => "client",
            Role::Operator => "operator",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// Who made a request, as its token says: inserted into every request the gate lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name (never its secret); `anonymous` on a coordinator without tokens.
    pub name: Arc<str>,
    pub role: Role,
    /// Whether a token said who it is (false on a coordinator without tokens).
    pub authenticated: bool,
}

impl Identity {
    /// A request on a coordinator without tokens: it may do everything, as before roles.
    fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::Operator,
            authenticated: false,
        }
    }

    /// The name of an operator's token: its confirms and cancels are recorded as an
    /// operator's. `None` for clients, and where no token tells who is asking.
    #[must_use]
    pub fn operator(&self) -> Option<&str> {
        (self.authenticated && self.role == Role::Operator).then_some(&*self.name)
    }
}

/// The role a request needs, from its method and path (the same for a path template such as
/// `/reservations/{id}/forget`, which is how the OpenAPI document states it).
#[must_use]
pub fn required_role(method: &Method, path: &str) -> Role {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Role::Viewer;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["reservations", _, "forget"]
        | ["reservations", _, "participants", _, "retry"]
        | ["participants", "retry"] => Role::Operator,
        _ => Role::Client,
    }
}

/// One line of a tokens file, or an `--api-token`.
#[derive(Debug, Clone)]
pub struct NamedToken {
    pub name: String,
    pub role: Role,
    pub secret: ApiToken,
}

/// A tokens file that cannot be used, with the line to blame (never its secret).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct TokensFileError {
    pub path: PathBuf,
    pub problem: String,
}

/// Reads a tokens file: one token a line, `NAME ROLE SECRET` separated by spaces or tabs;
/// `#` at the start of a word starts a comment; blank lines are skipped. Names are unique;
/// so are secrets.
///
/// # Errors
/// [`TokensFileError`] naming the file and, for a bad line, its number and what is wrong.
pub fn read_tokens_file(path: &Path) -> Result<Vec<NamedToken>, TokensFileError> {
    let error = |problem: String| TokensFileError {
        path: path.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    parse_tokens(&text).map_err(error)
}

/// The line without its comment: `#` at its start or after a space starts one (a secret may
/// hold `#`).
fn without_comment(line: &str) -> &str {
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        if c == '#' && previous.is_whitespace() {
            return &line[..at];
        }
        previous = c;
    }
    line
}

/// Errors name the line, never a word of it: a line written in the wrong order may put a
/// secret anywhere.
fn parse_tokens(text: &str) -> Result<Vec<NamedToken>, String> {
    let mut tokens: Vec<(usize, NamedToken)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = without_comment(line).trim();
        if line.is_empty() {
            continue;
        }
        let at = n + 1;
        let words: Vec<&str> = line.split_whitespace().collect();
        let [name, role, secret] = words.as_slice() else {
            return Err(format!(
                "line {at}: expected `NAME ROLE SECRET` (three words), found {} word(s)",
                words.len()
            ));
        };
        let role = Role::parse(role).ok_or_else(|| {
            format!("line {at}: unknown role (the second word); the roles are viewer, client and operator")
        })?;
        if secret.chars().count() < 16 || secret.chars().any(char::is_control) {
            return Err(format!(
                "line {at}: the secret (the third word) is shorter than 16 characters"
            ));
        }
        if let Some((first, _)) = tokens.iter().find(|(_, t)| t.name == *name) {
            return Err(format!(
                "line {at}: the name is already given on line {first}"
            ));
        }
        if let Some((first, _)) = tokens.iter().find(|(_, t)| t.secret.expose() == *secret) {
            return Err(format!(
                "line {at}: the secret is already the one of line {first}"
            ));
        }
        tokens.push((
            at,
            NamedToken {
                name: (*name).to_owned(),
                role,
                secret: ApiToken::new(*secret),
            },
        ));
    }
    Ok(tokens.into_iter().map(|(_, t)| t).collect())
}

/// `--api-token` values as operator tokens.
#[must_use]
pub fn operator_tokens(tokens: &[ApiToken]) -> Vec<NamedToken> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, secret)| NamedToken {
            name: if i == 0 {
                "api-token".into()
            } else {
                format!("api-token-{}", i + 1)
            },
            role: Role::Operator,
            secret: secret.clone(),
        })
        .collect()
}

struct Entry {
    digest: [u8; 32],
    identity: Identity,
}

/// The tokens a request may present, kept as SHA-256 digests: comparing digests of equal
/// length in constant time reveals neither a token's bytes nor its length. Shared by the gate
/// and whoever reloads the file.
#[derive(Clone)]
pub struct Tokens {
    /// Whether requests must carry a token at all (decided at start: a file emptied later
    /// lets nobody in rather than everybody).
    required: bool,
    fixed: Arc<Vec<NamedToken>>,
    entries: Arc<RwLock<Arc<Vec<Entry>>>>,
    protect_metrics: bool,
    /// Who asks where no token is needed, made once (a request only clones it).
    anonymous: Identity,
}

impl Tokens {
    /// `fixed`: the `--api-token`s (kept across reloads); `from_file`: the file's, if any.
    #[must_use]
    pub fn new(
        fixed: Vec<NamedToken>,
        from_file: Option<Vec<NamedToken>>,
        protect_metrics: bool,
    ) -> Self {
        let required = !fixed.is_empty() || from_file.is_some();
        let tokens = Self {
            required,
            fixed: Arc::new(fixed),
            entries: Arc::default(),
            protect_metrics,
            anonymous: Identity::anonymous(),
        };
        tokens.replace_file_tokens(from_file.unwrap_or_default());
        tokens
    }

    /// Puts the file's tokens in place of the previous ones (the `--api-token`s stay).
    pub fn replace_file_tokens(&self, from_file: Vec<NamedToken>) {
        let entries = self
            .fixed
            .iter()
            .chain(&from_file)
            .map(|t| Entry {
                digest: Sha256::digest(t.secret.expose().as_bytes()).into(),
                identity: Identity {
                    name: t.name.as_str().into(),
                    role: t.role,
                    authenticated: true,
                },
            })
            .collect();
        *self.entries.write().expect("tokens lock") = Arc::new(entries);
    }

    /// The identity of a presented token. Every token is compared, matched or not.
    fn identify(&self, presented: &str) -> Option<Identity> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let entries = self.entries.read().expect("tokens lock").clone();
        let mut found = None;
        for entry in entries.iter() {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry.identity.clone());
            }
        }
        found
    }

    /// Who the request comes from, or the 401 or 403 that refuses it (boxed: the common
    /// case carries only the identity).
    pub(super) fn check(&self, req: &Request) -> Result<Identity, Box<Response>> {
        let path = req.uri().path();
        if !self.required || is_public(path, self.protect_metrics) {
            return Ok(self.anonymous.clone());
        }
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let (challenge, detail) = match presented.map(|t| (t, self.identify(t))) {
            Some((_, Some(identity))) => {
                let needed = required_role(req.method(), path);
                return match identity.role.cmp(&needed) {
                    CmpOrdering::Less => Err(Box::new(forbidden(&identity, needed))),
                    _ => Ok(identity),
                };
            }
            Some((_, None)) => (
                r#"Bearer realm="tcc-coordinator", error="invalid_token""#,
                "the bearer token is not one of the coordinator's tokens (--api-token, --api-tokens-file)",
            ),
            None => (
                r#"Bearer realm="tcc-coordinator""#,
                "send `Authorization: Bearer <token>` with one of the coordinator's tokens (--api-token, --api-tokens-file)",
            ),
        };
        let problem = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid bearer token is required",
            detail,
        );
        Err(Box::new(
            super::problem_response(&problem)
                .with_header(header::WWW_AUTHENTICATE, challenge)
                .into_response(),
        ))
    }
}

/// The 403 of a known token whose role does not reach the one the request needs; the role it
/// needs is named in `detail` and in `required_role`.
fn forbidden(identity: &Identity, needed: Role) -> Response {
    let problem = Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "The token's role does not allow this",
        format!(
            "this needs the {} role; the token `{}` has the {} role",
            needed.as_str(),
            identity.name,
            identity.role.as_str()
        ),
    );
    let body = serde_json::json!({
        "type": problem.kind,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "required_role": needed.as_str(),
    });
    poem::web::Json(body)
        .with_status(StatusCode::FORBIDDEN)
        .with_content_type(super::PROBLEM_JSON)
        .into_response()
}

/// Paths served without a token: probes for orchestrators, the documentation (no data; a
/// browser cannot send a bearer token when it opens `/docs`), the dashboard's page (its data
/// comes through the API, with the operator's token), and the metrics unless they are
/// protected.
fn is_public(path: &str, protect_metrics: bool) -> bool {
    (path == "/metrics" && !protect_metrics)
        || path.starts_with("/health/")
        || path == "/docs"
        || path == "/ui"
        || path.starts_with("/docs/")
        || path == "/openapi.json"
        || path == "/openapi.yaml"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(entries: &[(&str, Role, &str)]) -> Tokens {
        let named = entries
            .iter()
            .map(|(name, role, secret)| NamedToken {
                name: (*name).into(),
                role: *role,
                secret: ApiToken::new(*secret),
            })
            .collect();
        Tokens::new(Vec::new(), Some(named), false)
    }

    #[test]
    fn only_a_configured_token_is_accepted_and_known_by_its_name() {
        let tokens = tokens(&[
            ("first", Role::Client, "first-token-0123456"),
            ("second", Role::Viewer, "second-token-012345"),
        ]);
        let found = tokens.identify("first-token-0123456").unwrap();
        assert_eq!(&*found.name, "first");
        assert_eq!(found.role, Role::Client);
        assert_eq!(
            tokens.identify("second-token-012345").unwrap().role,
            Role::Viewer
        );
        assert!(tokens.identify("first-token-012345").is_none());
        assert!(tokens.identify("").is_none());
        assert!(tokens.identify("second-token-012345 ").is_none());
    }

    #[test]
    fn operations_need_the_role_that_matches_what_they_do() {
        let roles = [
            (Method::GET, "/reservations", Role::Viewer),
            (Method::GET, "/reservations/x/events", Role::Viewer),
            (Method::GET, "/metrics", Role::Viewer),
            (Method::POST, "/reservations", Role::Client),
            (Method::POST, "/reservations/x/confirm", Role::Client),
            (Method::POST, "/reservations/x/cancel", Role::Client),
            (Method::POST, "/reservations/x/participants", Role::Client),
            (Method::PUT, "/atomikos/x", Role::Client),
            (Method::POST, "/reservations/x/forget", Role::Operator),
            (Method::POST, "/reservations/{id}/forget", Role::Operator),
            (Method::POST, "/participants/retry", Role::Operator),
            (
                Method::POST,
                "/reservations/x/participants/0/retry",
                Role::Operator,
            ),
        ];
        for (method, path, role) in roles {
            assert_eq!(required_role(&method, path), role, "{method} {path}");
        }
    }

    #[test]
    fn a_tokens_file_is_read_line_by_line_and_a_bad_line_is_named_without_its_secret() {
        let good = "# who may do what\n\nci-bot client ci-secret-0123456789\n\
                    alice operator alice#secret-0123456 # on call\n\tgrafana viewer graf-secret-0123456\n";
        let tokens = parse_tokens(good).unwrap();
        let seen: Vec<_> = tokens.iter().map(|t| (t.name.as_str(), t.role)).collect();
        assert_eq!(
            seen,
            [
                ("ci-bot", Role::Client),
                ("alice", Role::Operator),
                ("grafana", Role::Viewer)
            ]
        );
        assert_eq!(
            tokens[1].secret.expose(),
            "alice#secret-0123456",
            "# inside a secret"
        );
        for (text, says) in [
            ("a client", "line 1: expected `NAME ROLE SECRET`"),
            ("\na admin secret-0123456789abc", "line 2: unknown role"),
            // In the wrong order: the secret where the role goes is not echoed.
            ("\na secret-0123456789abc viewer", "line 2: unknown role"),
            (
                "a viewer short",
                "line 1: the secret (the third word) is shorter",
            ),
            (
                "a viewer secret-0123456789abc\na client other-0123456789abc",
                "line 2: the name is already given on line 1",
            ),
            (
                "a viewer secret-0123456789abc\nb client secret-0123456789abc",
                "line 2: the secret is already the one of line 1",
            ),
        ] {
            let error = parse_tokens(text).unwrap_err();
            assert!(error.starts_with(says), "{text:?}: {error}");
            assert!(!error.contains("0123456789abc"), "no secret in {error}");
        }
    }

    /// The tokens file shown in docs/security.md is one the coordinator reads as it says.
    #[test]
    fn the_documented_tokens_file_reads_as_documented() {
        let doc = include_str!("../../docs/security.md");
        let start = doc.find("```text\n").expect("the example") + "```text\n".len();
        let block = &doc[start..];
        let example = block[..block.find("```").expect("its end")]
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("\n");
        let tokens = parse_tokens(&example).unwrap();
        let seen: Vec<_> = tokens.iter().map(|t| (t.name.as_str(), t.role)).collect();
        assert_eq!(
            seen,
            [
                ("grafana", Role::Viewer),
                ("checkout", Role::Client),
                ("alice", Role::Operator)
            ]
        );
    }

    #[test]
    fn health_and_documentation_are_public_and_nothing_else() {
        for path in [
            "/health/live",
            "/health/ready",
            "/docs",
            "/docs/",
            "/openapi.json",
        ] {
            assert!(is_public(path, true), "{path}");
        }
        for path in [
            "/reservations",
            "/transactions/x",
            "/healthz",
            "/docsx",
            "/",
        ] {
            assert!(!is_public(path, false), "{path}");
        }
        assert!(is_public("/metrics", false));
        assert!(!is_public("/metrics", true));
    }
}
