//! The llama.cpp engine: one model per process, loaded once, and a small cache of contexts whose
//! KV state a later prompt with the same beginning reuses (as `llama-server`'s `cache_prompt`
//! does), so a dialogue's next turn evaluates only what is new. Everything here blocks on CPU
//! work and must run off the async runtime.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::decode::Utf8Decoder;
use crate::stop::{find_stop, held_back};

/// llama.cpp's backend may be initialised once per process.
static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
static BACKEND_INIT: Mutex<()> = Mutex::new(());

fn backend() -> anyhow::Result<&'static LlamaBackend> {
    let _guard = BACKEND_INIT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(backend) = BACKEND.get() {
        return Ok(backend);
    }
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let backend = LlamaBackend::init().context("initialising llama.cpp")?;
    Ok(BACKEND.get_or_init(|| backend))
}

/// How to load the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    pub model_path: PathBuf,
    /// Context size wanted; capped by the model's training context.
    pub context: u32,
    pub threads: u32,
    /// A llama.cpp built-in template name, for models whose GGUF has no `chat_template`.
    pub chat_template: Option<String>,
    /// Contexts kept between generations for their prompts' KV state; 0 turns the cache off.
    pub cached_contexts: usize,
}

/// Where the chat template came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// The model's own `tokenizer.chat_template`.
    Gguf,
    /// One of llama.cpp's built-in templates, by name (`AGENT_CHAT_TEMPLATE`).
    BuiltIn(String),
}

/// What there is to know about the loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// GGUF `general.name`, or the file name when absent.
    pub name: String,
    pub file: PathBuf,
    pub parameters: u64,
    pub size_bytes: u64,
    pub context_train: u32,
    pub context: u32,
    pub threads: u32,
    pub template: TemplateSource,
    pub cached_contexts: usize,
}

/// A chat message for the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: TurnRole,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnRole {
    System,
    User,
    Assistant,
}

impl TurnRole {
    fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// One generation to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub turns: Vec<Turn>,
    pub max_tokens: u32,
    /// 0 means greedy (deterministic).
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Whose prompt this is (OpenAI's `user`): the prompt cache serves a prompt only state that
    /// a prompt with the same key left, so that no one's cached turns answer faster for another.
    pub cache_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End of generation or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The receiver of the text asked to stop (its client went away).
    Cancelled,
}

/// How long the parts of a generation took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    /// Evaluating the prompt tokens the cache did not hold.
    pub prompt: Duration,
    pub generation: Duration,
    pub time_to_first_token: Duration,
}

/// The outcome of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV state came from the cache instead of being evaluated.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    /// Oldest messages left out so the prompt and `max_tokens` fit the context.
    pub truncated_messages: u32,
    /// The prompt exactly as the model saw it, after the template.
    pub prompt: String,
    pub timings: Timings,
}

/// Why a generation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the system prompt and the newest message need {needed} tokens with max_tokens, but the context holds {context}"
    )]
    ContextOverflow { needed: usize, context: u32 },
    /// The messages that cannot be left out hold more text than the context could, at the most
    /// bytes one token covers: refused before any of it is tokenized.
    #[error(
        "the system prompt and the newest message are {bytes} bytes, more than a context of {context} tokens can hold"
    )]
    TooLong { bytes: usize, context: u32 },
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// llama.cpp evaluates a batch in micro-batches of this many tokens, from the batch's first
/// position. How a token's KV state comes out, to the last bit, depends on the micro-batch it was
/// computed in, so a cached state is reused only in whole micro-batches that a fresh evaluation of
/// the same prompt would have formed too — then the reply is exactly the one without the cache.
const MICRO_BATCH: usize = 128;

/// A context kept for reuse, and the prompt tokens whose KV state it holds (positions 0..len,
/// whole micro-batches from position 0 only).
struct CachedContext {
    context: LlamaContext<'static>,
    tokens: Vec<LlamaToken>,
    /// The [`Job::cache_key`] of the prompt that left this state.
    key: Option<String>,
}

/// The kept contexts, least recently used first.
struct PromptCache {
    capacity: usize,
    entries: Vec<CachedContext>,
}

impl PromptCache {
    /// Takes the context whose state serves the most of `tokens`, and how many tokens that is:
    /// whole micro-batches, short of the last token (which is evaluated for its logits). One
    /// that would serve none stays for a prompt it does serve.
    /// Only a state left under the same `key` is used.
    fn take(&mut self, tokens: &[LlamaToken], key: Option<&str>) -> Option<(CachedContext, usize)> {
        let usable = |entry: &CachedContext| {
            if entry.key.as_deref() != key {
                return 0;
            }
            common_prefix(&entry.tokens, tokens).min(tokens.len().saturating_sub(1)) / MICRO_BATCH
                * MICRO_BATCH
        };
        let (index, reusable) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, entry)| (i, usable(entry)))
            .max_by_key(|&(i, reusable)| (reusable, i))?;
        (reusable > 0).then(|| (self.entries.remove(index), reusable))
    }

    fn put(&mut self, entry: CachedContext) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.remove(0);
        }
        self.entries.push(entry);
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A prompt as the model gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The text, after the template.
    pub text: String,
    pub tokens: Vec<LlamaToken>,
    /// Oldest messages left out so that it and `max_tokens` fit the context.
    pub truncated: u32,
}

/// Stands for message `i`'s content while the template is rendered: the template's own text
/// around it is then tokenized with its special markers, the content as plain text.
fn fence(i: usize) -> String {
    format!("\u{e000}ifs-fence-{i}\u{e001}")
}

/// The model, loaded once, and how to prompt it.
pub struct Engine {
    backend: &'static LlamaBackend,
    /// Contexts borrow the model, and the cache keeps contexts between requests, so the model
    /// lives as long as the process (it is loaded once per process anyway).
    model: &'static LlamaModel,
    template: LlamaChatTemplate,
    info: ModelInfo,
    /// Creating contexts concurrently from one model is unsound in llama.cpp (it may write to
    /// the model), so creation is serialised; generation itself runs in parallel.
    creating_context: Mutex<()>,
    cache: Mutex<PromptCache>,
    /// The most bytes of text one token stands for: a text of n bytes is at least n / this
    /// many tokens, so what cannot fit the context is known before it is tokenized.
    longest_token: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads the model and settles its chat template; refuses a model it could not prompt.
    pub fn load(settings: &EngineSettings) -> anyhow::Result<Self> {
        let path = &settings.model_path;
        if !path.is_file() {
            anyhow::bail!(
                "no model at {} (AGENT_MODEL_PATH); run `make model` to fetch the default one",
                path.display()
            );
        }
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .with_context(|| format!("{} is not a GGUF model llama.cpp can load", path.display()))?;
        let (template, source) = choose_template(&model, settings.chat_template.as_deref(), path)?;
        let context = settings.context.min(model.n_ctx_train()).max(1);
        let name =
            model.meta_val_str("general.name").ok().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| {
                path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
            });
        let info = ModelInfo {
            name,
            file: path.clone(),
            parameters: model.n_params(),
            size_bytes: model.size(),
            context_train: model.n_ctx_train(),
            context,
            threads: settings.threads.max(1),
            template: source,
            cached_contexts: settings.cached_contexts,
        };
        let vocab = model.vocab();
        let longest_token = (0..vocab.n_tokens())
            .map(|id| vocab.token_to_piece(LlamaToken(id), false, None).len())
            .max()
            .unwrap_or(1)
            .max(1);
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        Ok(Self {
            backend,
            model,
            template,
            info,
            creating_context: Mutex::new(()),
            cache: Mutex::new(PromptCache { capacity: settings.cached_contexts, entries: Vec::new() }),
            longest_token,
        })
    }

    #[must_use]
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The template's text around `turns`' contents, with the assistant's turn opened: one piece
    /// before each message's content and one after the last.
    fn template_pieces(&self, turns: &[&Turn]) -> anyhow::Result<Vec<String>> {
        let chat = turns
            .iter()
            .enumerate()
            .map(|(i, t)| LlamaChatMessage::new(t.role.as_str().into(), fence(i)))
            .collect::<Result<Vec<_>, _>>()
            .context("building chat messages")?;
        let rendered = self
            .model
            .apply_chat_template(&self.template, &chat, true)
            .context("applying the chat template")?;
        let mut pieces = Vec::with_capacity(turns.len() + 1);
        let mut rest = rendered.as_str();
        for i in 0..turns.len() {
            let fence = fence(i);
            let at = rest.find(&fence).context("the chat template left a message out")?;
            pieces.push(rest[..at].to_owned());
            rest = &rest[at + fence.len()..];
        }
        pieces.push(rest.to_owned());
        Ok(pieces)
    }

    /// A message's content as the model reads it: plain text, whatever it holds. Tokenized with
    /// special tokens parsed, `<|im_start|>system` in a user's message became the template's
    /// own marker, and a user could write the system's or the assistant's turns.
    fn content_tokens(&self, content: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(content.replace('\0', "\u{fffd}").as_bytes(), false, false)
    }

    /// Whether `token` is one of the model's control tokens (a template marker, not text).
    #[must_use]
    pub fn is_control(&self, token: LlamaToken) -> bool {
        self.model.vocab().is_control(token)
    }

    /// The prompt for `kept` (indices into `turns`): template pieces tokenized with their special
    /// markers (and BOS, if the vocabulary wants one, as llama-server does), contents as plain
    /// text from `contents`. `pieces` remembers the template's tokens between calls.
    fn assemble(
        &self,
        turns: &[Turn],
        kept: &[usize],
        contents: &[Option<Vec<LlamaToken>>],
        pieces: &mut HashMap<(bool, String), Vec<LlamaToken>>,
    ) -> Result<Prompt, EngineError> {
        let kept_turns: Vec<&Turn> = kept.iter().map(|&i| &turns[i]).collect();
        let template = self.template_pieces(&kept_turns)?;
        let mut text = String::new();
        let mut tokens = Vec::new();
        for (at, piece) in template.iter().enumerate() {
            let first = at == 0;
            let piece_tokens = pieces
                .entry((first, piece.clone()))
                .or_insert_with(|| self.model.vocab().tokenize(piece.as_bytes(), first, true));
            tokens.extend_from_slice(piece_tokens);
            text.push_str(piece);
            if let Some(&turn) = kept.get(at) {
                tokens.extend_from_slice(contents[turn].as_deref().context("a kept message not tokenized")?);
                text.push_str(&turns[turn].content);
            }
        }
        Ok(Prompt { text, tokens, truncated: 0 })
    }

    /// The prompt for `turns`, leaving out as few as possible of the oldest messages that are
    /// neither system messages nor at or after the newest user message, so that the prompt plus
    /// `max_tokens` fits the context, by real token count. Messages that could not fit at the
    /// most bytes a token covers are left out untokenized, and the rest is searched by
    /// bisection: however many messages come, the work is bounded by what the context holds.
    pub fn fit(&self, turns: &[Turn], max_tokens: u32) -> Result<Prompt, EngineError> {
        let context = self.info.context;
        let newest_user = turns.iter().rposition(|t| t.role == TurnRole::User).unwrap_or(turns.len());
        let droppable: Vec<usize> = (0..newest_user).filter(|&i| turns[i].role != TurnRole::System).collect();
        let room = (context as usize).saturating_sub(max_tokens as usize);
        let most_bytes = room.saturating_mul(self.longest_token);
        let bytes = |i: usize| turns[i].content.len();
        let is_droppable = |i: &usize| droppable.binary_search(i).is_ok();
        let fixed: usize = (0..turns.len()).filter(|i| !is_droppable(i)).map(bytes).sum();
        if fixed > most_bytes {
            return Err(EngineError::TooLong { bytes: fixed, context });
        }
        let mut first = 0;
        let mut total = fixed + droppable.iter().map(|&i| bytes(i)).sum::<usize>();
        while first < droppable.len() && total > most_bytes {
            total -= bytes(droppable[first]);
            first += 1;
        }
        let contents: Vec<Option<Vec<LlamaToken>>> = (0..turns.len())
            .map(|i| {
                droppable[..first].binary_search(&i).is_err().then(|| self.content_tokens(&turns[i].content))
            })
            .collect();
        let mut pieces = HashMap::new();
        let mut attempt = |dropped: usize| -> Result<Prompt, EngineError> {
            let left_out = &droppable[..dropped];
            let kept: Vec<usize> = (0..turns.len()).filter(|i| left_out.binary_search(i).is_err()).collect();
            let prompt = self.assemble(turns, &kept, &contents, &mut pieces)?;
            Ok(Prompt { truncated: dropped as u32, ..prompt })
        };
        let fits = |prompt: &Prompt| prompt.tokens.len() + max_tokens as usize <= context as usize;
        // The fewest left out that fit: at `first` if it fits, else between `low` (does not
        // fit) and `high` (fits).
        let at_first = attempt(first)?;
        if fits(&at_first) {
            return Ok(at_first);
        }
        let mut high = attempt(droppable.len())?;
        if !fits(&high) {
            return Err(EngineError::ContextOverflow {
                needed: high.tokens.len() + max_tokens as usize,
                context,
            });
        }
        let (mut low, mut high_at) = (first, droppable.len());
        while high_at - low > 1 {
            let middle = low + (high_at - low) / 2;
            let prompt = attempt(middle)?;
            if fits(&prompt) {
                (high, high_at) = (prompt, middle);
            } else {
                low = middle;
            }
        }
        Ok(high)
    }

    /// Runs one generation to completion.
    pub fn generate(&self, job: &Job) -> Result<Completion, EngineError> {
        self.generate_streaming(job, &mut |_| ControlFlow::Continue(()))
    }

    /// Runs one generation, handing `text` each piece of the reply as it is decoded: whole
    /// characters only, never text a stop string later cuts off. `text` is also called with ""
    /// after every token so that it can end the generation promptly (`Break`: its client went
    /// away); the completion then holds what was produced and [`Finish::Cancelled`].
    pub fn generate_streaming(
        &self,
        job: &Job,
        text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        let Prompt { text: prompt, tokens, truncated } = self.fit(&job.turns, job.max_tokens)?;
        let started = Instant::now();
        // The KV state for positions 0..reused is the cache's (PromptCache::take).
        let (mut ctx, reused) = self.context_for(&tokens, job.cache_key.as_deref())?;
        let mut evaluated = tokens[..reused].to_vec();
        ctx.clear_kv_cache_seq(Some(0), Some(reused as u32), None).context("trimming the cached context")?;
        // One micro-batch a call, from a micro-batch boundary (`reused` is one), forms the
        // micro-batches one call would; between them, whether anyone still waits is asked.
        let mut batch = LlamaBatch::new(MICRO_BATCH, 1);
        let last = tokens.len() - 1;
        // What a later prompt may reuse: the prompt's whole micro-batches. Generated tokens were
        // evaluated one at a time, unlike in any later prompt that contains them.
        let reusable = tokens.len() / MICRO_BATCH * MICRO_BATCH;
        for chunk in tokens[reused..].chunks(MICRO_BATCH) {
            batch.clear();
            for &token in chunk {
                let position = evaluated.len();
                batch.add(token, position as i32, &[0], position == last).context("filling a batch")?;
                evaluated.push(token);
            }
            ctx.decode(&mut batch).context("evaluating the prompt")?;
            if evaluated.len() < tokens.len() && text("").is_break() {
                // Whole micro-batches from position 0 are a state a later prompt may reuse.
                evaluated.truncate(evaluated.len() / MICRO_BATCH * MICRO_BATCH);
                let spent = started.elapsed();
                self.keep(ctx, evaluated, job.cache_key.clone());
                return Ok(Completion {
                    text: String::new(),
                    finish: Finish::Cancelled,
                    prompt_tokens: tokens.len() as u32,
                    cached_tokens: reused as u32,
                    completion_tokens: 0,
                    truncated_messages: truncated,
                    prompt,
                    timings: Timings {
                        prompt: spent,
                        generation: Duration::ZERO,
                        time_to_first_token: spent,
                    },
                });
            }
        }
        let prompt_time = started.elapsed();

        let mut sampler = sampler(job);
        let vocab = self.model.vocab();
        let mut decoder = Utf8Decoder::new();
        let mut reply = String::new();
        let mut sent = 0;
        let mut produced = 0u32;
        let mut finish = Finish::Length;
        let mut cut_at_stop_string = false;
        let mut logits_at = batch.n_tokens() - 1;
        let mut first_token = None;
        let generation_started = Instant::now();
        while produced < job.max_tokens {
            let token = sampler.sample(&ctx, logits_at);
            first_token.get_or_insert_with(|| started.elapsed());
            if vocab.is_eog(token) {
                finish = Finish::Stop;
                break;
            }
            produced += 1;
            let searched_to = reply.len();
            reply.push_str(&decoder.push(&vocab.token_to_piece(token, false, None)));
            if let Some(at) = find_stop(&reply, &job.stop, searched_to) {
                reply.truncate(at);
                finish = Finish::Stop;
                cut_at_stop_string = true;
                break;
            }
            // What might be the start of a stop string waits until the next tokens settle it.
            let ready = reply.len() - held_back(&reply, &job.stop);
            let piece = if ready > sent { &reply[sent..ready] } else { "" };
            sent = sent.max(ready);
            if text(piece).is_break() {
                finish = Finish::Cancelled;
                break;
            }
            if produced == job.max_tokens {
                break;
            }
            batch.clear();
            batch.add(token, evaluated.len() as i32, &[0], true).context("filling a batch")?;
            evaluated.push(token);
            logits_at = 0;
            ctx.decode(&mut batch).context("generating")?;
        }
        if !cut_at_stop_string && finish != Finish::Cancelled {
            // Bytes of a character the model never finished.
            reply.push_str(&decoder.finish());
        }
        if reply.len() > sent && finish != Finish::Cancelled {
            // The end is settled: nothing held back can become a stop string any more.
            let _ = text(&reply[sent..]);
        } else if finish == Finish::Cancelled {
            // Nobody reads the rest; the reply is what was sent.
            reply.truncate(sent);
        }
        evaluated.truncate(reusable);
        self.keep(ctx, evaluated, job.cache_key.clone());
        Ok(Completion {
            text: reply,
            finish,
            prompt_tokens: tokens.len() as u32,
            cached_tokens: reused as u32,
            completion_tokens: produced,
            truncated_messages: truncated,
            prompt,
            timings: Timings {
                prompt: prompt_time,
                generation: generation_started.elapsed(),
                time_to_first_token: first_token.unwrap_or_else(|| started.elapsed()),
            },
        })
    }

    /// A context for `tokens`: the cached one sharing the longest beginning with them, and how
    /// many tokens that is, or a new one.
    fn context_for(
        &self,
        tokens: &[LlamaToken],
        key: Option<&str>,
    ) -> anyhow::Result<(LlamaContext<'static>, usize)> {
        let cached = self.cache.lock().unwrap_or_else(PoisonError::into_inner).take(tokens, key);
        if let Some((entry, shared)) = cached {
            return Ok((entry.context, shared));
        }
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.info.context))
            .with_n_ubatch(MICRO_BATCH as u32)
            .with_n_threads(self.info.threads as i32)
            .with_n_threads_batch(self.info.threads as i32);
        let _guard = self.creating_context.lock().unwrap_or_else(PoisonError::into_inner);
        let context = self.model.new_context(self.backend, params).context("creating a llama.cpp context")?;
        Ok((context, 0))
    }

    /// Keeps a context whose KV state holds `tokens` for a later prompt that begins with them.
    /// Only a generation that ran to its end gets here: after an error the state is unknown.
    fn keep(&self, context: LlamaContext<'static>, tokens: Vec<LlamaToken>, key: Option<String>) {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).put(CachedContext { context, tokens, key });
    }
}

/// Greedy at temperature 0, so the same request gives the same reply; otherwise nucleus
/// sampling with the given (or a random) seed.
fn sampler(job: &Job) -> LlamaSampler {
    if job.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    // llama.cpp treats u32::MAX as "pick a random seed".
    let seed = job.seed.map_or(u32::MAX, |s| (s % u64::from(u32::MAX)) as u32);
    let mut chain = Vec::new();
    if job.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(job.top_p, 1));
    }
    chain.push(LlamaSampler::temp(job.temperature));
    chain.push(LlamaSampler::dist(seed));
    LlamaSampler::chain_simple(chain)
}

/// The model's own template, else the named built-in one; checked by rendering a message.
fn choose_template(
    model: &LlamaModel,
    configured: Option<&str>,
    path: &Path,
) -> anyhow::Result<(LlamaChatTemplate, TemplateSource)> {
    let (template, source) = match (model.chat_template(None), configured) {
        (_, Some(name)) => (
            LlamaChatTemplate::new(name).context("AGENT_CHAT_TEMPLATE")?,
            TemplateSource::BuiltIn(name.to_owned()),
        ),
        (Ok(own), None) => (own, TemplateSource::Gguf),
        (Err(_), None) => anyhow::bail!(
            "{} has no chat template; set AGENT_CHAT_TEMPLATE to one of llama.cpp's built-in templates \
             (e.g. chatml, llama2, llama3, mistral-v7, phi3, gemma)",
            path.display()
        ),
    };
    let probe = [LlamaChatMessage::new("user".into(), "hello".into()).context("probe message")?];
    model.apply_chat_template(&template, &probe, true).map_err(|e| match &source {
        TemplateSource::BuiltIn(name) => {
            anyhow::anyhow!("AGENT_CHAT_TEMPLATE={name} is not one of llama.cpp's built-in templates ({e})")
        }
        TemplateSource::Gguf => {
            anyhow::anyhow!("the chat template in {} cannot be used ({e})", path.display())
        }
    })?;
    Ok((template, source))
}
