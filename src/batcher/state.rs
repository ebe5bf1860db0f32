//! The pure batching rules, a plain function over plain data (no runtime, no clock):
//! unit-tested with made-up instants.
//!
//! - Whenever an instance is free it takes what is queued, up to `max_batch`.
//! - With `delay > 0` it may wait until the oldest entry has waited `delay` for a fuller
//!   batch, but never once a full batch is available (Triton's dynamic batcher).
//! - With `delay == 0` it takes whatever is there: one image at low load, full batches at
//!   high load (text-embeddings-inference's queue).
//! - Entries whose deadline passed or whose caller went away never reach a batch.
//! - Once batch durations are known, a formed batch is trimmed to the size that lets the
//!   most of its entries finish before their deadlines ([`plan`]): under overload the
//!   compute goes to requests that can still be answered.

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

    /// Puts entries taken by [`Self::next_batch`] back at the head of the queue, in order.
    pub fn requeue_front(&mut self, items: Vec<Queued<T>>) {
        for q in items.into_iter().rev() {
            self.queue.push_front(q);
        }
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

/// How to run a batch formed at `now` whose entries have `deadlines` (queue order), given
/// the estimated duration of a batch of each size: `(size, late)`: run the first `size`
/// entries, of which those at the indexes in `late` cannot finish in time (answer them
/// instead of computing them); the rest go back to the queue. The size is the one that lets
/// the most entries finish (the smallest such, which costs least); with no estimate, all of
/// them run.
pub fn plan(
    deadlines: &[Option<Instant>],
    now: Instant,
    cost: impl Fn(usize) -> Option<Duration>,
) -> (usize, Vec<usize>) {
    let n = deadlines.len();
    let finishing = |b: usize, t: Duration| {
        deadlines[..b]
            .iter()
            .filter(|d| d.is_none_or(|d| d >= now + t))
            .count()
    };
    let mut best: Option<(usize, usize, Duration)> = None; // (finishing, size, duration)
    for b in 1..=n {
        let Some(t) = cost(b) else {
            return (n, Vec::new());
        };
        let f = finishing(b, t);
        if best.is_none_or(|(bf, _, _)| f > bf) {
            best = Some((f, b, t));
        }
    }
    let Some((_, size, t)) = best else {
        return (0, Vec::new());
    };
    let late = (0..size)
        .filter(|&i| deadlines[i].is_some_and(|d| d < now + t))
        .collect();
    (size, late)
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

    #[test]
    fn plan_trims_the_batch_to_what_can_finish() {
        let t = Instant::now();
        let per_image = |b: usize| Some(Duration::from_millis(100 * b as u64));
        // No deadlines: everything runs.
        assert_eq!(plan(&[None, None, None], t, per_image), (3, vec![]));
        // No estimate yet: everything runs.
        assert_eq!(plan(&[Some(t), None], t, |_| None), (2, vec![]));
        // Deadlines 250, 250, 250, 1000 ms: a batch of 2 (200 ms) finishes two of them, a
        // batch of 4 (400 ms) only the last; a batch of 3 (300 ms) also one.
        let d = [
            Some(at(t, 250)),
            Some(at(t, 250)),
            Some(at(t, 250)),
            Some(at(t, 1000)),
        ];
        assert_eq!(plan(&d, t, per_image), (2, vec![]));
        // Head entry hopeless (50 ms left, a single image takes 100): it is answered, not
        // run, and the next two run.
        let d = [Some(at(t, 50)), Some(at(t, 900)), None];
        assert_eq!(plan(&d, t, per_image), (3, vec![0]));
        // A flat cost (a GPU): the full batch, less the one that cannot make it.
        let flat = |_| Some(Duration::from_millis(100));
        let d = [Some(at(t, 500)), Some(at(t, 90)), Some(at(t, 500))];
        assert_eq!(plan(&d, t, flat), (3, vec![1]));
        assert_eq!(plan(&[], t, per_image), (0, vec![]));
    }

    #[test]
    fn requeued_entries_come_back_first_in_order() {
        let t = Instant::now();
        let mut s = State::new(2, Duration::ZERO);
        for i in 0..4 {
            s.push(q(i, t));
        }
        let Next::Batch(b) = s.next_batch(t) else {
            panic!("a batch")
        };
        s.requeue_front(b);
        assert_eq!(items(s.next_batch(t)), vec![0, 1]);
        assert_eq!(items(s.next_batch(t)), vec![2, 3]);
    }
}
