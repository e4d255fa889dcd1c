//! URLs as logs, errors and stats may show them: the password replaced by `***`.

/// `u` with the password of its user info replaced by `***` (`redis://user:***@host`); `u`
/// itself when it has none.
///
/// A string the `url` crate cannot parse keeps no user info either: everything between
/// `scheme://` and the last `@` becomes `***` (a password may itself hold an `@`).
pub fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) if parsed.password().is_some() => match parsed.set_password(Some("***")) {
            Ok(()) => parsed.to_string(),
            Err(()) => redact_unparsed(u),
        },
        Ok(_) => u.to_owned(),
        Err(_) => redact_unparsed(u),
    }
}

/// `u` as it names a server, for keys: parsed and normalised by the `url` crate (scheme
/// and host in lower case, a default port dropped, the path's escapes normalised), its
/// user info dropped (credentials do not change what a server computes), and no trailing
/// `/`. A string the `url` crate cannot parse is kept as it is.
pub fn server_identity(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) => {
            // Only URLs that cannot have user info refuse these, and then have none.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => u.trim_end_matches('/').to_owned(),
    }
}

fn redact_unparsed(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => u.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_nothing_else_changes() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/2"),
            "redis://user:***@host:6379/2"
        );
        assert_eq!(redact_url("rediss://:secret@host"), "rediss://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("redis://u:p@ss@host"), "redis://u:***@host");
        assert_eq!(
            redact_url("https://user:tok@api.example.com/v1"),
            "https://user:***@api.example.com/v1"
        );
        assert_eq!(redact_url("http://h:8000"), "http://h:8000");
    }

    #[test]
    fn server_identity_is_normalised_and_has_no_credentials() {
        assert_eq!(
            server_identity("HTTP://User:Tok@API.Example.com:80/v1/"),
            "http://api.example.com/v1"
        );
        assert_eq!(
            server_identity("http://h:8000"),
            server_identity("http://h:8000/")
        );
        assert_ne!(
            server_identity("http://h:8000"),
            server_identity("http://h:8001")
        );
    }

    #[test]
    fn an_unparsable_url_keeps_no_user_info() {
        assert_eq!(
            redact_url("redis://:secret@host:notaport"),
            "redis://***@host:notaport"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
