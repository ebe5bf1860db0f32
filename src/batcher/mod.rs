//! The batcher of one model: a cloneable [`Handle`] over a bounded queue, one async task
//! that owns the queue and applies the rules of [`state`], and one worker thread per model
//! instance that owns its ORT session and runs one batch at a time.
//!
//! Every entry carries its own oneshot reply. Images of one request are separate entries,
//! so they may be split across batches; the caller joins them back in order.

pub mod state;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::{error::Error, metrics::ModelMetrics};
use state::{Next, Queued, State};

/// Logits of one image, or why it has none.
pub type Reply = Result<Vec<f32>, Error>;

/// One image waiting to be run.
#[derive(Debug)]
pub struct Entry {
    pub input: Vec<f32>,
    pub reply: oneshot::Sender<Reply>,
}

/// What a worker thread runs: a model instance, or a stand-in in tests.
pub trait Runner: Send + 'static {
    /// Runs `batch` images laid out back to back in `input`; returns their logits.
    fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, String>;
    /// Config name of the execution provider, for metrics.
    fn provider(&self) -> &str;
}

impl Runner for crate::model::Instance {
    fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, String> {
        crate::model::Instance::run(self, input, batch)
    }
    fn provider(&self) -> &str {
        &self.provider
    }
}

/// Current time on tokio's clock (so tests can pause it), as a std instant.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The latest measured duration of a batch of each size (µs; 0 = not seen yet), shared by
/// the workers (which write it) and the admission and expiry checks (which read it).
///
/// A size not measured yet is interpolated linearly between the nearest sizes measured on
/// either side; with only smaller sizes seen it takes the largest of them (a batch never runs
/// faster than a smaller one, and on a GPU it may run no slower); with only larger sizes seen,
/// the nearest one scaled down in proportion to the size (exact on a CPU, short on a GPU,
/// where small batches cost more per image). So estimates err on the short side, and a
/// request that could still finish is rarely refused.
#[derive(Debug)]
pub struct BatchCosts {
    us: Vec<AtomicU64>,
}

impl BatchCosts {
    pub fn new(max_batch_size: usize) -> Self {
        Self {
            us: (0..max_batch_size.max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn record(&self, batch: usize, took: Duration) {
        if let Some(slot) = batch.checked_sub(1).and_then(|i| self.us.get(i)) {
            slot.store((took.as_micros() as u64).max(1), Ordering::Relaxed);
        }
    }

    /// Estimated duration of a batch of `batch` images; `None` before any batch ran.
    pub fn estimate(&self, batch: usize) -> Option<Duration> {
        let b = batch.clamp(1, self.us.len());
        let at = |size: usize| self.us[size - 1].load(Ordering::Relaxed);
        let below = (1..=b).rev().find(|&s| at(s) > 0);
        let above = (b + 1..=self.us.len()).find(|&s| at(s) > 0);
        let us = match (below, above) {
            (Some(lo), _) if lo == b => at(b),
            (Some(lo), Some(hi)) => {
                let (tl, th) = (at(lo) as f64, at(hi) as f64);
                (tl + (th - tl).max(0.0) * (b - lo) as f64 / (hi - lo) as f64) as u64
            }
            (Some(lo), None) => at(lo),
            (None, Some(hi)) => at(hi) * b as u64 / hi as u64,
            (None, None) => return None,
        };
        Some(Duration::from_micros(us))
    }

    /// Estimated time to run `images` images in full batches of `max` on `instances`
    /// instances working side by side.
    pub fn drain_time(&self, images: usize, instances: usize) -> Option<Duration> {
        let max = self.us.len();
        let (full, rest) = (images / max, images % max);
        let mut total = self.estimate(max)? * full as u32;
        if rest > 0 {
            total += self.estimate(rest)?;
        }
        Some(total / instances.max(1) as u32)
    }
}

/// Batching settings for one model.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: String,
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub queue_capacity: usize,
    pub slot_len: usize,
    pub num_classes: usize,
}

/// Cloneable submission side of the batcher.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Queued<Entry>>,
    depth: Arc<AtomicUsize>,
    settings: Arc<Settings>,
    costs: Arc<BatchCosts>,
    instances: usize,
}

impl Handle {
    /// Queues the images of one request, all or none. Fails at once with
    /// RESOURCE_EXHAUSTED when the queue cannot take them all.
    pub fn submit(
        &self,
        inputs: Vec<Vec<f32>>,
        deadline: Option<Instant>,
    ) -> Result<Vec<oneshot::Receiver<Reply>>, Error> {
        let n = inputs.len();
        let cap = self.settings.queue_capacity;
        if n > cap {
            return Err(Error::ResourceExhausted(format!(
                "request has {n} images but model {:?} queues at most {cap}",
                self.settings.model
            )));
        }
        // The depth counter is the real bound: it covers the channel and the task's queue.
        self.depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d + n <= cap).then_some(d + n)
            })
            .map_err(|_| Error::QueueFull {
                model: self.settings.model.clone(),
                capacity: cap,
            })?;
        let permits = match self.tx.try_reserve_many(n) {
            Ok(p) => p,
            Err(_) => {
                self.depth.fetch_sub(n, Ordering::AcqRel);
                return Err(Error::Unavailable(format!(
                    "model {:?} is shutting down",
                    self.settings.model
                )));
            }
        };
        let now = now();
        let mut rxs = Vec::with_capacity(n);
        for (permit, input) in permits.zip(inputs) {
            let (reply, rx) = oneshot::channel();
            permit.send(Queued {
                item: Entry { input, reply },
                enqueued: now,
                deadline,
            });
            rxs.push(rx);
        }
        Ok(rxs)
    }

    /// Checks at the door, before any decoding is spent on the request: is there room for
    /// `n` more images, and can they plausibly finish before `deadline`? (Estimated wait: the
    /// images queued ahead of them plus their own, in full batches spread over the model's
    /// instances, at the measured duration of batches of those sizes.)
    pub fn admit(&self, n: usize, deadline: Option<Instant>) -> Result<(), Error> {
        let cap = self.settings.queue_capacity;
        if n > cap {
            return Err(Error::ResourceExhausted(format!(
                "request has {n} images but model {:?} queues at most {cap}",
                self.settings.model
            )));
        }
        let depth = self.depth();
        if depth + n > cap {
            return Err(Error::QueueFull {
                model: self.settings.model.clone(),
                capacity: cap,
            });
        }
        // With nothing queued the request always gets its chance (this also keeps a stale,
        // pessimistic estimate from refusing everything forever).
        if let Some(d) = deadline
            && depth > 0
            && let Some(wait) = self.costs.drain_time(depth + n, self.instances)
            && now() + wait > d
        {
            return Err(Error::DeadlineExceeded(
                "queued: the images ahead would not finish in time",
            ));
        }
        Ok(())
    }

    /// Images queued right now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// Starts the queue task and one worker thread per instance. Must be called inside a
/// tokio runtime. The batcher stops when every [`Handle`] is dropped and the queue is empty.
pub fn spawn<R: Runner>(settings: Settings, instances: Vec<R>, metrics: ModelMetrics) -> Handle {
    assert!(
        !instances.is_empty(),
        "a batcher needs at least one instance"
    );
    let settings = Arc::new(settings);
    let (tx, rx) = mpsc::channel(settings.queue_capacity);
    let depth = Arc::new(AtomicUsize::new(0));
    let costs = Arc::new(BatchCosts::new(settings.max_batch_size));
    let n_instances = instances.len();
    // Workers report "free" on a channel sized to the number of workers: never blocks.
    let (free_tx, free_rx) = mpsc::channel(instances.len());
    let mut workers = Vec::with_capacity(instances.len());
    for (id, instance) in instances.into_iter().enumerate() {
        let (batch_tx, batch_rx) = mpsc::channel::<Vec<Queued<Entry>>>(1);
        workers.push(batch_tx);
        let free_tx = free_tx.clone();
        let metrics = metrics.clone();
        let settings = settings.clone();
        let costs = costs.clone();
        std::thread::Builder::new()
            .name(format!("wrn-{}-{id}", settings.model))
            .spawn(move || worker(id, instance, batch_rx, free_tx, settings, metrics, costs))
            .expect("spawning a model worker thread");
    }
    drop(free_tx);
    tokio::spawn(queue_task(
        settings.clone(),
        rx,
        free_rx,
        workers,
        depth.clone(),
        metrics,
        costs.clone(),
    ));
    Handle {
        tx,
        depth,
        settings,
        costs,
        instances: n_instances,
    }
}

async fn queue_task(
    settings: Arc<Settings>,
    mut rx: mpsc::Receiver<Queued<Entry>>,
    mut free_rx: mpsc::Receiver<usize>,
    workers: Vec<mpsc::Sender<Vec<Queued<Entry>>>>,
    depth: Arc<AtomicUsize>,
    metrics: ModelMetrics,
    costs: Arc<BatchCosts>,
) {
    let mut state: State<Entry> = State::new(settings.max_batch_size, settings.max_queue_delay);
    let mut free: Vec<usize> = (0..workers.len()).rev().collect();
    let mut open = true;
    // Cancelled callers are noticed at least this often even when nothing else happens.
    let sweep = Duration::from_millis(50);
    loop {
        let now = now();
        // An entry that cannot finish before its deadline is answered at once instead of
        // costing compute whose result nobody will wait for: under overload this keeps
        // goodput up instead of running batches that all expire. While every instance is
        // busy, nothing queued finishes sooner than a batch of one would take from now (a
        // free instance starts the head entry now; the batch plan below judges it).
        let horizon = match costs.estimate(1) {
            Some(one) if free.is_empty() && !state.is_empty() => now + one,
            _ => now,
        };
        let (expired, cancelled) = state.remove_dead(horizon, |e: &Entry| e.reply.is_closed());
        let removed = expired.len() + cancelled.len();
        // Failures are counted per request by the service, not here per image.
        for q in expired {
            let _ = q.item.reply.send(Err(Error::DeadlineExceeded(
                "waiting in the batch queue (it could not finish in time)",
            )));
        }
        if !cancelled.is_empty() {
            debug!(model = %settings.model, images = cancelled.len(), "dropped the work of cancelled calls");
        }
        if removed > 0 {
            depth.fetch_sub(removed, Ordering::AcqRel);
        }
        let lead = horizon.duration_since(now);
        let mut wake = state
            .next_deadline()
            .map(|d| d.checked_sub(lead).unwrap_or(now).max(now));
        while let Some(&w) = free.last() {
            match state.next_batch(now) {
                Next::Batch(mut batch) => {
                    // Trim the batch to the size that lets the most of it finish in time;
                    // the rest goes back to the queue, the hopeless are answered now.
                    let deadlines: Vec<Option<Instant>> =
                        batch.iter().map(|q| q.deadline).collect();
                    let (size, late) = state::plan(&deadlines, now, |b| costs.estimate(b));
                    state.requeue_front(batch.split_off(size));
                    if !late.is_empty() {
                        let mut kept = Vec::with_capacity(batch.len() - late.len());
                        for (i, q) in batch.into_iter().enumerate() {
                            if late.contains(&i) {
                                let _ = q.item.reply.send(Err(Error::DeadlineExceeded(
                                    "waiting in the batch queue (it could not finish in time)",
                                )));
                            } else {
                                kept.push(q);
                            }
                        }
                        depth.fetch_sub(late.len(), Ordering::AcqRel);
                        batch = kept;
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    free.pop();
                    depth.fetch_sub(batch.len(), Ordering::AcqRel);
                    for q in &batch {
                        metrics
                            .queue_wait
                            .record(now.duration_since(q.enqueued).as_secs_f64());
                    }
                    if workers[w].try_send(batch).is_err() {
                        warn!(model = %settings.model, worker = w, "model worker is gone");
                    }
                }
                Next::WaitUntil(t) => {
                    wake = Some(wake.map_or(t, |d| d.min(t)));
                    break;
                }
                Next::Idle => break,
            }
        }
        metrics
            .queue_depth
            .set(depth.load(Ordering::Acquire) as f64);
        if !open && state.is_empty() {
            debug!(model = %settings.model, "batcher queue closed and drained");
            return;
        }
        let sleep_until = if state.is_empty() {
            wake
        } else {
            Some(wake.map_or(now + sweep, |w| w.min(now + sweep)))
        };
        let sleep = async {
            match sleep_until {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = rx.recv(), if open => match msg {
                Some(q) => {
                    state.push(q);
                    // Take everything already waiting in the channel in one go.
                    while let Ok(q) = rx.try_recv() {
                        state.push(q);
                    }
                }
                None => open = false,
            },
            Some(w) = free_rx.recv() => free.push(w),
            _ = sleep => {}
        }
    }
}

fn worker<R: Runner>(
    id: usize,
    mut instance: R,
    mut batches: mpsc::Receiver<Vec<Queued<Entry>>>,
    free: mpsc::Sender<usize>,
    settings: Arc<Settings>,
    metrics: ModelMetrics,
    costs: Arc<BatchCosts>,
) {
    let ready = metrics.instances_ready(instance.provider());
    ready.increment(1.0);
    let mut input: Vec<f32> = Vec::with_capacity(settings.max_batch_size * settings.slot_len);
    while let Some(batch) = batches.blocking_recv() {
        // A caller may have gone away between batching and now: skip its work.
        let live: Vec<Entry> = batch
            .into_iter()
            .map(|q| q.item)
            .filter(|e| !e.reply.is_closed())
            .collect();
        if !live.is_empty() {
            input.clear();
            for e in &live {
                input.extend_from_slice(&e.input);
            }
            let started = Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                instance.run(&input, live.len())
            }))
            .unwrap_or_else(|_| Err("model run panicked".to_string()));
            let took = started.elapsed();
            costs.record(live.len(), took);
            metrics.compute.record(took.as_secs_f64());
            metrics.batch_size.record(live.len() as f64);
            metrics.batches.increment(1);
            match result {
                Ok(logits) => {
                    for (e, chunk) in live
                        .into_iter()
                        .zip(logits.chunks_exact(settings.num_classes))
                    {
                        let _ = e.reply.send(Ok(chunk.to_vec()));
                    }
                }
                Err(msg) => {
                    warn!(model = %settings.model, worker = id, error = %msg, "inference failed");
                    for e in live {
                        let _ = e
                            .reply
                            .send(Err(Error::Internal(format!("inference failed: {msg}"))));
                    }
                }
            }
        }
        if free.blocking_send(id).is_err() {
            break;
        }
    }
    ready.decrement(1.0);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Logits of each image are `[first input value, batch size]`; every batch is logged.
    /// With a gate, each batch waits for one permit before it runs.
    struct Fake {
        log: Arc<Mutex<Vec<Vec<f32>>>>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
        fail_on: Option<f32>,
    }

    impl Runner for Fake {
        fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, String> {
            if let Some(g) = &self.gate {
                g.recv().map_err(|_| "gate closed".to_string())?;
            }
            let firsts: Vec<f32> = input
                .chunks_exact(input.len() / batch)
                .map(|c| c[0])
                .collect();
            self.log.lock().unwrap().push(firsts.clone());
            if self.fail_on.is_some_and(|f| firsts.contains(&f)) {
                return Err("boom".into());
            }
            Ok(firsts.iter().flat_map(|&f| [f, batch as f32]).collect())
        }
        fn provider(&self) -> &str {
            "cpu"
        }
    }

    fn settings(max_batch: usize, delay_ms: u64, cap: usize) -> Settings {
        Settings {
            model: "fake".into(),
            max_batch_size: max_batch,
            max_queue_delay: Duration::from_millis(delay_ms),
            queue_capacity: cap,
            slot_len: 4,
            num_classes: 2,
        }
    }

    type Gate = Option<std::sync::mpsc::Sender<()>>;
    type Log = Arc<Mutex<Vec<Vec<f32>>>>;

    fn fake(gated: bool) -> (Fake, Log, Gate) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let f = Fake {
            log: log.clone(),
            gate: gated.then_some(rx),
            fail_on: None,
        };
        (f, log, gated.then_some(tx))
    }

    fn img(v: f32) -> Vec<f32> {
        vec![v; 4]
    }

    fn metrics() -> ModelMetrics {
        ModelMetrics::new("fake", "1")
    }

    #[tokio::test]
    async fn images_of_a_request_come_back_in_order_even_across_batches() {
        let (f, log, _) = fake(false);
        let h = spawn(settings(2, 0, 64), vec![f], metrics());
        let rxs = h
            .submit((0..5).map(|i| img(i as f32)).collect(), None)
            .unwrap();
        let mut got = Vec::new();
        for rx in rxs {
            got.push(rx.await.unwrap().unwrap()[0]);
        }
        assert_eq!(got, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        let batches = log.lock().unwrap().clone();
        assert!(
            batches.iter().all(|b| b.len() <= 2),
            "max batch respected: {batches:?}"
        );
        assert!(
            batches.len() >= 3,
            "five images need at least three batches of two: {batches:?}"
        );
    }

    #[tokio::test]
    async fn load_forms_full_batches_while_the_instance_is_busy() {
        let (f, log, gate) = fake(true);
        let gate = gate.unwrap();
        let h = spawn(settings(4, 0, 64), vec![f], metrics());
        let first = h.submit(vec![img(100.0)], None).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // the worker now holds [100]
        let rest = h
            .submit((0..8).map(|i| img(i as f32)).collect(), None)
            .unwrap();
        for _ in 0..3 {
            gate.send(()).unwrap();
        }
        first.into_iter().next().unwrap().await.unwrap().unwrap();
        for rx in rest {
            rx.await.unwrap().unwrap();
        }
        let batches = log.lock().unwrap().clone();
        assert_eq!(
            batches,
            vec![
                vec![100.0],
                vec![0.0, 1.0, 2.0, 3.0],
                vec![4.0, 5.0, 6.0, 7.0]
            ]
        );
    }

    #[tokio::test]
    async fn full_queue_rejects_at_once_with_resource_exhausted() {
        let (f, _log, gate) = fake(true);
        let gate = gate.unwrap();
        let h = spawn(settings(1, 0, 3), vec![f], metrics());
        let a = h.submit(vec![img(1.0), img(2.0), img(3.0)], None).unwrap();
        let err = h.submit(vec![img(4.0)], None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.to_string().contains("queue is full"), "{err}");
        let too_big = h
            .submit((0..4).map(|i| img(i as f32)).collect(), None)
            .unwrap_err();
        assert_eq!(too_big.code(), tonic::Code::ResourceExhausted);
        for _ in 0..3 {
            gate.send(()).unwrap();
        }
        for rx in a {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(h.depth(), 0, "depth returns to zero");
        gate.send(()).unwrap();
        let b = h.submit(vec![img(5.0)], None).unwrap();
        b.into_iter().next().unwrap().await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_fires_on_its_timer_and_the_work_never_runs() {
        let (f, log, gate) = fake(true);
        let gate = gate.unwrap();
        let h = spawn(settings(4, 0, 64), vec![f], metrics());
        let busy = h.submit(vec![img(1.0)], None).unwrap();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let start = tokio::time::Instant::now();
        let deadline = now() + Duration::from_millis(100);
        let late = h.submit(vec![img(2.0)], Some(deadline)).unwrap();
        let r = late.into_iter().next().unwrap().await.unwrap();
        let waited = start.elapsed();
        assert_eq!(r.unwrap_err().code(), tonic::Code::DeadlineExceeded);
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_millis(200),
            "fired at {waited:?}"
        );
        gate.send(()).unwrap();
        busy.into_iter().next().unwrap().await.unwrap().unwrap();
        assert_eq!(
            log.lock().unwrap().clone(),
            vec![vec![1.0]],
            "expired work never reached the model"
        );
        assert_eq!(h.depth(), 0);
    }

    /// Sleeps a fixed time per batch, like a model.
    struct Slow(Arc<Mutex<Vec<Vec<f32>>>>, Duration);
    impl Runner for Slow {
        fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, String> {
            std::thread::sleep(self.1);
            let firsts: Vec<f32> = input
                .chunks_exact(input.len() / batch)
                .map(|c| c[0])
                .collect();
            self.0.lock().unwrap().push(firsts.clone());
            Ok(firsts.iter().flat_map(|&f| [f, batch as f32]).collect())
        }
        fn provider(&self) -> &str {
            "cpu"
        }
    }

    #[tokio::test]
    async fn work_that_cannot_finish_before_its_deadline_is_refused_without_running() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let h = spawn(
            settings(1, 0, 64),
            vec![Slow(log.clone(), Duration::from_millis(400))],
            metrics(),
        );
        // A first batch teaches the batcher that a batch takes about 400 ms.
        h.submit(vec![img(1.0)], None)
            .unwrap()
            .remove(0)
            .await
            .unwrap()
            .unwrap();
        let busy = h.submit(vec![img(2.0)], None).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // 300 ms left: less than one batch, so it can never be answered in time.
        let hopeless = h
            .submit(vec![img(3.0)], Some(now() + Duration::from_millis(300)))
            .unwrap();
        let e = hopeless
            .into_iter()
            .next()
            .unwrap()
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        busy.into_iter().next().unwrap().await.unwrap().unwrap();
        assert_eq!(
            log.lock().unwrap().clone(),
            vec![vec![1.0], vec![2.0]],
            "the hopeless image never ran"
        );
        // With time to spare, work is accepted and runs.
        let fine = h
            .submit(vec![img(4.0)], Some(now() + Duration::from_secs(5)))
            .unwrap();
        fine.into_iter().next().unwrap().await.unwrap().unwrap();
    }

    #[test]
    fn batch_costs_estimate_by_size_and_err_short() {
        let c = BatchCosts::new(4);
        assert_eq!(c.estimate(1), None, "nothing measured yet");
        assert_eq!(c.drain_time(3, 1), None);
        c.record(4, Duration::from_millis(400));
        assert_eq!(c.estimate(4), Some(Duration::from_millis(400)));
        assert_eq!(
            c.estimate(1),
            Some(Duration::from_millis(100)),
            "only a larger size seen: scaled down"
        );
        assert_eq!(c.estimate(9), Some(Duration::from_millis(400)), "clamped");
        c.record(2, Duration::from_millis(150));
        assert_eq!(
            c.estimate(3),
            Some(Duration::from_millis(275)),
            "between the sizes seen on either side"
        );
        let only_smaller = BatchCosts::new(8);
        only_smaller.record(2, Duration::from_millis(150));
        assert_eq!(only_smaller.estimate(6), Some(Duration::from_millis(150)));
        assert_eq!(c.estimate(1), Some(Duration::from_millis(75)));
        // 9 images: two full batches of 4 and one of 1, over two instances
        assert_eq!(c.drain_time(9, 2), Some(Duration::from_micros(437_500)));
        c.record(0, Duration::from_secs(1)); // ignored, never panics
        c.record(5, Duration::from_secs(1));
        assert_eq!(c.estimate(4), Some(Duration::from_millis(400)));
    }

    /// Sleeps a fixed time per image, like a model on a CPU.
    struct PerImage(Duration);
    impl Runner for PerImage {
        fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, String> {
            std::thread::sleep(self.0 * batch as u32);
            Ok(input
                .chunks_exact(input.len() / batch)
                .flat_map(|c| [c[0], batch as f32])
                .collect())
        }
        fn provider(&self) -> &str {
            "cpu"
        }
    }

    /// Runs one full batch of 4 through `h` (which teaches it that batch's duration).
    async fn run_full_batch(h: &Handle) {
        for rx in h
            .submit((0..4).map(|i| img(i as f32)).collect(), None)
            .unwrap()
        {
            rx.await.unwrap().unwrap();
        }
    }

    /// Submits one image and returns once an instance has taken it (the queue is empty).
    async fn start_one(h: &Handle, v: f32) -> Vec<oneshot::Receiver<Reply>> {
        let rx = h.submit(vec![img(v)], None).unwrap();
        while h.depth() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        rx
    }

    #[tokio::test]
    async fn admission_after_a_full_batch_judges_small_requests_by_their_own_size() {
        let h = spawn(
            settings(4, 0, 64),
            vec![PerImage(Duration::from_millis(300))],
            metrics(),
        );
        // One full batch: 4 images, about 1.2 s. A single image costs about 300 ms.
        run_full_batch(&h).await;
        let busy = start_one(&h, 10.0).await; // running now (for 300 ms)
        let queued = h.submit(vec![img(11.0)], None).unwrap();
        assert_eq!(h.depth(), 1);
        // Ahead: one queued image; with this one, a batch of two: about 600 ms.
        h.admit(1, Some(now() + Duration::from_millis(1000)))
            .expect("a batch of two fits in 1 s: the batch of four's 1.2 s must not count");
        let e = h
            .admit(1, Some(now() + Duration::from_millis(400)))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        for rx in busy.into_iter().chain(queued) {
            rx.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn batches_are_trimmed_so_that_their_deadlines_can_be_met() {
        let h = spawn(
            settings(4, 0, 64),
            vec![PerImage(Duration::from_millis(150))],
            metrics(),
        );
        run_full_batch(&h).await; // teaches: a batch of four takes about 600 ms
        let busy = start_one(&h, 9.0).await;
        // Queued behind the busy image: two with 700 ms left and two without a deadline. A
        // batch of four (600 ms, after the busy one's 150) would miss both deadlines; a batch
        // of three (450 ms) meets them, and the fourth image runs after.
        let soon = Some(now() + Duration::from_millis(700));
        let mut rxs = h.submit(vec![img(1.0), img(2.0)], soon).unwrap();
        rxs.extend(h.submit(vec![img(3.0), img(4.0)], None).unwrap());
        busy.into_iter().next().unwrap().await.unwrap().unwrap();
        let mut sizes = Vec::new();
        for rx in rxs {
            sizes.push(rx.await.unwrap().expect("every image finished in time")[1]);
        }
        assert_eq!(sizes, vec![3.0, 3.0, 3.0, 1.0]);
    }

    #[tokio::test]
    async fn cancelled_callers_are_skipped() {
        let (f, log, gate) = fake(true);
        let gate = gate.unwrap();
        let h = spawn(settings(4, 0, 64), vec![f], metrics());
        let busy = h.submit(vec![img(1.0)], None).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let gone = h.submit(vec![img(2.0), img(3.0)], None).unwrap();
        drop(gone); // the client went away
        let kept = h.submit(vec![img(4.0)], None).unwrap();
        gate.send(()).unwrap();
        gate.send(()).unwrap();
        busy.into_iter().next().unwrap().await.unwrap().unwrap();
        kept.into_iter().next().unwrap().await.unwrap().unwrap();
        let batches = log.lock().unwrap().clone();
        assert_eq!(
            batches,
            vec![vec![1.0], vec![4.0]],
            "cancelled images never ran: {batches:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queue_delay_waits_for_a_fuller_batch_but_not_past_the_delay() {
        let (f, log, _) = fake(false);
        let h = spawn(settings(4, 10, 64), vec![f], metrics());
        let start = tokio::time::Instant::now();
        let a = h.submit(vec![img(1.0)], None).unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
        let b = h.submit(vec![img(2.0)], None).unwrap();
        let ra = a.into_iter().next().unwrap().await.unwrap().unwrap();
        let rb = b.into_iter().next().unwrap().await.unwrap().unwrap();
        assert_eq!((ra[1], rb[1]), (2.0, 2.0), "both ran in one batch of two");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(10) && waited < Duration::from_millis(15),
            "{waited:?}"
        );
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_full_batch_never_waits_for_the_delay() {
        // Real clock: with a 5 s delay, a full batch must go long before the delay is up.
        let (f, log, _) = fake(false);
        let h = spawn(settings(4, 5000, 64), vec![f], metrics());
        let start = Instant::now();
        let full = h
            .submit((0..4).map(|i| img(10.0 + i as f32)).collect(), None)
            .unwrap();
        for rx in full {
            rx.await.unwrap().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_millis(2500),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            log.lock().unwrap().clone(),
            vec![vec![10.0, 11.0, 12.0, 13.0]]
        );
    }

    #[tokio::test]
    async fn a_failing_batch_fails_only_its_own_entries_and_work_continues() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let f = Fake {
            log: log.clone(),
            gate: None,
            fail_on: Some(13.0),
        };
        let h = spawn(settings(1, 0, 64), vec![f], metrics());
        let bad = h.submit(vec![img(13.0)], None).unwrap();
        let good = h.submit(vec![img(14.0)], None).unwrap();
        let e = bad.into_iter().next().unwrap().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert_eq!(
            good.into_iter().next().unwrap().await.unwrap().unwrap()[0],
            14.0
        );
    }

    #[tokio::test]
    async fn work_spreads_over_instances() {
        let (f1, log1, g1) = fake(true);
        let (f2, log2, g2) = fake(true);
        let h = spawn(settings(1, 0, 64), vec![f1, f2], metrics());
        let rxs = h.submit(vec![img(1.0), img(2.0)], None).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        g1.unwrap().send(()).unwrap();
        g2.unwrap().send(()).unwrap();
        for rx in rxs {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(log1.lock().unwrap().len(), 1, "each instance ran one batch");
        assert_eq!(log2.lock().unwrap().len(), 1);
    }
}
