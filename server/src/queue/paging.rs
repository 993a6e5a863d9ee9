//! How many ready messages a queue keeps in memory, and how it pages the rest back in
//! from its log: the sizes in one place, so that tests can shrink them and page backlogs
//! of a few messages instead of thousands.

/// A queue's paging sizes. Production always runs with [`Paging::DEFAULT`] (a constant,
/// so this costs nothing there); a test may set smaller ones for its own thread with
/// [`Paging::set_for_tests`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paging {
    /// A durable queue's window, (messages, body bytes): its messages are on disk anyway.
    pub durable: (usize, usize),
    /// A transient queue's window: larger, because spilling is extra work that a short
    /// burst should not cost.
    pub transient: (usize, usize),
    /// Any queue's window while the broker's queued messages take more memory than the
    /// spill budget: then many queues with backlogs still fit.
    pub tight: (usize, usize),
    /// When fewer ready messages than this remain in memory, the next page is read.
    pub refill_below: usize,
    /// Messages read from the log per page.
    pub page_messages: usize,
    /// Body bytes read from the log per page.
    pub page_bytes: usize,
    /// Messages a queue expires or drops for a length limit per lock hold. A backlog
    /// that expires all at once (after a restart, or a policy that lowered a limit) is
    /// worked off in slices, each on a wake-up of its own, so no one waits long for the
    /// lock.
    pub discard_slice: usize,
    /// How many deliveries a queue hands one consumer's connection ahead of what it has
    /// written ([`UNWRITTEN_LIMIT`](super::credit::UNWRITTEN_LIMIT)).
    pub unwritten: u32,
    /// How many deliveries queues hand one connection, over all its consumers, ahead of
    /// what it has written ([`Mailbox`](super::Mailbox)).
    pub connection_unwritten: u32,
}

impl Paging {
    /// The sizes queues run with.
    pub(crate) const DEFAULT: Paging = Paging {
        durable: (4096, 8 << 20),
        transient: (65_536, 32 << 20),
        tight: (256, 256 << 10),
        refill_below: 1024,
        page_messages: 2048,
        page_bytes: 4 << 20,
        discard_slice: 2 * 2048,
        unwritten: super::credit::UNWRITTEN_LIMIT,
        connection_unwritten: 4096,
    };

    /// The sizes in force.
    #[cfg(not(test))]
    pub(crate) const fn current() -> Paging {
        Self::DEFAULT
    }

    /// The sizes in force on this thread: the defaults unless a test set others.
    #[cfg(test)]
    pub(crate) fn current() -> Paging {
        TEST_PAGING.with(std::cell::Cell::get)
    }

    /// Makes queues used on this thread page with `self` until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn set_for_tests(self) -> TestPaging {
        TestPaging(TEST_PAGING.with(|p| p.replace(self)))
    }
}

#[cfg(test)]
thread_local! {
    static TEST_PAGING: std::cell::Cell<Paging> = const { std::cell::Cell::new(Paging::DEFAULT) };
}

/// Restores the paging sizes a test replaced, when dropped.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct TestPaging(Paging);

#[cfg(test)]
impl Drop for TestPaging {
    fn drop(&mut self) {
        TEST_PAGING.with(|p| p.set(self.0));
    }
}
