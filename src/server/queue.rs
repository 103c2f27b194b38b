//! Worker slots fed by a bounded FIFO queue: at most `parallel` generations run at once,
//! at most `queue` more wait; beyond that a request is refused (503). A waiting request
//! whose client went away leaves the queue.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often a waiting request checks that its client is still there.
const POLL: Duration = Duration::from_millis(50);

/// The slots and the queue in front of them.
pub struct Slots {
    parallel: usize,
    queue: usize,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    running: usize,
    waiting: VecDeque<u64>,
    next_ticket: u64,
}

/// The outcome of [`Slots::acquire`].
pub enum Acquire {
    /// A slot is held until the permit is dropped.
    Granted(Permit),
    /// Every slot and queue place is taken.
    Full,
    /// The client went away while waiting.
    Abandoned,
}

/// A held worker slot; dropping it frees the slot.
pub struct Permit {
    slots: Arc<Slots>,
}

impl Slots {
    /// `parallel` slots (at least 1) and `queue` waiting places.
    pub fn new(parallel: usize, queue: usize) -> Arc<Self> {
        Arc::new(Self {
            parallel: parallel.max(1),
            queue,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (running, waiting) now.
    pub fn load(&self) -> (usize, usize) {
        let s = self.lock();
        (s.running, s.waiting.len())
    }

    /// Takes a slot, waiting in line for one if needed; `gone` is polled while waiting.
    pub fn acquire(self: &Arc<Self>, mut gone: impl FnMut() -> bool) -> Acquire {
        let mut state = self.lock();
        if state.running < self.parallel && state.waiting.is_empty() {
            state.running += 1;
            return Acquire::Granted(Permit { slots: self.clone() });
        }
        if state.waiting.len() >= self.queue {
            return Acquire::Full;
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push_back(ticket);
        loop {
            if state.running < self.parallel && state.waiting.front() == Some(&ticket) {
                state.waiting.pop_front();
                state.running += 1;
                // The next in line may also fit.
                self.freed.notify_all();
                return Acquire::Granted(Permit { slots: self.clone() });
            }
            state = match self.freed.wait_timeout(state, POLL) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
            drop(state);
            let left = gone();
            state = self.lock();
            if left {
                state.waiting.retain(|&t| t != ticket);
                self.freed.notify_all();
                return Acquire::Abandoned;
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        state.running = state.running.saturating_sub(1);
        drop(state);
        self.slots.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn bounded_fifo_and_abandon() {
        let slots = Slots::new(1, 1);
        let first = match slots.acquire(|| false) {
            Acquire::Granted(p) => p,
            _ => panic!("the first request gets the slot"),
        };
        let leave = Arc::new(AtomicBool::new(false));
        let (s2, l2) = (slots.clone(), leave.clone());
        let waiter = std::thread::spawn(move || matches!(s2.acquire(|| l2.load(Ordering::SeqCst)), Acquire::Abandoned));
        while slots.load().1 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(slots.acquire(|| false), Acquire::Full));
        leave.store(true, Ordering::SeqCst);
        assert!(waiter.join().unwrap());
        assert_eq!(slots.load(), (1, 0));
        let s3 = slots.clone();
        let waiting = std::thread::spawn(move || matches!(s3.acquire(|| false), Acquire::Granted(_)));
        while slots.load().1 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(first);
        assert!(waiting.join().unwrap());
        assert_eq!(slots.load(), (0, 0));
    }
}
