//! The pure batching rules, a plain function over plain data (no runtime, no clock):
//! unit-tested with made-up instants.
//!
//! - Whenever an instance is free it takes what is queued, up to `max_batch`.
//! - With `delay > 0` it may wait until the oldest entry has waited `delay` for a fuller
//!   batch, but never once a full batch is available (Triton's dynamic batcher).
//! - With `delay == 0` it takes whatever is there: one image at low load, full batches at
//!   high load (text-embeddings-inference's queue).
//! - Entries whose deadline passed or whose caller went away never reach a batch.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// One queued item with its timing.
#[derive(Debug)]
pub struct Queued<T> {
    pub item: T,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
}

/// What a free instance should do now.
#[derive(Debug)]
pub enum Next<T> {
    /// Run these, in queue order.
    Batch(Vec<Queued<T>>),
    /// Nothing ready yet: look again at this instant (or when something arrives).
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

/// The queue of one model.
#[derive(Debug)]
pub struct State<T> {
    queue: VecDeque<Queued<T>>,
    max_batch: usize,
    delay: Duration,
}

impl<T> State<T> {
    pub fn new(max_batch: usize, delay: Duration) -> Self {
        assert!(max_batch > 0, "max_batch must be positive");
        Self {
            queue: VecDeque::new(),
            max_batch,
            delay,
        }
    }

    pub fn push(&mut self, q: Queued<T>) {
        self.queue.push_back(q);
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Removes and returns entries whose deadline is at or before `now`, or that `dead`
    /// says nobody waits for any more.
    pub fn remove_dead(
        &mut self,
        now: Instant,
        dead: impl Fn(&T) -> bool,
    ) -> (Vec<Queued<T>>, Vec<Queued<T>>) {
        let mut expired = Vec::new();
        let mut cancelled = Vec::new();
        if self
            .queue
            .iter()
            .any(|q| q.deadline.is_some_and(|d| d <= now) || dead(&q.item))
        {
            let mut keep = VecDeque::with_capacity(self.queue.len());
            for q in self.queue.drain(..) {
                if dead(&q.item) {
                    cancelled.push(q);
                } else if q.deadline.is_some_and(|d| d <= now) {
                    expired.push(q);
                } else {
                    keep.push_back(q);
                }
            }
            self.queue = keep;
        }
        (expired, cancelled)
    }

    /// The earliest deadline still queued.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.iter().filter_map(|q| q.deadline).min()
    }

    /// The batching decision for one free instance at `now`. Call `remove_dead` first.
    pub fn next_batch(&mut self, now: Instant) -> Next<T> {
        let Some(oldest) = self.queue.front() else {
            return Next::Idle;
        };
        if self.queue.len() < self.max_batch && !self.delay.is_zero() {
            let ready_at = oldest.enqueued + self.delay;
            if ready_at > now {
                return Next::WaitUntil(ready_at);
            }
        }
        let n = self.queue.len().min(self.max_batch);
        Next::Batch(self.queue.drain(..n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn q(item: u32, enqueued: Instant) -> Queued<u32> {
        Queued {
            item,
            enqueued,
            deadline: None,
        }
    }

    fn items(n: Next<u32>) -> Vec<u32> {
        match n {
            Next::Batch(b) => b.into_iter().map(|q| q.item).collect(),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn zero_delay_takes_what_is_there_up_to_max() {
        let t = Instant::now();
        let mut s = State::new(4, Duration::ZERO);
        assert!(matches!(s.next_batch(t), Next::Idle));
        s.push(q(1, t));
        assert_eq!(
            items(s.next_batch(t)),
            vec![1],
            "low load: batch of one, no waiting"
        );
        for i in 0..10 {
            s.push(q(i, t));
        }
        assert_eq!(
            items(s.next_batch(t)),
            vec![0, 1, 2, 3],
            "high load: full batches in order"
        );
        assert_eq!(items(s.next_batch(t)), vec![4, 5, 6, 7]);
        assert_eq!(items(s.next_batch(t)), vec![8, 9]);
    }

    #[test]
    fn delay_waits_for_oldest_but_never_once_full() {
        let t = Instant::now();
        let mut s = State::new(3, Duration::from_millis(5));
        s.push(q(1, t));
        match s.next_batch(at(t, 1)) {
            Next::WaitUntil(w) => assert_eq!(w, at(t, 5)),
            other => panic!("{other:?}"),
        }
        s.push(q(2, at(t, 2)));
        s.push(q(3, at(t, 3)));
        // Full batch available at 3 ms: taken at once, before the delay is up.
        assert_eq!(items(s.next_batch(at(t, 3))), vec![1, 2, 3]);
        s.push(q(4, at(t, 10)));
        assert!(matches!(s.next_batch(at(t, 14)), Next::WaitUntil(_)));
        assert_eq!(
            items(s.next_batch(at(t, 15))),
            vec![4],
            "delay up: partial batch goes"
        );
    }

    #[test]
    fn expired_and_cancelled_entries_never_reach_a_batch() {
        let t = Instant::now();
        let mut s = State::new(8, Duration::ZERO);
        s.push(Queued {
            item: 1,
            enqueued: t,
            deadline: Some(at(t, 10)),
        });
        s.push(q(2, t));
        s.push(Queued {
            item: 3,
            enqueued: t,
            deadline: Some(at(t, 50)),
        });
        assert_eq!(s.next_deadline(), Some(at(t, 10)));
        let (expired, cancelled) = s.remove_dead(at(t, 10), |i| *i == 2);
        assert_eq!(expired.iter().map(|q| q.item).collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            cancelled.iter().map(|q| q.item).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(s.next_deadline(), Some(at(t, 50)));
        assert_eq!(items(s.next_batch(at(t, 11))), vec![3]);
    }
}
