//! The bounded job queue and the one worker thread that owns the [`Pipeline`].
//!
//! HTTP handlers push [`Job`]s and await a oneshot reply; the worker takes the first job and
//! every queued job that can share its UNet batch (same model settings, size, steps,
//! sampler, guidance; text-to-image only), runs them with [`Pipeline::generate_many`] and
//! answers each. Model switches go through the same queue so they happen between jobs, in
//! the order asked.

use super::models::Models;
use crate::error::ErrorKind;
use crate::pipeline::Pipeline;
use crate::{Error, Generated, Request};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::oneshot;

/// What a job asks the worker to do.
pub enum Work {
    /// `num_images` images, image `i` from seed `seed + i`; the scheduler may be empty (the
    /// model's own).
    Generate(Box<Request>),
    /// Load another model from the models folder by name.
    SwitchModel(String),
}

/// The answer to a job.
pub struct Outcome {
    /// Each image with its finished PNG bytes (all metadata chunks).
    pub images: Vec<(Generated, Vec<u8>)>,
    /// The run was interrupted; `images` holds those finished before.
    pub interrupted: bool,
}

/// Why a job failed, sorted for HTTP statuses.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure { kind: e.kind(), message: e.to_string() }
    }
}

pub type Reply = Result<Outcome, Failure>;

pub struct Job {
    pub work: Work,
    pub reply: oneshot::Sender<Reply>,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Full,
    Closing,
}

/// Where the running job is, for `/sdapi/v1/progress`.
#[derive(Debug, Clone, Default)]
pub struct ProgressState {
    pub active: bool,
    /// Model evaluations done and in all, over every image of the running batch.
    pub step: usize,
    pub steps: usize,
    pub started: Option<Instant>,
    /// Images in the running batch.
    pub images: usize,
    /// A PNG of the first image's latents, refreshed at most every [`PREVIEW_EVERY`].
    pub preview: Option<Arc<Vec<u8>>>,
}

/// How often the running job's preview is redrawn.
pub const PREVIEW_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub images: AtomicU64,
    pub steps: AtomicU64,
    pub errors: AtomicU64,
    pub rejected: AtomicU64,
    pub interrupted: AtomicU64,
    /// Time spent generating, in microseconds (for steps/s).
    pub busy_micros: AtomicU64,
    pub batches: AtomicU64,
}

/// The loaded model, as the API shows it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The name clients use (`sd_model_checkpoint`).
    pub name: String,
    /// sha256 of the UNet weights.
    pub hash: Option<String>,
    pub default_scheduler: String,
    pub default_size: (u32, u32),
}

/// State shared by the HTTP side and the worker.
pub struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    wake: Condvar,
    capacity: usize,
    max_batch: usize,
    interrupt: AtomicBool,
    closing: AtomicBool,
    pub progress: Mutex<ProgressState>,
    pub loaded: Mutex<Loaded>,
    pub metrics: Metrics,
}

/// Locks a mutex, taking the data of one a panicking thread left behind (the state is plain
/// counters and queues, still usable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    pub fn new(capacity: usize, max_batch: usize) -> Queue {
        Queue {
            jobs: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            capacity: capacity.max(1),
            max_batch: max_batch.max(1),
            interrupt: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            progress: Mutex::new(ProgressState::default()),
            loaded: Mutex::new(Loaded::default()),
            metrics: Metrics::default(),
        }
    }

    /// Queues a job unless the queue is full or the server is shutting down.
    pub fn push(&self, job: Job) -> Result<(), Rejected> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(Rejected::Closing);
        }
        let mut jobs = lock(&self.jobs);
        if jobs.len() >= self.capacity {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Rejected::Full);
        }
        jobs.push_back(job);
        self.wake.notify_one();
        Ok(())
    }

    /// Jobs waiting (not counting the running one).
    pub fn depth(&self) -> usize {
        lock(&self.jobs).len()
    }

    /// Stops the running job after its current step (A1111's interrupt).
    pub fn interrupt(&self) {
        self.interrupt.store(true, Ordering::SeqCst);
    }

    /// Refuses new jobs and answers the queued ones with "shutting down"; the running job
    /// finishes, unless `cancel_running`.
    pub fn close(&self, cancel_running: bool) {
        self.closing.store(true, Ordering::SeqCst);
        if cancel_running {
            self.interrupt();
        }
        let drained: Vec<Job> = lock(&self.jobs).drain(..).collect();
        for job in drained {
            let _ = job
                .reply
                .send(Err(Failure { kind: ErrorKind::Cancelled, message: "the server is shutting down".into() }));
        }
        self.wake.notify_all();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Waits for the next job and takes it with every queued job that can join its batch.
    /// `None` once closed and empty.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut jobs = lock(&self.jobs);
        loop {
            if let Some(first) = jobs.pop_front() {
                let Some(key) = batch_key(&first.work) else { return Some(vec![first]) };
                let mut images = images_of(&first.work);
                let mut batch = vec![first];
                let mut i = 0;
                while i < jobs.len() && images < self.max_batch {
                    let n = images_of(&jobs[i].work);
                    if images + n <= self.max_batch && batch_key(&jobs[i].work).as_ref() == Some(&key) {
                        images += n;
                        if let Some(job) = jobs.remove(i) {
                            batch.push(job);
                        }
                    } else {
                        i += 1;
                    }
                }
                return Some(batch);
            }
            if self.closing.load(Ordering::SeqCst) {
                return None;
            }
            jobs = self.wake.wait(jobs).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn images_of(work: &Work) -> usize {
    match work {
        Work::Generate(r) => r.num_images,
        Work::SwitchModel(_) => 0,
    }
}

/// What must be equal for two requests to share a UNet batch: everything but the prompts
/// and the seed. Image-to-image requests run alone.
fn batch_key(work: &Work) -> Option<String> {
    let Work::Generate(r) = work else { return None };
    if r.init_image.is_some() || r.mask.is_some() {
        return None;
    }
    let neutral = Request { prompt: String::new(), negative_prompt: None, seed: 0, num_images: 1, ..(**r).clone() };
    serde_json::to_string(&neutral).ok()
}

/// The worker thread's body: owns the pipeline until the queue closes.
pub fn run_worker(queue: Arc<Queue>, models: Models, mut pipe: Option<Pipeline>) {
    while let Some(batch) = queue.next_batch() {
        queue.interrupt.store(false, Ordering::SeqCst);
        let mut gen = Vec::new();
        for job in batch {
            match job.work {
                Work::SwitchModel(name) => {
                    let result = switch_model(&queue, &models, &mut pipe, &name);
                    let _ = job.reply.send(result.map(|()| Outcome { images: Vec::new(), interrupted: false }));
                }
                Work::Generate(req) => gen.push((*req, job.reply)),
            }
        }
        if gen.is_empty() {
            continue;
        }
        let Some(p) = pipe.as_ref() else {
            for (_, reply) in gen {
                let _ = reply.send(Err(Failure {
                    kind: ErrorKind::Model,
                    message: "no model is loaded (the last switch failed); choose one with sd_model_checkpoint".into(),
                }));
            }
            continue;
        };
        run_generation(&queue, p, gen);
    }
}

fn switch_model(queue: &Queue, models: &Models, pipe: &mut Option<Pipeline>, name: &str) -> Result<(), Failure> {
    if lock(&queue.loaded).name == name && pipe.is_some() {
        return Ok(());
    }
    let opts = models.load_options(name).map_err(Failure::from)?;
    // The old model goes first so two never share the memory; a failed load leaves none.
    *pipe = None;
    let loaded = models.load(&opts, false).map_err(Failure::from)?;
    *lock(&queue.loaded) = describe(name, &loaded);
    *pipe = Some(loaded);
    Ok(())
}

/// The API's view of a loaded pipeline.
pub fn describe(name: &str, p: &Pipeline) -> Loaded {
    Loaded {
        name: name.to_string(),
        hash: p.model().hash.clone(),
        default_scheduler: p.default_scheduler(),
        default_size: p.spec().default_size(),
    }
}

/// Checks each request against the model, then runs the valid ones in chunks of at most
/// `max_batch` images and answers each job.
fn run_generation(queue: &Queue, pipe: &Pipeline, jobs: Vec<(Request, oneshot::Sender<Reply>)>) {
    let mut valid = Vec::new();
    for (mut req, reply) in jobs {
        let checked = pipe.spec().sampler(&req.scheduler).and_then(|s| {
            req.scheduler = s.name();
            pipe.check(&req)
        });
        match checked {
            Ok(()) => valid.push((req, reply)),
            Err(e) => {
                queue.metrics.errors.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(e.into()));
            }
        }
    }
    if valid.is_empty() {
        return;
    }
    // One row per image: (job index, single-image request).
    let rows: Vec<(usize, Request)> = valid
        .iter()
        .enumerate()
        .flat_map(|(j, (r, _))| {
            (0..r.num_images).map(move |i| (j, Request { seed: r.image_seed(i), num_images: 1, ..r.clone() }))
        })
        .collect();
    let steps_each = valid.first().map_or(0, |(r, _)| r.steps);
    let total_steps = steps_each * rows.len().div_ceil(queue.max_batch).max(1);
    *lock(&queue.progress) = ProgressState {
        active: true,
        step: 0,
        steps: total_steps,
        started: Some(Instant::now()),
        images: rows.len(),
        preview: None,
    };
    let mut last_preview: Option<Instant> = None;
    let started = Instant::now();
    let mut results: Vec<Vec<(Generated, Vec<u8>)>> = valid.iter().map(|_| Vec::new()).collect();
    let mut failures: Vec<Option<Failure>> = valid.iter().map(|_| None).collect();
    let mut interrupted = false;
    let mut done_steps = 0;
    for chunk in rows.chunks(queue.max_batch) {
        if interrupted {
            break;
        }
        let reqs: Vec<Request> = chunk.iter().map(|(_, r)| r.clone()).collect();
        let mut last = 0;
        let mut on_step = |p: crate::pipeline::Progress| {
            queue.metrics.steps.fetch_add((p.step - last.min(p.step)) as u64, Ordering::Relaxed);
            last = p.step;
            let due = last_preview.is_none_or(|t| t.elapsed() >= PREVIEW_EVERY);
            let preview = if due { first_preview_png(pipe, p.latents).map(Arc::new) } else { None };
            if due {
                last_preview = Some(Instant::now());
            }
            let mut pr = lock(&queue.progress);
            if preview.is_some() {
                pr.preview = preview;
            }
            pr.step = done_steps + p.step;
            pr.steps = pr.steps.max(done_steps + p.steps);
            drop(pr);
            if queue.interrupt.load(Ordering::SeqCst) {
                p.cancel();
            }
        };
        queue.metrics.batches.fetch_add(1, Ordering::Relaxed);
        let mut outcome = pipe.generate_many(&reqs, &mut on_step).map(|images| (chunk.to_vec(), images));
        // A batch of several jobs that failed as a whole (say, out of memory) is retried one
        // job at a time, so one job's failure is not every job's.
        let owners: std::collections::BTreeSet<usize> = chunk.iter().map(|(j, _)| *j).collect();
        if matches!(&outcome, Err(e) if !matches!(e, Error::Cancelled)) && owners.len() > 1 {
            let mut parts = Vec::new();
            for j in owners {
                let rows: Vec<(usize, Request)> = chunk.iter().filter(|(o, _)| *o == j).cloned().collect();
                let reqs: Vec<Request> = rows.iter().map(|(_, r)| r.clone()).collect();
                match pipe.generate_many(&reqs, &mut on_step) {
                    Ok(images) => parts.push((rows, images)),
                    Err(Error::Cancelled) => {
                        interrupted = true;
                        break;
                    }
                    Err(e) => failures[j] = Some(e.into()),
                }
            }
            outcome = Ok(parts.into_iter().fold((Vec::new(), Vec::new()), |(mut r, mut g), (rows, images)| {
                r.extend(rows);
                g.extend(images);
                (r, g)
            }));
        }
        match outcome {
            Ok((rows, images)) => {
                for ((j, _), g) in rows.iter().zip(images) {
                    match crate::save::png_bytes(&g) {
                        Ok(png) => results[*j].push((g, png)),
                        Err(e) => failures[*j] = Some(e.into()),
                    }
                }
            }
            Err(Error::Cancelled) => interrupted = true,
            Err(e) => {
                let f = Failure::from(e);
                for (j, _) in chunk {
                    failures[*j] = Some(f.clone());
                }
            }
        }
        done_steps += steps_each;
    }
    queue.metrics.busy_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    if interrupted {
        queue.metrics.interrupted.fetch_add(1, Ordering::Relaxed);
    }
    *lock(&queue.progress) = ProgressState::default();
    for (((_, reply), images), failure) in valid.into_iter().zip(results).zip(failures) {
        let answer = match failure {
            Some(f) => {
                queue.metrics.errors.fetch_add(1, Ordering::Relaxed);
                Err(f)
            }
            None => {
                queue.metrics.images.fetch_add(images.len() as u64, Ordering::Relaxed);
                Ok(Outcome { images, interrupted })
            }
        };
        let _ = reply.send(answer);
    }
}

/// The first image's preview as a PNG (see [`Pipeline::preview`]); `None` when it cannot be
/// made, since a preview is never worth failing a job for.
fn first_preview_png(pipe: &Pipeline, latents: &tch::Tensor) -> Option<Vec<u8>> {
    let images = pipe.preview(latents).map_err(|e| log::debug!("no preview: {e}")).ok()?;
    crate::output::encode_png(images.first()?, &[]).ok()
}
