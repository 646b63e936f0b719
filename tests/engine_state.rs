//! Context behaviour: fixed state size, reset, argument errors, load validation.

mod engine_common;

use engine_common::{context, gguf_path, model, Reference};
use rgemma::convert::FileType;
use rgemma::gguf::{GgufFile, GgufWriter, MetaValue, TensorSpec};
use rgemma::model::{Context, ContextParams, Model};
use rgemma::Error;

type Metadata = Vec<(String, MetaValue)>;

fn tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % n_vocab as u64) as u32
        })
        .collect()
}

#[test]
fn state_size_is_fixed_and_matches_the_geometry() {
    let m = model("tiny-rg", FileType::F32);
    let hp = m.hparams().clone();
    let mut ctx = context(&m, 64);
    let before = ctx.state_size_bytes();
    // Recurrent: (K-1) conv rows + h, each L floats; attention: K and V rings of W slots.
    let n_rec = hp
        .layer_kinds
        .iter()
        .filter(|k| **k == rgemma::model::LayerKind::Recurrent)
        .count();
    let n_att = hp.n_layers - n_rec;
    let want = 4
        * (n_rec * hp.conv_kernel * hp.lru_width
            + n_att * 2 * hp.window * hp.n_kv_heads * hp.head_dim);
    assert_eq!(before, want);
    let ids = tokens(1000, m.n_vocab(), 1);
    ctx.eval(&ids[..1], false).unwrap();
    ctx.eval(&ids[1..700], false).unwrap();
    for &t in &ids[700..] {
        ctx.eval(&[t], false).unwrap();
    }
    assert_eq!(ctx.position(), 1000);
    assert_eq!(ctx.state_size_bytes(), before);
    assert!(ctx.logits().iter().all(|v| v.is_finite()));
}

#[test]
fn reset_gives_the_same_logits_as_a_fresh_context() {
    let m = model("tiny-rg", FileType::F32);
    let r = Reference::open("tiny-rg");
    let ids = r.ids("p2.input_ids");
    let mut fresh = context(&m, 5);
    fresh.eval(&ids, true).unwrap();
    let mut used = context(&m, 5);
    used.eval(&tokens(300, m.n_vocab(), 2), false).unwrap();
    used.reset();
    assert_eq!(used.position(), 0);
    used.eval(&ids, true).unwrap();
    assert_eq!(used.all_logits(), fresh.all_logits());
    assert_eq!(used.logits(), fresh.logits());
}

#[test]
fn out_of_range_token_is_an_error_and_changes_nothing() {
    let m = model("tiny-rg", FileType::F32);
    let n = m.n_vocab() as u32;
    let mut ctx = context(&m, 8);
    ctx.eval(&[2, 10, 11], false).unwrap();
    let logits = ctx.logits().to_vec();
    for bad in [vec![n], vec![5, 6, n + 7], vec![u32::MAX]] {
        match ctx.eval(&bad, true) {
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains("vocabulary"), "{msg}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        assert_eq!(ctx.position(), 3);
        assert_eq!(ctx.logits(), &logits[..]);
    }
    assert!(matches!(
        ctx.eval(&[], false),
        Err(Error::InvalidArgument(_))
    ));
    // The state is intact: continuing equals a run that never saw the bad calls.
    ctx.eval(&[12], false).unwrap();
    let mut clean = context(&m, 8);
    clean.eval(&[2, 10, 11, 12], false).unwrap();
    assert_eq!(ctx.logits(), clean.logits());
}

#[test]
fn bad_context_params_are_errors() {
    let m = model("tiny-rg", FileType::F32);
    let p = ContextParams {
        batch_size: 0,
        n_threads: 1,
        ..Default::default()
    };
    assert!(matches!(
        Context::new(m.clone(), p),
        Err(Error::InvalidArgument(_))
    ));
    let d = ContextParams::default();
    assert_eq!((d.batch_size, d.n_threads), (512, 0));
}

/// Rewrites the F32 GGUF with one tensor dropped or reshaped (or a key changed) and checks
/// that loading fails with a message that names the problem.
#[test]
fn load_rejects_missing_or_misshaped_tensors_and_bad_keys() {
    let src_model = model("tiny-rg", FileType::F32);
    let src = src_model.gguf();

    let rewrite = |stem: &str,
                   drop: Option<&str>,
                   reshape: Option<&str>,
                   meta: &dyn Fn(&mut Metadata)|
     -> Result<Model, Error> {
        let mut metadata: Vec<(String, MetaValue)> = src.metadata().to_vec();
        meta(&mut metadata);
        let mut specs = Vec::new();
        let mut datas = Vec::new();
        for info in src.tensors() {
            if Some(info.name.as_str()) == drop {
                continue;
            }
            let mut dims = info.dims.clone();
            if Some(info.name.as_str()) == reshape {
                // Same bytes, rows and columns swapped.
                dims.reverse();
            }
            specs.push(TensorSpec {
                name: info.name.clone(),
                ty: info.ty,
                dims,
            });
            datas.push(src.tensor_data(info));
        }
        let path = gguf_path(stem);
        let mut w = GgufWriter::create(&path, &metadata, &specs).unwrap();
        for d in datas {
            w.write_tensor_data(d).unwrap();
        }
        w.finish().unwrap();
        let res = Model::from_gguf(GgufFile::open(&path).unwrap());
        let _ = std::fs::remove_file(&path);
        res
    };
    let keep = |_: &mut Metadata| {};

    // Control: an unchanged copy loads.
    rewrite("copy", None, None, &keep).expect("unchanged copy loads");

    let err = rewrite("missing", Some("blk.1.rg_a_gate.weight"), None, &keep)
        .err()
        .unwrap();
    assert!(err.to_string().contains("blk.1.rg_a_gate.weight"), "{err}");

    let err = rewrite("shape", None, Some("blk.2.attn_k.weight"), &keep)
        .err()
        .unwrap();
    assert!(err.to_string().contains("blk.2.attn_k.weight"), "{err}");

    let arch = |m: &mut Metadata| {
        for (k, v) in m.iter_mut() {
            if k == "general.architecture" {
                *v = MetaValue::String("llama".into());
            }
        }
    };
    assert!(matches!(
        rewrite("arch", None, None, &arch),
        Err(Error::Unsupported(_))
    ));

    let no_layers = |m: &mut Metadata| {
        m.retain(|(k, _)| k != "recurrentgemma.layer_types");
    };
    let err = rewrite("types", None, None, &no_layers).err().unwrap();
    assert!(err.to_string().contains("layer_types"), "{err}");
}

#[test]
fn model_is_send_sync_and_context_is_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Model>();
    send::<Context>();
}

/// Thread count does not change results: every dot product is summed in one fixed order.
#[test]
fn results_do_not_depend_on_thread_count() {
    let m = model("tiny-rg", FileType::F32);
    let ids = tokens(40, m.n_vocab(), 3);
    let run = |n_threads| {
        let p = ContextParams {
            batch_size: 16,
            n_threads,
            ..Default::default()
        };
        let mut ctx = Context::new(m.clone(), p).unwrap();
        ctx.eval(&ids, true).unwrap();
        ctx.all_logits().to_vec()
    };
    assert_eq!(run(1), run(3));
}

/// A file whose norms are stored raw (`norm_weight_folded` false) is read as `1 + w`.
#[test]
fn unfolded_norm_weights_are_applied_as_one_plus_w() {
    let m = model("tiny-rg", FileType::F32);
    let src = m.gguf();
    assert!(src.get_bool("recurrentgemma.norm_weight_folded").unwrap());
    let mut metadata: Metadata = src.metadata().to_vec();
    for (k, v) in metadata.iter_mut() {
        if k == "recurrentgemma.norm_weight_folded" {
            *v = MetaValue::Bool(false);
        }
    }
    let specs: Vec<TensorSpec> = src
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            ty: t.ty,
            dims: t.dims.clone(),
        })
        .collect();
    let path = gguf_path("unfolded");
    let mut w = GgufWriter::create(&path, &metadata, &specs).unwrap();
    let mut n_norms = 0;
    for t in src.tensors() {
        let data = src.tensor_data(t);
        if t.name.ends_with("norm.weight") {
            n_norms += 1;
            let raw: Vec<u8> = data
                .chunks_exact(4)
                .flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) - 1.0).to_le_bytes())
                .collect();
            w.write_tensor_data(&raw).unwrap();
        } else {
            w.write_tensor_data(data).unwrap();
        }
    }
    w.finish().unwrap();
    assert_eq!(n_norms, 2 * m.hparams().n_layers + 1);
    let raw = std::sync::Arc::new(Model::load(&path).unwrap());
    let _ = std::fs::remove_file(&path);
    let ids = tokens(20, m.n_vocab(), 4);
    let mut a = context(&m, 512);
    let mut b = context(&raw, 512);
    a.eval(&ids, true).unwrap();
    b.eval(&ids, true).unwrap();
    let d = engine_common::max_abs_diff(a.all_logits(), b.all_logits());
    assert!(d <= 1e-4, "max |diff| {d}");
}
