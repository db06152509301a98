//! Continuous batching: one thread per model owns its one llama.cpp context, whose KV cache holds
//! many sequences, and decodes every running generation's next token in one batch per step —
//! one pass over the weights serves them all, as `llama-server --parallel` does. New requests
//! join between steps; their prompts are evaluated a micro-batch per step beside the others'
//! tokens, so a long prompt never stalls a stream. A sequence that finished keeps the KV state of
//! what it evaluated for a later prompt that begins the same way (the next turn of its
//! dialogue), until a request that it does not serve takes it, least recently used first.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::decode::Utf8Decoder;
use crate::engine::{Completion, EngineError, Finish, Job, Prompt, Timings};
use crate::stop::{find_stop, held_back};

/// Prompts are evaluated in micro-batches of at most this many tokens, one per step, so a stream
/// beside them waits for one micro-batch at most.
pub const MICRO_BATCH: usize = 128;

/// The fewest rows of a sequence whose state is exact. llama.cpp's CPU attention takes a sequence's
/// rows of a batch 64 at a time (`GGML_FA_TILE_Q`) when it has at least that many, adding up in
/// f32, and one by one otherwise, adding up in f16 — a few tenths of a logit apart. Measured
/// (`examples/chunking.rs`): a prompt evaluated in any micro-batches of 64 to 128 tokens, with
/// any prefix taken from another prompt's state, gives the same logits bit for bit as evaluated
/// whole, and one micro-batch under 64 changes them. So a prompt is cut into micro-batches of at
/// least this many, and state evaluated so is what a fresh evaluation makes.
pub const EXACT_ROWS: usize = 64;

/// The size of the next micro-batch of a prompt with `left` tokens to go: never under
/// [`EXACT_ROWS`] unless the whole rest is.
#[must_use]
pub fn micro_batch(left: usize) -> usize {
    if left <= MICRO_BATCH {
        left
    } else if left < MICRO_BATCH + EXACT_ROWS {
        left / 2
    } else {
        MICRO_BATCH
    }
}

/// The decode loop's llama.cpp context: `sequences` sequences of `context` tokens each, `parallel`
/// of them decoded together, on `threads` threads. Public so that the probes in `examples/`
/// measure the context the loop uses.
#[must_use]
pub fn context_params(context: u32, sequences: u32, parallel: u32, threads: u32) -> LlamaContextParams {
    // A batch is a micro-batch of prompts or a token of every running sequence.
    let step = (MICRO_BATCH as u32).max(parallel);
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(context.saturating_mul(sequences)))
        .with_n_batch(step)
        .with_n_ubatch(step)
        .with_n_seq_max(sequences)
        // A KV cache of `context` cells for each sequence, as llama-server's slots have: a token
        // attends to its own sequence's cells only, where one pool for all would make every
        // prompt token scan every sequence's cells.
        .with_kv_unified(false)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32)
}

/// Receives each piece of a reply as it is decoded, and "" after every batch; `Break` ends the
/// generation (its reader went away).
pub type OnText = Box<dyn FnMut(&str) -> ControlFlow<()> + Send>;
/// Receives how a generation ended; called exactly once.
pub type OnEnd = Box<dyn FnOnce(Result<Completion, EngineError>) + Send>;

/// A generation handed to the loop: the prompt is already fitted and tokenized.
pub(crate) struct Request {
    pub job: Job,
    pub prompt: Prompt,
    pub on_text: OnText,
    pub on_end: OnEnd,
    /// When it was handed over: its time to first token counts from here.
    pub submitted: Instant,
}

/// How the loop's context is shaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Tokens one generation may hold (prompt and reply).
    pub context: u32,
    /// Generations decoded together.
    pub parallel: u32,
    /// Sequences that keep what they evaluated for a later prompt beginning the same way: the
    /// loop has `max(parallel, cached)` sequences; 0 keeps nothing.
    pub cached: u32,
    pub reuse: Reuse,
    pub threads: u32,
}

/// How much of a kept state a later prompt reuses (`AGENT_PROMPT_CACHE_REUSE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reuse {
    /// `exact` for a request whose reply must be repeatable (temperature 0, or a seed), `all` for
    /// one sampled at random, whose reply nobody can compare with another.
    #[default]
    Auto,
    /// Only state that is bit for bit what a fresh evaluation makes (prompts evaluated in
    /// micro-batches of at least [`EXACT_ROWS`] from position 0): a reply at temperature 0 is the
    /// same with and without the cache.
    Exact,
    /// Every token the earlier generation evaluated, its reply included, as `llama-server`'s
    /// `cache_prompt`: a next turn evaluates only what is new, and its reply may differ from the
    /// uncached one in a rare near-tie (llama.cpp's numbers depend on how tokens were batched).
    All,
}

impl Reuse {
    /// The setting's value, as `AGENT_PROMPT_CACHE_REUSE` spells it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Exact => "exact",
            Self::All => "all",
        }
    }

    /// Whether `job` may reuse only state that a fresh evaluation would make bit for bit.
    fn exact_for(self, job: &Job) -> bool {
        match self {
            Self::Auto => job.temperature <= 0.0 || job.seed.is_some(),
            Self::Exact => true,
            Self::All => false,
        }
    }
}

/// How many tokens of `sequence`'s state serve `prompt`: never its last one, which is evaluated
/// for its logits; when `exact`, only its exact prefix, and never so much that fewer than
/// [`EXACT_ROWS`] are left to evaluate (they would be evaluated as no fresh evaluation does).
fn usable(sequence: &Sequence, prompt: &[LlamaToken], exact: bool) -> usize {
    let shared = common_prefix(&sequence.tokens, prompt).min(prompt.len().saturating_sub(1));
    if exact { shared.min(sequence.exact).min(prompt.len().saturating_sub(EXACT_ROWS)) } else { shared }
}

/// The handle to a model's decode loop; dropping it ends the loop once its work is done.
pub(crate) struct Batcher {
    requests: mpsc::Sender<Request>,
}

impl Batcher {
    /// Creates the context and starts the loop that owns it.
    pub fn start(
        backend: &'static LlamaBackend,
        model: &'static LlamaModel,
        shape: Shape,
    ) -> anyhow::Result<Self> {
        let (requests, incoming) = mpsc::channel();
        let (ready, started) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("llama-decode".into())
            .spawn(move || match Loop::new(backend, model, shape) {
                Ok(mut decode_loop) => {
                    let _ = ready.send(Ok(()));
                    decode_loop.run(&incoming);
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                }
            })
            .context("starting the decode loop")?;
        started.recv().context("the decode loop died while starting")??;
        Ok(Self { requests })
    }

    /// Hands `request` to the loop; if the loop is gone, its end says so.
    pub fn submit(&self, request: Request) {
        if let Err(mpsc::SendError(request)) = self.requests.send(request) {
            (request.on_end)(Err(anyhow::anyhow!("the decode loop has stopped").into()));
        }
    }
}

/// One llama.cpp sequence: a generation's, or the state a finished one kept.
struct Sequence {
    id: i32,
    /// The tokens whose KV state the sequence holds, at positions 0..len.
    tokens: Vec<LlamaToken>,
    /// How many of `tokens` hold exactly the state a fresh evaluation of them makes: prompt
    /// tokens evaluated in order from position 0 in micro-batches of at least [`EXACT_ROWS`].
    /// A shorter micro-batch, one after a reuse that was not exact, and generated tokens end it.
    exact: usize,
    /// The [`Job::cache_key`] of the prompt that left the state.
    key: Option<String>,
    /// When it was last used, for least-recently-used eviction.
    used: u64,
    running: Option<Running>,
}

/// A generation under way in a sequence.
struct Running {
    request: Request,
    /// Prompt tokens whose state came from the sequence's earlier prompt.
    reused: usize,
    /// The order it was admitted in: prompts are evaluated first come, first served.
    admitted: u64,
    /// None at temperature 0: the most likely token, read straight from the logits.
    sampler: Option<LlamaSampler>,
    decoder: Utf8Decoder,
    reply: String,
    /// Bytes of `reply` handed to `on_text`.
    sent: usize,
    produced: u32,
    /// The token to evaluate next step, once the prompt is done.
    next: Option<LlamaToken>,
    /// Where its logits are in the batch being evaluated; taken when they are read.
    logits: Option<i32>,
    prompt_time: Option<Duration>,
    first_token: Option<Duration>,
    generation_started: Option<Instant>,
}

impl Running {
    fn prompt_done(&self, evaluated: usize) -> bool {
        evaluated >= self.request.prompt.tokens.len()
    }
}

/// The loop's state: the context and its sequences.
struct Loop {
    ctx: LlamaContext<'static>,
    model: &'static LlamaModel,
    sequences: Vec<Sequence>,
    waiting: VecDeque<Request>,
    batch: LlamaBatch<'static>,
    parallel: usize,
    /// What a request may reuse of a kept state: None when `AGENT_PROMPT_CACHE` is 0, and a
    /// finished sequence keeps nothing.
    reuse: Option<Reuse>,
    clock: u64,
}

impl Loop {
    fn new(backend: &'static LlamaBackend, model: &'static LlamaModel, shape: Shape) -> anyhow::Result<Self> {
        let parallel = shape.parallel;
        let sequences = parallel.max(shape.cached);
        let params = context_params(shape.context, sequences, parallel, shape.threads);
        let batch = LlamaBatch::new(params.n_batch() as usize, 1);
        let ctx = model.new_context(backend, params).context("creating a llama.cpp context")?;
        Ok(Self {
            ctx,
            model,
            sequences: (0..sequences as i32)
                .map(|id| Sequence { id, tokens: Vec::new(), exact: 0, key: None, used: 0, running: None })
                .collect(),
            waiting: VecDeque::new(),
            batch,
            parallel: parallel as usize,
            reuse: (shape.cached > 0).then_some(shape.reuse),
            clock: 0,
        })
    }

    fn run(&mut self, incoming: &mpsc::Receiver<Request>) {
        loop {
            if self.idle() {
                match incoming.recv() {
                    Ok(request) => self.waiting.push_back(request),
                    Err(_) => return,
                }
            }
            while let Ok(request) = incoming.try_recv() {
                self.waiting.push_back(request);
            }
            self.admit();
            // A panic in a step (a reader's callback, a bug of ours or of llama-cpp-2) must not
            // take the loop down, and every later request with it: the generations under way end
            // with an error and the loop goes on with an empty cache.
            if std::panic::catch_unwind(AssertUnwindSafe(|| self.step())).is_err() {
                self.fail_all(&anyhow::anyhow!("the generation failed unexpectedly"));
            }
        }
    }

    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.sequences.iter().all(|s| s.running.is_none())
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Gives waiting requests a sequence each, up to `parallel` running: the idle sequence whose
    /// state serves the most of the prompt ([`usable`]; left by a prompt with the same key), else
    /// the least recently used one.
    fn admit(&mut self) {
        while self.sequences.iter().filter(|s| s.running.is_some()).count() < self.parallel {
            let Some(request) = self.waiting.pop_front() else { return };
            let tokens = &request.prompt.tokens;
            let key = request.job.cache_key.as_deref();
            let exact = self.reuse.map(|reuse| reuse.exact_for(&request.job));
            let usable = |s: &Sequence| match exact {
                Some(exact) if s.key.as_deref() == key => usable(s, tokens, exact),
                _ => 0,
            };
            let Some((index, reused)) = self
                .sequences
                .iter()
                .enumerate()
                .filter(|(_, s)| s.running.is_none())
                .map(|(i, s)| (i, usable(s), s.used))
                .max_by_key(|&(_, reused, used)| (reused, if reused > 0 { used } else { u64::MAX - used }))
                .map(|(i, reused, _)| (i, reused))
            else {
                self.waiting.push_front(request);
                return;
            };
            let admitted = self.tick();
            let sequence = &mut self.sequences[index];
            sequence.tokens.truncate(reused);
            sequence.exact = sequence.exact.min(reused);
            let _ = self.ctx.clear_kv_cache_seq(Some(sequence.id as u32), Some(reused as u32), None);
            sequence.key = request.job.cache_key.clone();
            sequence.running = Some(Running {
                sampler: sampler(&request.job),
                request,
                reused,
                admitted,
                decoder: Utf8Decoder::new(),
                reply: String::new(),
                sent: 0,
                produced: 0,
                next: None,
                logits: None,
                prompt_time: None,
                first_token: None,
                generation_started: None,
            });
        }
    }

    /// One step: every generating sequence's next token in one batch, then a micro-batch of the
    /// oldest waiting prompt in another, alone. Beside other sequences' rows llama.cpp would split
    /// it into passes with as many rows of each sequence: beside next tokens, a pass of one token
    /// of every sequence, whose rows cost twice a prompt row's; beside another prompt, passes of
    /// fewer than [`EXACT_ROWS`] rows, evaluated as no fresh evaluation does.
    fn step(&mut self) {
        self.batch.clear();
        for sequence in &mut self.sequences {
            let Some(running) = sequence.running.as_mut() else { continue };
            if let Some(token) = running.next.take() {
                running.logits = Some(self.batch.n_tokens());
                let _ = self.batch.add(token, sequence.tokens.len() as i32, &[sequence.id], true);
                sequence.tokens.push(token);
            }
        }
        if self.decode() {
            self.after_decode();
        }
        let oldest = self
            .sequences
            .iter()
            .enumerate()
            .filter_map(|(index, s)| {
                let running = s.running.as_ref()?;
                (running.next.is_none() && !running.prompt_done(s.tokens.len()))
                    .then_some((running.admitted, index))
            })
            .min();
        self.batch.clear();
        if let Some((_, index)) = oldest {
            let sequence = &mut self.sequences[index];
            let running = sequence.running.as_mut().expect("a prompt under way has a generation");
            let prompt = &running.request.prompt.tokens;
            let from = sequence.tokens.len();
            let to = from + micro_batch(prompt.len() - from);
            for (position, &token) in prompt.iter().enumerate().take(to).skip(from) {
                let last = position + 1 == prompt.len();
                if last {
                    running.logits = Some(self.batch.n_tokens());
                }
                let _ = self.batch.add(token, position as i32, &[sequence.id], last);
            }
            sequence.tokens.extend_from_slice(&prompt[from..to]);
            if from == sequence.exact && to - from >= EXACT_ROWS {
                sequence.exact = to;
            }
        }
        if self.decode() {
            self.after_decode();
        }
    }

    /// Evaluates the batch; false when it was empty or failed (then every generation has ended).
    fn decode(&mut self) -> bool {
        if self.batch.n_tokens() == 0 {
            return false;
        }
        let decoding = Instant::now();
        if let Err(error) = self.ctx.decode(&mut self.batch) {
            self.fail_all(&anyhow::Error::new(error).context("evaluating a batch"));
            return false;
        }
        tracing::debug!(
            tokens = self.batch.n_tokens(),
            ms = decoding.elapsed().as_secs_f64() * 1000.0,
            "batch"
        );
        true
    }

    /// After a failed batch the state of everything in it is unknown: every running generation
    /// ends with the error and every sequence is emptied.
    fn fail_all(&mut self, error: &anyhow::Error) {
        tracing::error!(error = format!("{error:#}"), "decode failed");
        self.ctx.clear_kv_cache();
        for sequence in &mut self.sequences {
            sequence.tokens.clear();
            sequence.exact = 0;
            if let Some(running) = sequence.running.take() {
                let end = running.request.on_end;
                let failed = Err(anyhow::anyhow!("{error:#}").into());
                // Its reader's own failure is its reader's: the others still hear theirs.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| end(failed)));
            }
        }
    }

    /// Samples every sequence whose logits came out, hands out text, and retires what ended.
    fn after_decode(&mut self) {
        let vocab = self.model.vocab();
        let now = Instant::now();
        for sequence in &mut self.sequences {
            let Some(running) = sequence.running.as_mut() else { continue };
            let started = running.request.submitted;
            let Some(at) = running.logits.take() else {
                // Nothing of it in this batch (its prompt waits, or its token was sampled in the
                // step's other batch): is anyone still waiting for it?
                if (running.request.on_text)("").is_break() {
                    self.clock += 1;
                    retire(&mut self.ctx, sequence, Finish::Cancelled, self.reuse.is_some(), self.clock);
                }
                continue;
            };
            if running.prompt_time.is_none() {
                running.prompt_time = Some(now.duration_since(started));
                running.generation_started = Some(now);
            }
            let token = match running.sampler.as_mut() {
                Some(sampler) => sampler.sample(&self.ctx, at),
                None => greedy(self.ctx.get_logits_ith(at)),
            };
            running.first_token.get_or_insert_with(|| started.elapsed());
            let job = &running.request.job;
            let ended = if vocab.is_eog(token) {
                Some(Finish::Stop)
            } else {
                running.produced += 1;
                let searched_to = running.reply.len();
                let piece = running.decoder.push(&vocab.token_to_piece(token, false, None));
                running.reply.push_str(&piece);
                if let Some(at) = find_stop(&running.reply, &job.stop, searched_to) {
                    running.reply.truncate(at);
                    // Cut at a stop string: bytes of an unfinished character are past it.
                    running.decoder = Utf8Decoder::new();
                    Some(Finish::Stop)
                } else {
                    // What might be the start of a stop string waits until the next tokens
                    // settle it.
                    let ready = running.reply.len() - held_back(&running.reply, &job.stop);
                    let from = running.sent.min(ready);
                    let piece = running.reply[from..ready].to_owned();
                    running.sent = running.sent.max(ready);
                    if (running.request.on_text)(&piece).is_break() {
                        Some(Finish::Cancelled)
                    } else if running.produced == job.max_tokens {
                        Some(Finish::Length)
                    } else {
                        running.next = Some(token);
                        None
                    }
                }
            };
            if let Some(finish) = ended {
                self.clock += 1;
                retire(&mut self.ctx, sequence, finish, self.reuse.is_some(), self.clock);
            }
        }
    }
}

/// Ends `sequence`'s generation: it keeps the state of everything it evaluated (nothing without a
/// prompt cache), and its reader hears how it ended.
fn retire(ctx: &mut LlamaContext<'static>, sequence: &mut Sequence, finish: Finish, keep: bool, now: u64) {
    let Some(mut running) = sequence.running.take() else { return };
    if !keep {
        sequence.tokens.clear();
        sequence.exact = 0;
        let _ = ctx.clear_kv_cache_seq(Some(sequence.id as u32), None, None);
    }
    sequence.used = now;
    if finish == Finish::Cancelled {
        // Nobody reads the rest; the reply is what was sent.
        running.reply.truncate(running.sent);
    } else {
        // The end is settled: nothing held back can become a stop string any more, and bytes
        // of a character the model never finished become U+FFFD.
        let tail = running.decoder.finish();
        running.reply.push_str(&tail);
        if running.reply.len() > running.sent {
            let rest = running.reply[running.sent..].to_owned();
            let _ = (running.request.on_text)(&rest);
        }
    }
    let started = running.request.submitted;
    let elapsed = started.elapsed();
    let Request { prompt, on_end, .. } = running.request;
    on_end(Ok(Completion {
        text: running.reply,
        finish,
        prompt_tokens: prompt.tokens.len() as u32,
        cached_tokens: running.reused as u32,
        completion_tokens: running.produced,
        truncated_messages: prompt.truncated,
        prompt: prompt.text,
        timings: Timings {
            prompt: running.prompt_time.unwrap_or(elapsed),
            generation: running.generation_started.map_or(Duration::ZERO, |at| at.elapsed()),
            time_to_first_token: running.first_token.unwrap_or(elapsed),
        },
    }));
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The first of the most likely tokens, as llama.cpp's greedy sampler picks it, without copying
/// the whole vocabulary into a candidate list first (a 49,152-token vocabulary made that 2% of a
/// step).
#[must_use]
pub fn greedy(logits: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate().skip(1) {
        if logit > logits[best] {
            best = i;
        }
    }
    LlamaToken(best as i32)
}

/// None (greedy) at temperature 0, so the same request gives the same reply; otherwise nucleus
/// sampling with the given (or a random) seed.
fn sampler(job: &Job) -> Option<LlamaSampler> {
    if job.temperature <= 0.0 {
        return None;
    }
    // llama.cpp treats u32::MAX as "pick a random seed".
    let seed = job.seed.map_or(u32::MAX, |s| (s % u64::from(u32::MAX)) as u32);
    let mut chain = Vec::new();
    if job.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(job.top_p, 1));
    }
    chain.push(LlamaSampler::temp(job.temperature));
    chain.push(LlamaSampler::dist(seed));
    Some(LlamaSampler::chain_simple(chain))
}

#[cfg(test)]
mod tests {
    use super::{EXACT_ROWS, MICRO_BATCH, micro_batch};

    /// Cutting a whole prompt as the loop does: every micro-batch fits a batch, and none is under
    /// [`EXACT_ROWS`] unless the prompt itself is.
    #[test]
    fn a_prompt_is_cut_into_micro_batches_of_64_to_128_tokens() {
        for length in 1..2_000 {
            let mut cuts = Vec::new();
            let mut left = length;
            while left > 0 {
                let size = micro_batch(left);
                assert!((1..=MICRO_BATCH).contains(&size) && size <= left, "{length}: {cuts:?} then {size}");
                cuts.push(size);
                left -= size;
            }
            if length >= EXACT_ROWS {
                assert!(cuts.iter().all(|&size| size >= EXACT_ROWS), "{length}: {cuts:?}");
            } else {
                assert_eq!(cuts, [length]);
            }
        }
    }
}
