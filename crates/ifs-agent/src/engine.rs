//! The llama.cpp engine: one model per process, loaded once, its chat template, and how a
//! conversation becomes a prompt that fits the context. Generations run in the model's decode
//! loop ([`crate::batch`]), which batches them together and keeps finished generations' KV state
//! for a later prompt with the same beginning (as `llama-server`'s `cache_prompt` does).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use crate::batch::{Batcher, OnEnd, OnText, Request, Reuse, Shape};

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
    /// Generations decoded together, each with room for `context` tokens.
    pub parallel: u32,
    /// Sequences that keep the KV state of what they evaluated for a prompt that begins the same
    /// way; 0 turns the cache off.
    pub cached_prompts: u32,
    pub reuse: Reuse,
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
    pub parallel: u32,
    pub cached_prompts: u32,
    pub reuse: Reuse,
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
    /// From the request reaching the decode loop until its prompt is evaluated (the tokens the
    /// cache did not hold): beside other generations this includes the steps spent on theirs.
    pub prompt: Duration,
    pub generation: Duration,
    /// From the request reaching the decode loop until its first token is sampled.
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
    /// The decode loop's context borrows the model and outlives any one request, so the model
    /// lives as long as the process (it is loaded once per process anyway).
    model: &'static LlamaModel,
    template: LlamaChatTemplate,
    info: ModelInfo,
    batcher: Batcher,
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
            parallel: settings.parallel.max(1),
            cached_prompts: settings.cached_prompts,
            reuse: settings.reuse,
        };
        let vocab = model.vocab();
        let longest_token = (0..vocab.n_tokens())
            .map(|id| vocab.token_to_piece(LlamaToken(id), false, None).len())
            .max()
            .unwrap_or(1)
            .max(1);
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let batcher = Batcher::start(
            backend,
            model,
            Shape {
                context,
                parallel: info.parallel,
                cached: info.cached_prompts,
                reuse: info.reuse,
                threads: info.threads,
            },
        )?;
        Ok(Self { model, template, info, batcher, longest_token })
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

    /// Runs one generation to completion, blocking the calling thread until it ends (which
    /// wakes it once, not at every token).
    pub fn generate(&self, job: &Job) -> Result<Completion, EngineError> {
        let (ended, end) = std::sync::mpsc::sync_channel(1);
        self.start(
            job.clone(),
            Box::new(|_| ControlFlow::Continue(())),
            Box::new(move |result| drop(ended.send(result))),
        );
        end.recv().unwrap_or_else(|_| Err(anyhow::anyhow!("the generation ended without a result").into()))
    }

    /// Runs one generation, blocking the calling thread, and hands `text` each piece of the reply
    /// as it is decoded: whole characters only, never text a stop string later cuts off. `text`
    /// is also called with "" after every step so that it can end the generation (`Break`: its
    /// client went away); the completion then holds what was produced and [`Finish::Cancelled`].
    pub fn generate_streaming(
        &self,
        job: &Job,
        text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        enum Event {
            Text(String),
            End(Result<Completion, EngineError>),
        }
        let (events, received) = std::sync::mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let on_text: OnText = {
            let (events, cancelled) = (events.clone(), Arc::clone(&cancelled));
            Box::new(move |piece| {
                if cancelled.load(Ordering::Relaxed) || events.send(Event::Text(piece.to_owned())).is_err() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
        };
        self.start(job.clone(), on_text, Box::new(move |end| drop(events.send(Event::End(end)))));
        for event in received {
            match event {
                Event::Text(piece) => {
                    if text(&piece).is_break() {
                        cancelled.store(true, Ordering::Relaxed);
                    }
                }
                Event::End(end) => return end,
            }
        }
        Err(anyhow::anyhow!("the generation ended without a result").into())
    }

    /// Starts one generation in the decode loop: fits and tokenizes its prompt on the calling
    /// thread (which may take a while: call it off the async runtime), then hands it over.
    /// `on_text` gets the reply's pieces (and "" after every step; `Break` cancels), `on_end`
    /// how it ended — also when the prompt could not be made.
    pub fn start(&self, mut job: Job, on_text: OnText, on_end: OnEnd) {
        match self.fit(&job.turns, job.max_tokens) {
            Ok(prompt) => {
                job.turns = Vec::new();
                self.batcher.submit(Request { job, prompt, on_text, on_end, submitted: Instant::now() });
            }
            Err(error) => on_end(Err(error)),
        }
    }
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
