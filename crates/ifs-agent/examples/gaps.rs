//! What a gap in the running sequence ids costs a next-token batch, and what fills it.
//!
//! `cargo run --release -p ifs-agent --example gaps -- models/SmolLM2-135M-Instruct.Q4_1.gguf`
//!
//! With a KV cache per sequence, llama.cpp evaluates a batch in passes over consecutive sequence
//! ids, so next tokens of sequences 0, 1 and 3 take two passes over the weights where 0, 1 and 2
//! take one. Times, side by side in rounds: next tokens of {0,1,2}, of {0,1,3}, and of {0,1,3}
//! with a filler row for 2 (removed after the batch); checks that the filler changes neither the
//! others' logits nor sequence 2's state, bit for bit.

use std::time::Instant;

use anyhow::Context as _;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use ifs_agent::batch::{context_params, greedy, micro_batch};

mod probe;

const STEPS: usize = 48;
const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).context("usage: gaps MODEL.gguf")?;
    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, &path, &LlamaModelParams::default())?;
    let params = context_params(2048, 4, 4, 2);
    let mut batch = LlamaBatch::new(params.n_batch() as usize, 1);
    let mut ctx = model.new_context(&backend, params)?;
    let topics = ["the garden", "my sister", "a new city", "the piano"];
    let mut prompts = Vec::new();
    for (seq, topic) in topics.iter().enumerate() {
        let text = format!(
            "<|im_start|>system\nYou are a warm, careful guide.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            format!("Lately I keep thinking about {topic}. Part of me is worried, part of me is curious. ")
                .repeat(14)
        );
        let tokens = model.vocab().tokenize(text.as_bytes(), false, true);
        probe::evaluate(&mut ctx, &mut batch, seq as i32, &tokens, 0, &mut micro_batch, true)?;
        let first = greedy(ctx.get_logits_ith(batch.n_tokens() - 1));
        prompts.push((tokens.len(), first));
    }
    let mut run = |rows: &[i32], filler: Option<i32>, keep: bool| -> anyhow::Result<(f64, Vec<Vec<u32>>)> {
        let mut next: Vec<LlamaToken> = rows.iter().map(|&s| prompts[s as usize].1).collect();
        let mut bits = Vec::new();
        let started = Instant::now();
        for step in 0..STEPS {
            batch.clear();
            for (row, &seq) in rows.iter().enumerate() {
                batch.add(next[row], (prompts[seq as usize].0 + step) as i32, &[seq], true)?;
            }
            if let Some(seq) = filler {
                batch.add(next[0], prompts[seq as usize].0 as i32, &[seq], false)?;
            }
            ctx.decode(&mut batch)?;
            if let Some(seq) = filler {
                ctx.clear_kv_cache_seq(Some(seq as u32), Some(prompts[seq as usize].0 as u32), None)?;
            }
            for (row, token) in next.iter_mut().enumerate() {
                let logits = ctx.get_logits_ith(row as i32);
                if keep {
                    bits.push(logits.iter().map(|x| x.to_bits()).collect());
                }
                *token = greedy(logits);
            }
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0 / STEPS as f64;
        for &seq in rows {
            ctx.clear_kv_cache_seq(Some(seq as u32), Some(prompts[seq as usize].0 as u32), None)?;
        }
        Ok((ms, bits))
    };
    // Sequence 2's own next steps, before and after every filler: its state must not change.
    let (_, two_before) = run(&[2], None, true)?;
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    let (mut gap_bits, mut filled_bits) = (None, None);
    for _ in 0..ROUNDS {
        times[0].push(run(&[0, 1, 2], None, false)?.0);
        times[1].push(run(&[0, 1, 3], None, false)?.0);
        times[2].push(run(&[0, 1, 3], Some(2), false)?.0);
    }
    for _ in 0..2 {
        gap_bits = Some(run(&[0, 1, 3], None, true)?.1);
        filled_bits = Some(run(&[0, 1, 3], Some(2), true)?.1);
    }
    let (_, two_after) = run(&[2], None, true)?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [mut contiguous, mut gap, mut filled] = times;
    let (contiguous, gap, filled) = (median(&mut contiguous), median(&mut gap), median(&mut filled));
    println!("ms per next-token batch, median of {ROUNDS} rounds of {STEPS} steps:");
    println!("  {{0,1,2}}            {contiguous:6.2}");
    println!("  {{0,1,3}}            {gap:6.2}  ({:.2}x)", gap / contiguous);
    println!("  {{0,1,3}} + filler 2 {filled:6.2}  ({:.2}x)", filled / contiguous);
    println!("filler leaves the others' logits the same: {}", gap_bits == filled_bits);
    println!("filler leaves sequence 2's state the same: {}", two_before == two_after);
    Ok(())
}
