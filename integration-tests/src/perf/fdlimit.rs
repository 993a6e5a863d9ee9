//! The open-file limit: `--connections` needs one descriptor per connection, more than
//! the usual soft limit of 1024, so the tool raises its soft limit to the hard one
//! (which needs no privilege).

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in
/// force (`None` where it cannot be read).
///
/// # Errors
/// The kernel refusing the new limit (e.g. an unlimited hard limit above
/// `fs.nr_open`); the old limit then stays.
#[cfg(unix)]
pub fn raise_nofile() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    /// What to ask for when the hard limit is unlimited (Linux's default `nr_open`).
    const UNLIMITED_STANDIN: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let target = limit.maximum.unwrap_or(UNLIMITED_STANDIN);
    if limit.current.is_some_and(|soft| soft < target) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// Elsewhere there is nothing to raise.
///
/// # Errors
/// Never.
#[cfg(not(unix))]
pub fn raise_nofile() -> std::io::Result<Option<u64>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn soft_limit_reaches_the_hard_limit() {
        let soft = raise_nofile().expect("raising to the hard limit is allowed");
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(soft, limit.current);
        if let Some(hard) = limit.maximum {
            assert_eq!(soft, Some(hard));
        }
    }
}
