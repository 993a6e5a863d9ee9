//! Permissions as RabbitMQ's internal backend defines them: per user and virtual host,
//! three regular expressions (configure, write, read) over resource names, and per
//! topic exchange two more (write, read) over routing keys.
//!
//! A pattern matches a name when the regular expression is found anywhere in it
//! (unanchored, as Erlang's `re:run`); the empty pattern means `^$`, which matches only
//! the empty name. As in RabbitMQ (PCRE without its `unicode` flag), patterns match the
//! name's UTF-8 bytes: `.` is one byte, `\w` and `\d` are ASCII. Topic patterns may name
//! `{username}` and `{vhost}`, replaced (regex-escaped) by the user's and vhost's names
//! before matching.

use regex::bytes::{Regex, RegexBuilder};

/// One of the three kinds of access a resource is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Declaring and deleting.
    Configure,
    /// Publishing to an exchange; binding to a queue or exchange destination.
    Write,
    /// Consuming, getting, purging; binding from an exchange.
    Read,
}

impl Perm {
    /// The word RabbitMQ's refusals use (`configure access to …`).
    pub fn word(self) -> &'static str {
        match self {
            Self::Configure => "configure",
            Self::Write => "write",
            Self::Read => "read",
        }
    }
}

/// A permission's regular expression, kept with its source text.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// A pattern that is not a regular expression Warren can run.
#[derive(Debug, thiserror::Error)]
#[error("invalid regular expression '{source_text}': {reason}")]
pub struct PatternError {
    source_text: String,
    reason: String,
}

impl Pattern {
    /// Compiles `source` (`""` meaning `^$`).
    ///
    /// # Errors
    /// Not a regular expression (Rust's `regex` syntax, which covers what RabbitMQ's
    /// permissions use; look-around and back-references are not supported).
    pub fn new(source: &str) -> Result<Self, PatternError> {
        let effective = if source.is_empty() { "^$" } else { source };
        let regex = RegexBuilder::new(effective)
            .unicode(false)
            .build()
            .map_err(|e| PatternError {
                source_text: source.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether it matches `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name.as_bytes())
    }
}

/// A user's permissions in one virtual host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Declare and delete.
    pub configure: Pattern,
    /// Publish, and bind to.
    pub write: Pattern,
    /// Consume, get, purge, and bind from.
    pub read: Pattern,
}

impl Permissions {
    /// Permissions that allow nothing, not even the empty name: what a connection
    /// keeps once its user's permissions are cleared.
    pub fn none() -> Self {
        let nothing = || Pattern {
            source: String::new(),
            regex: Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!("a valid class")),
        };
        Self {
            configure: nothing(),
            write: nothing(),
            read: nothing(),
        }
    }

    /// The pattern for `perm`.
    pub fn pattern(&self, perm: Perm) -> &Pattern {
        match perm {
            Perm::Configure => &self.configure,
            Perm::Write => &self.write,
            Perm::Read => &self.read,
        }
    }

    /// Whether `perm` access to a resource named `name` is allowed.
    pub fn allows(&self, perm: Perm, name: &str) -> bool {
        self.pattern(perm).matches(name)
    }
}

/// A user's topic permissions on one topic exchange of a virtual host: patterns over
/// routing keys (publish: write) and binding keys (bind: read), compiled once with the
/// user's and vhost's names filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermission {
    /// The exchange it applies to.
    pub exchange: String,
    /// Over the routing keys published with, as written.
    pub write: String,
    /// Over the binding keys bound with, as written.
    pub read: String,
    write_filled: Pattern,
    read_filled: Pattern,
}

impl TopicPermission {
    /// The permission of `user` in `vhost` on `exchange`.
    ///
    /// # Errors
    /// A pattern, its variables filled in, is not a regular expression.
    pub fn new(
        exchange: &str,
        write: &str,
        read: &str,
        user: &str,
        vhost: &str,
    ) -> Result<Self, PatternError> {
        let fill = |source: &str| {
            Pattern::new(
                &source
                    .replace("{username}", &regex::escape(user))
                    .replace("{vhost}", &regex::escape(vhost)),
            )
        };
        Ok(Self {
            exchange: exchange.to_owned(),
            write: write.to_owned(),
            read: read.to_owned(),
            write_filled: fill(write)?,
            read_filled: fill(read)?,
        })
    }

    /// Whether `perm` (write or read) allows `key`.
    pub fn allows(&self, perm: Perm, key: &str) -> bool {
        match perm {
            Perm::Write => self.write_filled.matches(key),
            Perm::Read => self.read_filled.matches(key),
            Perm::Configure => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).expect("a pattern")
    }

    #[test]
    fn patterns_are_unanchored_and_the_empty_one_matches_only_the_empty_name() {
        assert!(p(".*").matches("anything") && p(".*").matches(""));
        assert!(p("q").matches("my-queue"), "found anywhere, as re:run");
        assert!(!p("^q$").matches("my-q"));
        assert!(p("").matches(""));
        assert!(!p("").matches("amq.default"));
        assert!(p("^(amq\\.gen.*|app-.*)$").matches("amq.gen-abc"));
        assert!(Pattern::new("(").is_err());
    }

    #[test]
    fn patterns_match_bytes_as_rabbitmqs_pcre_does() {
        // Five two-byte letters are ten bytes: more than eight.
        assert!(!p("^.{1,8}$").matches("ééééé"));
        assert!(p("^.{1,10}$").matches("ééééé"));
        assert!(!p("^\\w+$").matches("café"));
        // A literal non-ASCII character still matches itself.
        assert!(p("^é").matches("école"));
    }

    #[test]
    fn topic_variables_are_filled_in_escaped() {
        let t = |user: &str| {
            TopicPermission::new("amq.topic", "^{username}\\.", "^{vhost}-.*", user, "/")
                .expect("patterns")
        };
        assert!(t("a").allows(Perm::Write, "a.b.c"));
        assert!(!t("a").allows(Perm::Write, "ab.c"));
        // A user name with regex characters is matched literally.
        assert!(!t("x.").allows(Perm::Write, "xy.z"));
        assert!(t("x.").allows(Perm::Write, "x..z"));
        assert!(t("u").allows(Perm::Read, "/-key"));
    }
}
