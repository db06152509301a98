//! What the probes in `examples/` share: evaluating a prompt as the decode loop does.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

/// Evaluates `tokens[from..]` on `seq` in micro-batches sized by `sizes` (given what is left),
/// with logits for the last token when `logits`: they are at `batch.n_tokens() - 1` after it.
pub fn evaluate(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch<'_>,
    seq: i32,
    tokens: &[LlamaToken],
    from: usize,
    sizes: &mut dyn FnMut(usize) -> usize,
    logits: bool,
) -> anyhow::Result<()> {
    let mut position = from;
    while position < tokens.len() {
        let end = position + sizes(tokens.len() - position);
        batch.clear();
        for (at, &token) in tokens.iter().enumerate().take(end).skip(position) {
            batch.add(token, at as i32, &[seq], logits && at + 1 == tokens.len())?;
        }
        ctx.decode(batch)?;
        position = end;
    }
    Ok(())
}
