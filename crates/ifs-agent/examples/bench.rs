//! Measures the engine the way llama.cpp's `llama-bench` measures llama.cpp: prompt processing
//! of `--prompt-tokens` tokens and generation of `--gen-tokens` tokens after it, repeated, on a
//! given number of threads. Prints one JSON object for `infra/bench-agent.sh` to compare.
//!
//! `cargo run --release -p ifs-agent --example bench -- --model models/….gguf --threads 2`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use ifs_agent::engine::{Engine, EngineSettings, Job, Turn, TurnRole};

#[derive(Debug, clap::Parser)]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: u32,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: u32,
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

fn mean_and_sd(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let variance = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, variance.sqrt())
}

fn main() {
    let args = Args::parse();
    let engine = Engine::load(&EngineSettings {
        model_path: args.model.clone(),
        context: (args.prompt_tokens + args.gen_tokens as usize + 64) as u32,
        threads: args.threads,
        chat_template: None,
        parallel: 1,
        // Every repetition evaluates the whole prompt, as llama-bench's do.
        cached_prompts: 0,
        reuse: ifs_agent::batch::Reuse::Exact,
    })
    .expect("model loads");

    // A user message that brings the whole prompt, template included, to about --prompt-tokens.
    let sentence = "The quiet garden behind the old house was full of roses, herbs and small stone paths. ";
    let mut text = String::new();
    let job = |text: &str| Job {
        turns: vec![Turn {
            role: TurnRole::User,
            content: format!("{text}\nNow write a very long essay about that garden."),
        }],
        max_tokens: args.gen_tokens,
        temperature: 0.0,
        top_p: 1.0,
        seed: None,
        stop: Vec::new(),
        cache_key: None,
    };
    while engine.fit(&job(&text).turns, 1).expect("fits").tokens.len() < args.prompt_tokens {
        text.push_str(sentence);
    }
    let job = job(&text);

    engine.generate(&job).expect("warm-up"); // page in the weights, as llama-bench's warm-up does
    let (mut pp, mut tg, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    let (mut prompt_tokens, mut generated) = (0, 0);
    for _ in 0..args.reps {
        let out = engine.generate(&job).expect("generation");
        let rate = |tokens: u32, time: Duration| f64::from(tokens) / time.as_secs_f64();
        pp.push(rate(out.prompt_tokens, out.timings.prompt));
        // The first generated token's logits come from the prompt pass; count the decodes after it.
        tg.push(rate(out.completion_tokens.saturating_sub(1), out.timings.generation));
        ttft.push(out.timings.time_to_first_token.as_secs_f64() * 1000.0);
        prompt_tokens = out.prompt_tokens;
        generated = out.completion_tokens;
    }
    let (pp_mean, pp_sd) = mean_and_sd(&pp);
    let (tg_mean, tg_sd) = mean_and_sd(&tg);
    let (ttft_mean, ttft_sd) = mean_and_sd(&ttft);
    println!(
        "{}",
        serde_json::json!({
            "engine": "ifs-agent (llama-cpp-2 0.1.160)",
            "model": engine.info().name,
            "threads": args.threads,
            "reps": args.reps,
            "prompt_tokens": prompt_tokens,
            "generated_tokens": generated,
            "prompt_tokens_per_second": {"mean": pp_mean, "sd": pp_sd},
            "generation_tokens_per_second": {"mean": tg_mean, "sd": tg_sd},
            "time_to_first_token_ms": {"mean": ttft_mean, "sd": ttft_sd},
        })
    );
}
