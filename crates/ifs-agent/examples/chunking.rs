//! Whether a prompt's state depends on the micro-batches it was evaluated in: the measurement
//! behind [`ifs_agent::batch::EXACT_ROWS`], to rerun after a llama.cpp upgrade.
//!
//! `cargo run --release -p ifs-agent --example chunking -- models/SmolLM2-135M-Instruct.Q4_1.gguf`
//!
//! Evaluates prompts of several lengths as the decode loop does (micro-batches of 128, none under
//! 64), then again in micro-batches of random sizes from 64 to 128, some after a prefix taken from
//! another prompt's state, and once beginning with a micro-batch of 40; compares the last logits and
//! those of 8 greedy steps after them, bit for bit.

use anyhow::Context as _;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use ifs_agent::batch::{context_params, greedy, micro_batch};

mod probe;

const PROMPT: &str = "<|im_start|>system\nYou are a warm, careful guide.<|im_end|>\n<|im_start|>user\n";
const STORY: &str = "Lately I keep thinking about the garden. Part of me is worried, part of me is curious, \
                     and part of me just wants to rest. ";
const OTHER: &str = "Something else entirely, about the sea and boats and the weather that changes. ";

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).context("usage: chunking MODEL.gguf")?;
    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, &path, &LlamaModelParams::default())?;
    // The decode loop's context: a cache of its own for each sequence.
    let params = context_params(4096, 2, 1, 2);
    let mut probe = Probe {
        batch: LlamaBatch::new(params.n_batch() as usize, 1),
        ctx: model.new_context(&backend, params)?,
        tokens: model.vocab().tokenize(format!("{PROMPT}{}", STORY.repeat(45)).as_bytes(), false, true),
        other: model.vocab().tokenize(format!("{PROMPT}{}", OTHER.repeat(12)).as_bytes(), false, true),
    };
    let mut seed = 12_345_u64;
    let mut random = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let (mut same, mut different) = (0, 0);
    for n in [70, 200, 390, 623, 700, 1000, 1300] {
        let fresh = probe.run(0, n, 0, &mut micro_batch)?;
        for trial in 0..6 {
            let reuse = if trial < 2 { 0 } else { random(n - 64) };
            let mut sizes = |left: usize| {
                if left <= 128 {
                    return left;
                }
                let size = 64 + random(65);
                if left - size < 64 { left - 64 } else { size }
            };
            if fresh == probe.run(1, n, reuse, &mut sizes)? {
                same += 1;
            } else {
                different += 1;
                println!("{n} tokens, {reuse} reused: different");
            }
        }
        // The first micro-batch of 40 tokens.
        let mut first = true;
        let mut short = |left: usize| if std::mem::take(&mut first) { 40 } else { micro_batch(left) };
        let same_with_40 = fresh == probe.run(1, n, 0, &mut short)?;
        println!("{n} tokens: beginning with a micro-batch of 40, the same: {same_with_40}");
    }
    println!("micro-batches of 64 to 128: {same} the same bit for bit, {different} different");
    Ok(())
}

struct Probe<'a> {
    ctx: LlamaContext<'a>,
    batch: LlamaBatch<'a>,
    tokens: Vec<LlamaToken>,
    other: Vec<LlamaToken>,
}

impl Probe<'_> {
    /// Evaluates the first `n` tokens on `seq` in micro-batches sized by `sizes` (given what is
    /// left), after a state whose first `reuse` tokens are the prompt's and the rest another's;
    /// returns the logits of the last token and of 8 greedy steps after it, as bits.
    fn run(
        &mut self,
        seq: i32,
        n: usize,
        reuse: usize,
        sizes: &mut dyn FnMut(usize) -> usize,
    ) -> anyhow::Result<Vec<Vec<u32>>> {
        self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None)?;
        if reuse > 0 {
            let mixed: Vec<LlamaToken> =
                self.tokens[..reuse].iter().chain(&self.other[..150]).copied().collect();
            probe::evaluate(
                &mut self.ctx,
                &mut self.batch,
                seq,
                &mixed,
                0,
                &mut |left| left.min(128),
                false,
            )?;
            self.ctx.clear_kv_cache_seq(Some(seq as u32), Some(reuse as u32), None)?;
        }
        let prompt = self.tokens[..n].to_vec();
        probe::evaluate(&mut self.ctx, &mut self.batch, seq, &prompt, reuse, sizes, true)?;
        let mut logits = self.ctx.get_logits_ith(self.batch.n_tokens() - 1).to_vec();
        let mut out = Vec::new();
        for step in 0..=8 {
            out.push(logits.iter().map(|x| x.to_bits()).collect());
            if step == 8 {
                break;
            }
            self.batch.clear();
            self.batch.add(greedy(&logits), (n + step) as i32, &[seq], true)?;
            self.ctx.decode(&mut self.batch)?;
            logits = self.ctx.get_logits_ith(0).to_vec();
        }
        Ok(out)
    }
}
