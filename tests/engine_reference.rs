//! The f32 engine against the official RecurrentGemma references (tests/fixtures/README.md):
//! prefill logits of every position, cached decoding, greedy tokens, and the BF16 weights,
//! with several batch sizes so that prompts are split into chunks in different ways.

mod engine_common;

use engine_common::{argmax, context, max_abs_diff, model, Reference};
use rgemma::convert::FileType;

/// Limit from the fixtures README: about 4x the reference's own distance from exact math.
const LOGIT_TOL: f32 = 1e-4;
const BATCH_SIZES: [usize; 3] = [1, 3, 512];
/// Fixture folders with their prompts; tiny-rg-long uses tiny-rg's weights.
const FOLDERS: [&str; 2] = ["tiny-rg", "tiny-rg-long"];

fn check_prefill(weights_dir: &str, ft: FileType, ref_dir: &str) -> f32 {
    let m = model(weights_dir, ft);
    let r = Reference::open(ref_dir);
    let n_vocab = m.n_vocab();
    let mut worst = 0.0f32;
    for k in r.prompts() {
        let ids = r.ids(&format!("p{k}.input_ids"));
        let (want, shape) = r.f32s(&format!("p{k}.prefill_logits"));
        assert_eq!(shape, [ids.len(), n_vocab]);
        for bs in BATCH_SIZES {
            let mut ctx = context(&m, bs);
            ctx.eval(&ids, true).unwrap();
            assert_eq!(ctx.position(), ids.len());
            let got = ctx.all_logits();
            assert_eq!(got.len(), want.len());
            for t in 0..ids.len() {
                let row = t * n_vocab..(t + 1) * n_vocab;
                let d = max_abs_diff(&got[row.clone()], &want[row]);
                assert!(
                    d <= LOGIT_TOL,
                    "{ref_dir} p{k} batch {bs} position {t}: max |diff| {d}"
                );
                worst = worst.max(d);
            }
            // logits() is the last row.
            assert_eq!(ctx.logits(), &got[(ids.len() - 1) * n_vocab..]);
        }
    }
    eprintln!("{ref_dir} ({}) prefill: max |diff| {worst:e}", ft.name());
    worst
}

#[test]
fn prefill_logits_match_official_f32() {
    for dir in FOLDERS {
        check_prefill("tiny-rg", FileType::F32, dir);
    }
}

#[test]
fn prefill_logits_match_official_bf16_weights() {
    check_prefill("tiny-rg/bf16", FileType::BF16, "tiny-rg/bf16");
}

#[test]
fn cached_decode_matches_official_logits_and_greedy_tokens() {
    let m = model("tiny-rg", FileType::F32);
    let n_vocab = m.n_vocab();
    let mut worst = 0.0f32;
    for dir in FOLDERS {
        let r = Reference::open(dir);
        for k in r.prompts() {
            let ids = r.ids(&format!("p{k}.input_ids"));
            let gen = r.ids(&format!("p{k}.gen_tokens"));
            let (first, _) = r.f32s(&format!("p{k}.prefill_last_logits_cached"));
            let (decode, shape) = r.f32s(&format!("p{k}.decode_logits"));
            assert_eq!(shape, [gen.len(), n_vocab]);
            let t_len = ids.len();
            for bs in BATCH_SIZES {
                let mut ctx = context(&m, bs);
                // As the official sampler: the prompt but its last token, then that token alone.
                if t_len > 1 {
                    ctx.eval(&ids[..t_len - 1], false).unwrap();
                }
                ctx.eval(&ids[t_len - 1..], false).unwrap();
                let d = max_abs_diff(ctx.logits(), &first);
                assert!(
                    d <= LOGIT_TOL,
                    "{dir} p{k} batch {bs}: last prompt token, |diff| {d}"
                );
                worst = worst.max(d);
                assert_eq!(
                    argmax(ctx.logits()),
                    gen[0],
                    "{dir} p{k} batch {bs}: first token"
                );
                for (i, &tok) in gen.iter().enumerate() {
                    ctx.eval(&[tok], false).unwrap();
                    assert_eq!(ctx.position(), t_len + i + 1);
                    let want = &decode[i * n_vocab..(i + 1) * n_vocab];
                    let d = max_abs_diff(ctx.logits(), want);
                    assert!(
                        d <= LOGIT_TOL,
                        "{dir} p{k} batch {bs} decode step {i}: |diff| {d}"
                    );
                    worst = worst.max(d);
                    if let Some(&next) = gen.get(i + 1) {
                        assert_eq!(argmax(ctx.logits()), next, "{dir} p{k} batch {bs} step {i}");
                    }
                }
            }
        }
    }
    eprintln!("decode: max |diff| {worst:e}");
}

/// Prompt + generated tokens in one call, chunked: matches prefill rows and decode rows.
#[test]
fn one_call_over_prompt_and_generation_matches_decode_rows() {
    let m = model("tiny-rg", FileType::F32);
    let n_vocab = m.n_vocab();
    let r = Reference::open("tiny-rg-long");
    let ids = r.ids("p0.input_ids");
    let gen = r.ids("p0.gen_tokens");
    let (decode, _) = r.f32s("p0.decode_logits");
    let mut all = ids.clone();
    all.extend_from_slice(&gen);
    for bs in [7, 16, 17, 512] {
        let mut ctx = context(&m, bs);
        ctx.eval(&all, true).unwrap();
        // Row T-1+i+1 of the full run is the logits after gen[i] = decode_logits[i].
        for i in 0..gen.len() {
            let row = ids.len() + i;
            let got = &ctx.all_logits()[row * n_vocab..(row + 1) * n_vocab];
            let d = max_abs_diff(got, &decode[i * n_vocab..(i + 1) * n_vocab]);
            assert!(d <= LOGIT_TOL, "batch {bs} row {row}: |diff| {d}");
        }
    }
}
