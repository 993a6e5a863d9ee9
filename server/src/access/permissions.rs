//! Permissions as RabbitMQ's internal backend defines them: per user and virtual host,
//! three regular expressions (configure, write, read) over resource names, and per
//! topic exchange two more (write, read) over routing keys.
//!
//! A pattern matches a name when the regular expression is found anywhere in it
//! (unanchored, as Erlang's `re:run`); the empty pattern means `^$`, which matches only
//! the empty name. Topic patterns may name `{username}` and `{vhost}`, replaced
//! (regex-escaped) by the user's and vhost's names before matching.

use regex::Regex;

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
        let regex = Regex::new(effective).map_err(|e| PatternError {
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
        self.regex.is_match(name)
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
/// routing keys (publish: write) and binding keys (bind and consume: read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermission {
    /// The exchange it applies to.
    pub exchange: String,
    /// Over the routing keys published with.
    pub write: String,
    /// Over the binding keys bound with.
    pub read: String,
}

impl TopicPermission {
    /// Whether `perm` (write or read) allows `key` for `user` in `vhost`; a pattern
    /// that does not compile once its variables are filled in allows nothing.
    pub fn allows(&self, perm: Perm, key: &str, user: &str, vhost: &str) -> bool {
        let source = match perm {
            Perm::Write => &self.write,
            Perm::Read => &self.read,
            Perm::Configure => return true,
        };
        let filled = source
            .replace("{username}", &regex::escape(user))
            .replace("{vhost}", &regex::escape(vhost));
        Pattern::new(&filled).is_ok_and(|p| p.matches(key))
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
    fn topic_variables_are_filled_in_escaped() {
        let t = TopicPermission {
            exchange: "amq.topic".into(),
            write: "^{username}\\.".into(),
            read: "^{vhost}-.*".into(),
        };
        assert!(t.allows(Perm::Write, "a.b.c", "a", "/"));
        assert!(!t.allows(Perm::Write, "ab.c", "a", "/"));
        // A user name with regex characters is matched literally.
        assert!(!t.allows(Perm::Write, "xy.z", "x.", "/"));
        assert!(t.allows(Perm::Write, "x..z", "x.", "/"));
        assert!(t.allows(Perm::Read, "/-key", "u", "/"));
    }
}
