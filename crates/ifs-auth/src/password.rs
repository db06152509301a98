//! Password hashing with Argon2id (m = 19 MiB, t = 2, p = 1, the OWASP baseline), off the async
//! runtime because one hash takes tens of milliseconds of CPU, and bounded: each hash needs 19 MiB
//! of working memory, so at most one hash per core runs at once, a bounded number wait, and the
//! rest are turned away as busy. The working memory is allocated once per running hash and reused,
//! so that a burst of sign-ups cannot grow the process and leave it grown. Hashes run on threads
//! of their own under the idle scheduling policy, so that a flood of logins cannot take the cores
//! from requests that need microseconds (see docs/decisions.md).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use anyhow::Context as _;
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use ifs_admission::Admission;
use ifs_domain::Password;

/// How many hashes run at once and how many may wait for a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashLimits {
    pub parallel: usize,
    pub queue: usize,
}

impl HashLimits {
    /// One hash per core, and sixteen waiting per core: at ~35 ms a hash the last in the queue
    /// waits about half a second, which is as long as a login should ever take.
    #[must_use]
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self { parallel: cores, queue: 16 * cores }
    }
}

/// Why no hash was computed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing slot and queue place is taken; try again shortly.
    #[error("too many passwords are being hashed")]
    Busy,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Hashes and verifies passwords; cheap to clone, and clones share the limits.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

/// Verified against when the user does not exist, so that an unknown email costs the same time
/// as a wrong password and timing does not reveal who has an account. A constant with the
/// production parameters (a test holds it to them): computing one at start-up cost every cold
/// start of sign-up and login a whole hash (~25 ms).
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$WAE9SckS7aJwgw1YoXQvFg$d5KDgHiLMAMCWbOyexyJe3ioh7hhnVZIc8s62CPtke4";

struct Inner {
    params: Params,
    gate: Admission,
    workers: Workers,
    /// Working memory of finished hashes, for the next ones; never more than `parallel` buffers.
    memory: Mutex<Vec<Vec<Block>>>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.inner.params)
            .field("gate", &self.inner.gate)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// The production parameters, limited for this machine.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_limits(HashLimits::for_this_machine())
    }

    /// The production parameters with the given limits.
    pub fn with_limits(limits: HashLimits) -> anyhow::Result<Self> {
        let params = Params::new(19_456, 2, 1, None).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
        let inner = Inner {
            params,
            gate: Admission::new(limits.parallel, limits.queue),
            workers: Workers::start(limits.parallel.max(1))?,
            memory: Mutex::new(Vec::new()),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) for a new password.
    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let password = password.clone();
        self.run(move |inner| inner.hash_now(password.expose().as_bytes())).await?.map_err(HashError::from)
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown user) it verifies
    /// against the dummy hash and answers `false`, doing the same work either way.
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> Result<bool, HashError> {
        let known = stored.is_some();
        let stored = stored.map(str::to_owned);
        let password = password.clone();
        let matched = self
            .run(move |inner| {
                let hash = stored.as_deref().unwrap_or(DUMMY_HASH);
                inner.matches(password.expose().as_bytes(), hash)
            })
            .await?;
        Ok(known && matched)
    }

    /// Runs `work` on a hashing thread once the gate lets it in; the permit travels with the
    /// work, so a caller that gives up does not free a slot whose hash is still running.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = self.inner.gate.enter().await.map_err(|_| HashError::Busy)?;
        let inner = Arc::clone(&self.inner);
        let (done, result) = tokio::sync::oneshot::channel();
        self.inner.workers.submit(Box::new(move || {
            let _permit = permit;
            let _ = done.send(work(&inner));
        }))?;
        result.await.context("hashing task panicked").map_err(HashError::Unexpected)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// As many threads as hashes may run at once, each under `SCHED_IDLE`. They end when the
/// hasher (the last clone) is dropped.
struct Workers {
    jobs: mpsc::Sender<Job>,
}

impl Workers {
    fn start(count: usize) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..count {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = next else { return };
                        // A panicking hash reports itself through its dropped channel; the thread
                        // must live on for the next one.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .context("starting a hashing thread")?;
        }
        Ok(Self { jobs })
    }

    fn submit(&self, job: Job) -> anyhow::Result<()> {
        self.jobs.send(job).map_err(|_| anyhow::anyhow!("the hashing threads are gone"))
    }
}

/// Puts the calling thread under Linux's `SCHED_IDLE` policy: it runs only when no ordinary
/// thread wants the core, and gives the core back the moment one wakes. A lower nice value was not
/// enough (measured in docs/benchmarks.md): a niced hash still held the core for the rest of its
/// time slice while a request waited. No privilege is needed to lower one's own priority; should
/// it fail anyway, the thread falls back to the lowest nice value, and failing that, runs as is.
fn lower_priority() {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    let Err(error) = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        idle,
    ) else {
        return;
    };
    tracing::warn!(%error, "hashing threads cannot use SCHED_IDLE; trying the lowest nice value");
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::warn!(%error, "hashing threads run at normal priority");
    }
}

impl Inner {
    fn hash_now(&self, password: &[u8]) -> anyhow::Result<String> {
        let mut salt = [0_u8; 16];
        getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness for a salt: {e}"))?;
        let mut out = [0_u8; 32];
        self.compute(Algorithm::Argon2id, Version::V0x13, &self.params, password, &salt, &mut out)?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params)
                .map_err(|e| anyhow::anyhow!("encoding params: {e}"))?,
            salt: Some(Salt::new(&salt).map_err(|e| anyhow::anyhow!("encoding the salt: {e}"))?),
            hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("encoding the hash: {e}"))?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` hashes to `stored` under `stored`'s own parameters. A stored value that
    /// is not a usable PHC string matches nothing.
    fn matches(&self, password: &[u8], stored: &str) -> bool {
        let Ok(phc) = PasswordHash::new(stored) else { return false };
        let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else { return false };
        let (Ok(algorithm), Ok(params)) =
            (Algorithm::try_from(phc.algorithm.as_str()), Params::try_from(&phc))
        else {
            return false;
        };
        let version = phc.version.map_or(Ok(Version::default()), Version::try_from);
        let Ok(version) = version else { return false };
        let mut out = vec![0_u8; expected.len()];
        if self.compute(algorithm, version, &params, password, salt, &mut out).is_err() {
            return false;
        }
        // `Output`'s equality is constant-time.
        Output::new(&out).is_ok_and(|computed| &computed == expected)
    }

    /// One Argon2 computation in pooled memory (or, for a stored hash that needs more than ours,
    /// memory of its own).
    fn compute(
        &self,
        algorithm: Algorithm,
        version: Version,
        params: &Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> anyhow::Result<()> {
        let needed = params.block_count();
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_default();
        if memory.len() < needed {
            memory = vec![Block::default(); needed];
        }
        let result = Argon2::new(algorithm, version, params.clone())
            .hash_password_into_with_memory(password, salt, out, &mut memory[..needed])
            .map_err(|e| anyhow::anyhow!("argon2: {e}"));
        if needed == self.params.block_count() {
            self.memory.lock().unwrap_or_else(PoisonError::into_inner).push(memory);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_only_its_own_password() {
        let hasher = PasswordHasher::new().unwrap();
        let right = Password::parse("correct horse battery".into()).unwrap();
        let wrong = Password::offered("correct horse battery!".into());
        let hash = hasher.hash(&right).await.unwrap();

        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(hasher.verify(&right, Some(&hash)).await.unwrap());
        assert!(!hasher.verify(&wrong, Some(&hash)).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_are_standard_phc_strings_that_the_reference_implementation_accepts() {
        use argon2::PasswordVerifier as _;
        let hasher = PasswordHasher::new().unwrap();
        let hash = hasher.hash(&Password::parse("interoperable".into()).unwrap()).await.unwrap();
        assert!(Argon2::default().verify_password(b"interoperable", hash.as_str()).is_ok());

        // And hashes made by the reference implementation, with other parameters, verify here.
        let theirs = {
            use argon2::PasswordHasher as _;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(8192, 3, 1, None).unwrap())
                .hash_password(b"made elsewhere")
                .unwrap()
                .to_string()
        };
        assert!(hasher.verify(&Password::offered("made elsewhere".into()), Some(&theirs)).await.unwrap());
        assert!(!hasher.verify(&Password::offered("made elsewhere?".into()), Some(&theirs)).await.unwrap());
    }

    #[tokio::test]
    async fn the_same_password_hashes_differently_each_time() {
        let hasher = PasswordHasher::new().unwrap();
        let password = Password::parse("same same same".into()).unwrap();
        assert_ne!(hasher.hash(&password).await.unwrap(), hasher.hash(&password).await.unwrap());
    }

    #[test]
    /// The dummy hash costs what a real one costs: it is a whole, valid hash of its password
    /// under exactly the production parameters, so verifying against it runs the full work.
    fn the_dummy_hash_is_a_real_hash_with_the_production_parameters() {
        let hasher = PasswordHasher::new().unwrap();
        let phc = PasswordHash::new(DUMMY_HASH).unwrap();
        let (dummy, production) = (Params::try_from(&phc).unwrap(), &hasher.inner.params);
        let costs = |p: &Params| (p.m_cost(), p.t_cost(), p.p_cost());
        assert_eq!(costs(&dummy), costs(production));
        // The output length the PHC string records is the one our hashes have.
        assert_eq!(phc.hash.unwrap().len(), 32);
        assert_eq!(phc.algorithm.as_str(), "argon2id");
        assert!(hasher.inner.matches(b"not anyone's password", DUMMY_HASH));
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies_not_even_with_the_dummy_password() {
        let hasher = PasswordHasher::new().unwrap();
        let dummy = Password::offered("not anyone's password".into());
        assert!(!hasher.verify(&dummy, None).await.unwrap());
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_does_not_verify() {
        let hasher = PasswordHasher::new().unwrap();
        let password = Password::offered("whatever it is".into());
        for stored in
            ["not a phc string", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ", "$scrypt$ln=1$abc$def"]
        {
            assert!(!hasher.verify(&password, Some(stored)).await.unwrap(), "{stored}");
        }
    }

    #[tokio::test]
    async fn hashes_run_only_when_requests_leave_a_core_idle_and_survive_a_panic() {
        let hasher = PasswordHasher::with_limits(HashLimits { parallel: 1, queue: 1 }).unwrap();
        let policy = |_: &Inner| thread_priority::thread_schedule_policy().unwrap();
        let idle =
            thread_priority::ThreadSchedulePolicy::Normal(thread_priority::NormalThreadSchedulePolicy::Idle);
        assert_eq!(hasher.run(policy).await.unwrap(), idle);
        assert_ne!(policy(&hasher.inner), idle, "the caller's own thread keeps its policy");

        let panicked = hasher.run(|_| -> () { panic!("a hash went wrong") }).await;
        assert!(matches!(panicked, Err(HashError::Unexpected(_))));
        // The one thread lived on, and its slot was given back.
        let password = Password::parse("still works".into()).unwrap();
        let hash = hasher.hash(&password).await.unwrap();
        assert!(hasher.verify(&password, Some(&hash)).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beyond_the_running_and_waiting_places_hashing_is_busy_and_memory_stays_pooled() {
        let hasher = PasswordHasher::with_limits(HashLimits { parallel: 1, queue: 2 }).unwrap();
        let password = Password::parse("many at once".into()).unwrap();
        let attempts: Vec<_> = (0..12)
            .map(|_| {
                let (hasher, password) = (hasher.clone(), password.clone());
                tokio::spawn(async move { hasher.hash(&password).await })
            })
            .collect();
        let (mut hashed, mut busy) = (0, 0);
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(_) => hashed += 1,
                Err(HashError::Busy) => busy += 1,
                Err(other) => panic!("{other}"),
            }
        }
        // One running and two waiting at the moment the burst arrived; the rest were refused.
        assert!((1..=3).contains(&hashed) && hashed + busy == 12, "{hashed} hashed, {busy} busy");
        assert_eq!(hasher.inner.memory.lock().unwrap().len(), 1, "one buffer for one slot");
    }
}
