//! The generation loop behind `rg-run` (`rgemma::generate`), driven directly on the tiny-rg
//! model against the official greedy references: stop tokens, the token limit, continuing a
//! sequence with the unfed token, and the logit rows it streams.

mod cli_run_support;

use std::sync::Arc;

use cli_run_support::{tiny_f32_gguf, Reference};
use rgemma::generate::{generate, GenerateOptions, GenerateSink, StopReason};
use rgemma::model::{Context, ContextParams, Model};
use rgemma::sampling::{Sampler, SamplerParams};

#[derive(Default)]
struct Collect {
    text: String,
    rows: Vec<Vec<f32>>,
}

impl GenerateSink for Collect {
    fn text(&mut self, text: &str) -> rgemma::Result<()> {
        self.text.push_str(text);
        Ok(())
    }
    fn logits_row(&mut self, row: &[f32]) -> rgemma::Result<()> {
        self.rows.push(row.to_vec());
        Ok(())
    }
}

fn context() -> Context {
    let model = Arc::new(Model::load(tiny_f32_gguf()).unwrap());
    Context::new(
        model,
        ContextParams {
            batch_size: 512,
            n_threads: 1,
            ..Default::default()
        },
    )
    .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn stop_token_ends_before_it_and_is_not_fed() {
    let r = Reference::load();
    let p0 = r.prompt(0);
    // p0's greedy continuation is 214, 107, ...: with 107 as a stop token only 214 remains.
    assert_eq!(&p0.gen_tokens[..2], &[214, 107]);
    let mut ctx = context();
    let mut sampler = Sampler::new(SamplerParams::greedy());
    let opts = GenerateOptions {
        max_tokens: Some(16),
        stop_tokens: vec![1, 107],
        all_logits: true,
        ..Default::default()
    };
    let mut sink = Collect::default();
    let g = generate(
        &mut ctx,
        &mut sampler,
        None,
        &p0.input_ids,
        &opts,
        &mut sink,
    )
    .unwrap();
    assert_eq!(g.generated, vec![214]);
    assert_eq!(g.stop, StopReason::StopToken(107));
    assert_eq!(g.unfed, None);
    assert_eq!(sink.text, "214 ");
    // Rows: the prompt position, then 214 fed back (its logits chose the stop token).
    assert_eq!(sink.rows.len(), 2);
    assert_eq!(ctx.position(), 2);
    assert!(max_diff(&sink.rows[1], &p0.decode_logits[..r.vocab]) <= 1e-4);
    // The sampler saw the prompt and the generated token, not the stop token.
    assert_eq!(sampler.history().collect::<Vec<_>>(), vec![2, 214]);
}

#[test]
fn continuing_with_the_unfed_token_reproduces_the_reference() {
    let r = Reference::load();
    let p = r.prompt(1);
    let mut ctx = context();
    let mut sampler = Sampler::new(SamplerParams::greedy());
    let mut sink = Collect::default();
    let first = GenerateOptions {
        max_tokens: Some(5),
        all_logits: true,
        ..Default::default()
    };
    let g1 = generate(
        &mut ctx,
        &mut sampler,
        None,
        &p.input_ids,
        &first,
        &mut sink,
    )
    .unwrap();
    assert_eq!(g1.stop, StopReason::MaxTokens);
    assert_eq!(g1.generated, p.gen_tokens[..5].to_vec());
    assert_eq!(g1.unfed, Some(p.gen_tokens[4]));
    assert_eq!(
        ctx.position(),
        p.input_ids.len() + 4,
        "the last token is not fed"
    );

    let rest = GenerateOptions {
        max_tokens: Some(11),
        all_logits: true,
        ..Default::default()
    };
    let g2 = generate(
        &mut ctx,
        &mut sampler,
        None,
        &[g1.unfed.unwrap()],
        &rest,
        &mut sink,
    )
    .unwrap();
    assert_eq!(g2.generated, p.gen_tokens[5..16].to_vec());

    // Rows: T prompt rows, 4 fed tokens, then the unfed token's row and 10 more.
    let t = p.input_ids.len();
    assert_eq!(sink.rows.len(), t + 15);
    for (i, row) in sink.rows.iter().enumerate() {
        let want = if i < t {
            &p.prefill_logits[i * r.vocab..(i + 1) * r.vocab]
        } else {
            &p.decode_logits[(i - t) * r.vocab..(i - t + 1) * r.vocab]
        };
        assert!(max_diff(row, want) <= 1e-4, "row {i}");
    }
}

#[test]
fn prompt_chunks_give_the_same_rows() {
    let r = Reference::load();
    let p = r.prompt(3);
    let mut ctx = context();
    let mut sampler = Sampler::new(SamplerParams::greedy());
    let mut sink = Collect::default();
    let opts = GenerateOptions {
        max_tokens: Some(3),
        all_logits: true,
        batch_size: 7,
        ..Default::default()
    };
    let g = generate(&mut ctx, &mut sampler, None, &p.input_ids, &opts, &mut sink).unwrap();
    assert_eq!(g.generated, p.gen_tokens[..3].to_vec());
    let t = p.input_ids.len();
    assert_eq!(sink.rows.len(), t + 2);
    let flat: Vec<f32> = sink.rows[..t].concat();
    assert!(max_diff(&flat, &p.prefill_logits) <= 1e-4);
}

#[test]
fn bad_prompts_are_errors() {
    let mut ctx = context();
    let mut sampler = Sampler::new(SamplerParams::greedy());
    let mut sink = Collect::default();
    let opts = GenerateOptions {
        max_tokens: Some(2),
        ..Default::default()
    };
    let e = generate(&mut ctx, &mut sampler, None, &[], &opts, &mut sink).unwrap_err();
    assert!(e.to_string().contains("empty prompt"), "{e}");
    let e = generate(&mut ctx, &mut sampler, None, &[2, 512], &opts, &mut sink).unwrap_err();
    assert!(e.to_string().contains("512"), "{e}");
    assert_eq!(ctx.position(), 0, "nothing was evaluated");
}
