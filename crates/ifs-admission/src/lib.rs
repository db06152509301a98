//! Admission control: at most `parallel` pieces of heavy work (generations, password hashes) run
//! at once and at most `queue` wait for a turn; anyone beyond that is turned away at once (a 503
//! with `Retry-After` at the API) instead of piling up memory and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The gate in front of some costly work.
#[derive(Debug)]
pub struct Admission {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    parallel: usize,
    queue: usize,
}

/// There is no room, running or waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("busy: every place, running or waiting, is taken")]
pub struct Busy;

impl Admission {
    #[must_use]
    pub fn new(parallel: usize, queue: usize) -> Self {
        let parallel = parallel.max(1);
        Self { running: Arc::new(Semaphore::new(parallel)), waiting: AtomicUsize::new(0), parallel, queue }
    }

    #[must_use]
    pub fn parallel(&self) -> usize {
        self.parallel
    }

    #[must_use]
    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Whether [`Admission::enter`] would find a place now, running or waiting: for callers that
    /// must not begin anything (store a message) that a refusal would leave half done.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.running.available_permits() > 0 || self.waiting.load(Ordering::SeqCst) < self.queue
    }

    /// A place to run, possibly after waiting in the queue. The permit is owned so that it can
    /// travel with the blocking work and be released only when the work really ends.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Busy> {
        if let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave(&self.waiting);
        if queued >= self.queue {
            return Err(Busy);
        }
        Arc::clone(&self.running).acquire_owned().await.map_err(|_| Busy)
    }
}

/// Leaves the queue however the wait ends (served, refused or cancelled).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn with_no_queue_the_second_caller_is_turned_away_until_the_first_leaves() {
        let gate = Admission::new(1, 0);
        assert!(gate.has_room());
        let first = gate.enter().await.unwrap();
        assert!(!gate.has_room());
        assert_eq!(gate.enter().await.unwrap_err(), Busy);
        drop(first);
        assert!(gate.has_room());
        assert!(gate.enter().await.is_ok());
    }

    #[tokio::test]
    async fn queued_callers_are_served_in_turn_and_the_overflow_refused() {
        let gate = Arc::new(Admission::new(1, 2));
        let first = gate.enter().await.unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let gate = Arc::clone(&gate);
                tokio::spawn(async move { gate.enter().await.map(drop) })
            })
            .collect();
        while gate.waiting.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.enter().await.unwrap_err(), Busy, "the queue is full");
        drop(first);
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Ok(()));
        }
        assert_eq!(gate.waiting.load(Ordering::SeqCst), 0);
    }
}
