//! What messages may show of a URL: passwords are kept only to scrub them from error
//! text, shown as `***` in URLs, never in `Debug` output; other parts are cut short.

use std::fmt;

use url::Url;

/// A password, or the passwords of one URL (a sentinel URL carries the data nodes' and
/// the sentinels'); `Debug` never shows them.
#[derive(Clone)]
pub(crate) struct Secret {
    /// Each password as sent to the server (decoded) and as written in the URL.
    forms: Vec<String>,
}

impl Secret {
    /// The password as a URL's userinfo holds it.
    pub(crate) fn from_url(raw: &str) -> Self {
        Secret {
            forms: vec![percent_decode(raw), raw.to_owned()],
        }
    }

    /// A password given as a query option: `decoded` as sent, `raw` as written.
    pub(crate) fn from_option(decoded: &str, raw: &str) -> Self {
        Secret {
            forms: vec![decoded.to_owned(), raw.to_owned(), percent_decode(raw)],
        }
    }

    /// Both passwords, so scrubbing with the result hides either.
    pub(crate) fn join(first: Option<&Secret>, second: Option<&Secret>) -> Option<Secret> {
        let forms: Vec<String> = first
            .into_iter()
            .chain(second)
            .flat_map(|s| s.forms.iter().cloned())
            .collect();
        (!forms.is_empty()).then_some(Secret { forms })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Replaces every occurrence of the secret in `text`.
    pub fn scrub(&self, text: String) -> String {
        let mut text = text;
        // Longest first: a password containing the other is replaced whole.
        let mut forms: Vec<&String> = self.forms.iter().collect();
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        for form in forms {
            if !form.is_empty() && text.contains(form.as_str()) {
                text = text.replace(form.as_str(), "***");
            }
        }
        text
    }
}

pub(super) fn scrub(secret: &Option<Secret>, text: String) -> String {
    match secret {
        Some(secret) => secret.scrub(text),
        None => text,
    }
}

/// The URL with any password replaced by `***`.
pub(crate) fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Cannot fail: a URL with a password has a host.
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

fn percent_decode(s: &str) -> String {
    // Plain percent-decoding, as redis-rs does: `+` stays `+` (form decoding would make it
    // a space, and the password sent would escape the scrubbing).
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The most characters of a part of the URL an error message shows: enough to recognise
/// it (a usual `ca_file` path fits), short enough that a huge input cannot flood a log.
const MAX_SHOWN: usize = 64;

/// A part of the URL as an error message shows it: cut to [`MAX_SHOWN`] characters and
/// with control characters escaped (percent-decoded options may hold any). Never for a
/// part that may hold the password: a cut password would escape the scrubbing.
pub(super) fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_SHOWN)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_SHOWN).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_hides_the_password() {
        let s = Secret::from_url("p%40ss+1");
        assert_eq!(s.scrub("auth p@ss+1 failed".into()), "auth *** failed");
        assert_eq!(s.scrub("url :p%40ss+1@h".into()), "url :***@h");
        assert_eq!(percent_decode("p%40ss+1"), "p@ss+1");
    }

    #[test]
    fn joined_secrets_scrub_both_passwords() {
        let data = Secret::from_url("data%2Fpw");
        let sentinel = Secret::from_option("sent pw", "sent+pw");
        let both = Secret::join(Some(&data), Some(&sentinel)).unwrap();
        assert_eq!(
            both.scrub("data/pw and sent pw and sent+pw".into()),
            "*** and *** and ***"
        );
        assert!(Secret::join(None, None).is_none());
        assert_eq!(format!("{both:?}"), "Secret(***)");
    }

    #[test]
    fn an_empty_password_scrubs_nothing() {
        let empty = Secret::from_url("");
        assert_eq!(
            empty.scrub("connection refused".into()),
            "connection refused"
        );
    }

    #[test]
    fn scrubbing_with_no_secret_keeps_the_text_and_with_one_hides_it() {
        assert_eq!(scrub(&None, "auth pw failed".into()), "auth pw failed");
        let secret = Some(Secret::from_url("pw"));
        assert_eq!(scrub(&secret, "auth pw failed".into()), "auth *** failed");
    }
}
