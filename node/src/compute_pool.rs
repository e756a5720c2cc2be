//! The compute pool: the threads that run work units, at the lowest CPU
//! priority the OS offers, so a volunteer's own programs always win.
//!
//! Each worker lowers its own scheduling on start: `SCHED_IDLE` on Linux
//! (it only gets CPU nobody else wants; lowering one's own policy needs no
//! privilege), else `nice 19`; and best-effort idle I/O priority. Jobs are
//! boxed closures; each returns its result through a tokio oneshot so async
//! callers can await it. The queue is bounded: `submit` waits for room,
//! `try_submit` refuses when full, so a flood of assignments cannot pile up
//! memory. `shutdown` stops accepting, lets queued jobs finish and joins.
//!
//! Pausing running units is not the pool's business: the governor pauses
//! them through their `UnitControl`s (see [`crate::governor::UnitSet`]).

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Which priority a worker thread ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadPriority {
    /// Linux `SCHED_IDLE` (plus nice 19, which matters if the policy is
    /// ever reset).
    SchedIdle,
    /// `nice 19` only (SCHED_IDLE refused, or not Linux).
    Nice19,
    /// Nothing could be lowered; the pool still runs.
    Unchanged,
}

/// A worker thread and the priority it runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Kernel thread id (Linux `gettid`), e.g. for /proc/self/task/<tid>.
    pub tid: i64,
    pub priority: ThreadPriority,
}

/// Pool size and queue length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Worker threads (at least 1); see `Preferences::threads`.
    pub threads: usize,
    /// Jobs that may wait for a worker.
    pub queue_capacity: usize,
}

impl PoolConfig {
    /// `threads` workers and a queue twice as long: enough to keep every
    /// worker fed without hoarding units other peers could run.
    pub fn with_threads(threads: usize) -> Self {
        let threads = threads.max(1);
        PoolConfig {
            threads,
            queue_capacity: threads * 2,
        }
    }
}

/// Errors starting the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot start compute thread: {0}")]
    Spawn(std::io::Error),
}

/// Why a job was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the compute queue is full")]
    Full,
    #[error("the compute pool is shutting down")]
    ShutDown,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A job plus the queue slot it holds until a worker takes it.
struct Queued {
    job: Job,
    _slot: OwnedSemaphorePermit,
}

/// The pool. Dropping it stops accepting jobs and lets the workers finish
/// the queue in the background; [`ComputePool::shutdown`] also waits.
pub struct ComputePool {
    sender: Mutex<Option<mpsc::Sender<Queued>>>,
    slots: Arc<Semaphore>,
    workers: Vec<JoinHandle<()>>,
    info: Vec<WorkerInfo>,
}

impl std::fmt::Debug for ComputePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputePool")
            .field("workers", &self.info)
            .field("free_queue_slots", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

impl ComputePool {
    /// Starts `config.threads` workers and waits until each has lowered its
    /// priority, so [`ComputePool::workers`] is complete on return.
    pub fn new(config: PoolConfig) -> Result<ComputePool, PoolError> {
        let threads = config.threads.max(1);
        let (tx, rx) = mpsc::channel::<Queued>();
        let rx = Arc::new(Mutex::new(rx));
        let (info_tx, info_rx) = mpsc::channel();
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = rx.clone();
            let info_tx = info_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("formic-compute-{i}"))
                .spawn(move || {
                    let info = WorkerInfo {
                        tid: current_tid(),
                        priority: lower_current_thread_priority(),
                    };
                    let _ = info_tx.send(info);
                    drop(info_tx);
                    worker_loop(&rx);
                })
                .map_err(PoolError::Spawn)?;
            workers.push(handle);
        }
        drop(info_tx);
        let info: Vec<WorkerInfo> = info_rx.iter().take(threads).collect();
        for w in &info {
            tracing::debug!(tid = w.tid, priority = ?w.priority, "compute thread started");
        }
        tracing::info!(
            threads,
            queue = config.queue_capacity,
            "compute pool started"
        );
        Ok(ComputePool {
            sender: Mutex::new(Some(tx)),
            slots: Arc::new(Semaphore::new(config.queue_capacity.max(1))),
            workers,
            info,
        })
    }

    /// The workers and their priorities.
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.info
    }

    fn enqueue<T, F>(
        &self,
        slot: OwnedSemaphorePermit,
        f: F,
    ) -> Result<oneshot::Receiver<T>, SubmitError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The receiver may be gone (caller gave up): nothing to do then.
            let _ = tx.send(f());
        });
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = sender.as_ref().ok_or(SubmitError::ShutDown)?;
        sender
            .send(Queued { job, _slot: slot })
            .map_err(|_| SubmitError::ShutDown)?;
        Ok(rx)
    }

    /// Queues `f`, waiting for room in the queue. The receiver yields its
    /// result (an error if `f` panicked: the sender is dropped).
    pub async fn submit<T, F>(&self, f: F) -> Result<oneshot::Receiver<T>, SubmitError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SubmitError::ShutDown)?;
        self.enqueue(slot, f)
    }

    /// Queues `f` if there is room now.
    pub fn try_submit<T, F>(&self, f: F) -> Result<oneshot::Receiver<T>, SubmitError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|e| match e {
                tokio::sync::TryAcquireError::Closed => SubmitError::ShutDown,
                tokio::sync::TryAcquireError::NoPermits => SubmitError::Full,
            })?;
        self.enqueue(slot, f)
    }

    fn close(&self) {
        self.slots.close();
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Stops accepting jobs, lets queued and running ones finish, and waits
    /// for the workers. Call from a blocking context (it joins threads).
    pub fn shutdown(mut self) {
        self.close();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        tracing::info!("compute pool stopped");
    }
}

impl Drop for ComputePool {
    fn drop(&mut self) {
        self.close();
    }
}

fn worker_loop(rx: &Mutex<mpsc::Receiver<Queued>>) {
    loop {
        // Hold the lock only to take one job, never while running it.
        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Queued { job, _slot: slot }) = next else {
            return; // Sender gone and queue drained: shut down.
        };
        drop(slot); // The job left the queue: make room for another.
        // A panicking job must not take the worker with it; its oneshot
        // sender is dropped, which the submitter sees as an error.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::warn!("a compute job panicked");
        }
    }
}

/// The calling thread's kernel id.
pub fn current_tid() -> i64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no arguments and cannot fail.
        i64::from(unsafe { libc::gettid() })
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Lowers the calling thread to the lowest CPU (and I/O) priority allowed
/// and says which it got.
pub fn lower_current_thread_priority() -> ThreadPriority {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; param is a valid sched_param.
        let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
        // On Linux, PRIO_PROCESS with a thread id sets that thread's nice.
        // SAFETY: plain syscalls on the calling thread's own id.
        let nice =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) } == 0;
        // Idle I/O class (3 << 13) for the thread (IOPRIO_WHO_PROCESS = 1):
        // best effort, so a failure is only logged.
        // SAFETY: ioprio_set takes three integers.
        let io = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, libc::gettid(), 3 << 13) };
        if io != 0 {
            tracing::debug!("could not set idle I/O priority for a compute thread");
        }
        if idle {
            ThreadPriority::SchedIdle
        } else if nice {
            tracing::warn!("SCHED_IDLE refused; compute threads run at nice 19");
            ThreadPriority::Nice19
        } else {
            tracing::warn!("could not lower compute thread priority");
            ThreadPriority::Unchanged
        }
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        // On other Unixes nice applies to the whole process; the service
        // files (launchd `Nice 19`) lower it there.
        // SAFETY: plain syscall on the calling process.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } == 0 {
            ThreadPriority::Nice19
        } else {
            ThreadPriority::Unchanged
        }
    }
    #[cfg(not(unix))]
    {
        ThreadPriority::Unchanged
    }
}
