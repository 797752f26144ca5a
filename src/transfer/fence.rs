//! Completion fences: the copy side signals, the compute side waits. A fence ends `Done` or
//! `Failed` exactly once; waiting on a failed fence returns the failure instead of hanging.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    Done,
    Failed(String),
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    cond: Condvar,
}

/// A one-shot completion signal shared by a copy request and its waiters.
#[derive(Debug, Clone)]
pub struct Fence(Arc<Inner>);

impl Default for Fence {
    fn default() -> Self {
        Fence::new()
    }
}

impl Fence {
    /// A pending fence.
    pub fn new() -> Fence {
        Fence(Arc::new(Inner { state: Mutex::new(State::Pending), cond: Condvar::new() }))
    }

    /// A fence that is already complete (for experts resident from the start).
    pub fn done() -> Fence {
        let f = Fence::new();
        f.signal(Ok(()));
        f
    }

    /// Completes the fence; the first signal wins, later ones are ignored.
    pub fn signal(&self, result: std::result::Result<(), String>) {
        let mut s = self.0.state.lock();
        if *s == State::Pending {
            *s = match result {
                Ok(()) => State::Done,
                Err(e) => State::Failed(e),
            };
            self.0.cond.notify_all();
        }
    }

    /// Whether the fence has completed (successfully or not).
    pub fn is_complete(&self) -> bool {
        *self.0.state.lock() != State::Pending
    }

    /// Blocks until complete; returns the time spent waiting and the outcome.
    pub fn wait(&self) -> (Duration, std::result::Result<(), String>) {
        let start = Instant::now();
        let mut s = self.0.state.lock();
        while *s == State::Pending {
            self.0.cond.wait(&mut s);
        }
        let outcome = match &*s {
            State::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        };
        (start.elapsed(), outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_sees_signal_from_another_thread() {
        let f = Fence::new();
        let g = f.clone();
        let h = std::thread::spawn(move || g.signal(Ok(())));
        assert!(f.wait().1.is_ok());
        h.join().unwrap();
        assert!(f.is_complete());
    }

    #[test]
    fn failure_is_reported_and_first_signal_wins() {
        let f = Fence::new();
        f.signal(Err("boom".into()));
        f.signal(Ok(()));
        assert_eq!(f.wait().1, Err("boom".to_string()));
    }
}
