use std::fmt;

use chrono::{DateTime, Utc};
use url::Url;

/// A URL the coordinator may call: `http` or `https`, with a host and without user info.
///
/// Parsed once at the API edge; everything deeper takes this type, never a raw string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParticipantUrl(Url);

/// Why a text is not a usable participant URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseUrlError {
    #[error("is not a URL: {0}")]
    Malformed(String),
    #[error("must use http or https, not `{0}`")]
    Scheme(String),
    #[error("must name a host")]
    NoHost,
    #[error("must not carry a user name or password; pass credentials in `headers`")]
    UserInfo,
    #[error("must be written in visible ASCII, with a host of letters, digits, `.`, `-`, `_` and `~` (punycode for international names) or a bracketed IPv6 address")]
    NotPlain,
}

impl ParticipantUrl {
    /// Parses and checks a participant URL.
    ///
    /// # Errors
    /// [`ParseUrlError`] when the text is not an absolute `http(s)` URL with a host and no
    /// user info.
    pub fn parse(text: &str) -> Result<Self, ParseUrlError> {
        let url = Url::parse(text).map_err(|e| ParseUrlError::Malformed(e.to_string()))?;
        let url = Self::try_from_url(url)?;
        if !is_plain(text) {
            return Err(ParseUrlError::NotPlain);
        }
        Ok(url)
    }

    /// Resolves `reference` (for example a `Location` header) against this URL and checks it.
    ///
    /// # Errors
    /// As [`ParticipantUrl::parse`].
    pub fn join(&self, reference: &str) -> Result<Self, ParseUrlError> {
        let url = self
            .0
            .join(reference)
            .map_err(|e| ParseUrlError::Malformed(e.to_string()))?;
        Self::try_from_url(url)
    }

    fn try_from_url(url: Url) -> Result<Self, ParseUrlError> {
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(ParseUrlError::Scheme(other.to_owned())),
        }
        if url.host().is_none() {
            return Err(ParseUrlError::NoHost);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ParseUrlError::UserInfo);
        }
        Ok(Self(url))
    }

    /// The URL.
    #[must_use]
    pub fn as_url(&self) -> &Url {
        &self.0
    }

    /// The URL as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The host (and port, when not the scheme's default), for names and logs.
    #[must_use]
    pub fn authority(&self) -> String {
        match (self.0.host_str(), self.0.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => String::new(),
        }
    }
}

/// The URL as written holds visible ASCII only, and its host is a plain name or a bracketed
/// address: what the published OpenAPI pattern says, so that a URL the document accepts is
/// one the coordinator accepts. (The URL parser alone would also take spaces, percent-encoded
/// or international host names, and characters such as `*` in a host.)
fn is_plain(text: &str) -> bool {
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let Some((_, rest)) = text.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split_once(']')
                .is_some_and(|(_, port)| port.is_empty() || port.starts_with(':'))
        }
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~'))
}

impl fmt::Display for ParticipantUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A participant link: confirm with `PUT uri`, cancel with `DELETE uri`; after `expires` the
/// participant cancels by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantLink {
    pub uri: ParticipantUrl,
    pub expires: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_https_urls_with_a_host_are_accepted() {
        assert!(ParticipantUrl::parse("http://stock.local/holds/1").is_ok());
        assert!(ParticipantUrl::parse("https://10.0.0.1:8443/x").is_ok());
    }

    #[test]
    fn other_schemes_user_info_and_relative_urls_are_refused() {
        assert_eq!(
            ParticipantUrl::parse("ftp://stock/holds/1"),
            Err(ParseUrlError::Scheme("ftp".into()))
        );
        assert_eq!(
            ParticipantUrl::parse("http://user:pw@stock/holds/1"),
            Err(ParseUrlError::UserInfo)
        );
        assert!(matches!(
            ParticipantUrl::parse("/holds/1"),
            Err(ParseUrlError::Malformed(_))
        ));
    }

    #[test]
    fn only_plain_ascii_urls_are_accepted() {
        for ok in [
            "http://stock-1.internal:8080/holds/a?b=c#d",
            "https://[::1]:8443/x",
            "http://10.0.0.1",
        ] {
            assert!(ParticipantUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://stock*/x",
            "http://st%6Fck/x",
            "http://bücher.example/x",
            "http://stock/a b",
            "http://stock/\u{e9}",
        ] {
            assert_eq!(
                ParticipantUrl::parse(bad),
                Err(ParseUrlError::NotPlain),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_relative_location_resolves_against_the_try_url() {
        let base = ParticipantUrl::parse("http://stock:81/holds").unwrap();
        assert_eq!(
            base.join("/holds/9").unwrap().as_str(),
            "http://stock:81/holds/9"
        );
        assert_eq!(base.authority(), "stock:81");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Text that looks like a URL often enough to get past the parser: a scheme, an
        /// authority and a path from small alphabets, or anything at all.
        fn url_like() -> impl Strategy<Value = String> {
            prop_oneof![
                (
                    prop::sample::select(vec!["http", "HTTPS", "ftp", "hTtP", ""]),
                    "[a-zA-Z0-9.:@%\\[\\]_~*-]{0,24}",
                    "[ -~\u{80}-\u{10ffff}]{0,24}",
                )
                    .prop_map(|(scheme, authority, rest)| format!("{scheme}://{authority}{rest}")),
                any::<String>(),
            ]
        }

        proptest! {
            /// Never panics; what it accepts is an http(s) URL with a host, and its text
            /// parses back to the same URL (the log stores the text and parses it at start).
            #[test]
            fn accepted_urls_round_trip_through_their_text(text in url_like()) {
                if let Ok(url) = ParticipantUrl::parse(&text) {
                    prop_assert!(matches!(url.as_url().scheme(), "http" | "https"));
                    prop_assert!(url.as_url().host().is_some());
                    prop_assert_eq!(ParticipantUrl::parse(url.as_str()), Ok(url.clone()));
                }
            }
        }
    }
}
