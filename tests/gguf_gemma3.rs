//! The real Gemma 3 270M Q4_K_M GGUF (llama.cpp-made), read through GgufFile. Runs when
//! RG_GEMMA3_GGUF names the file (see tests/fixtures/tokenizer/README.md, "Where the GGUF
//! comes from"); the expected values were read with gguf-py 0.19's GGUFReader.

use rgemma::gguf::{GgufFile, MetaValue};
use rgemma::quant::GgmlType;

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn gemma3_gguf_matches_gguf_py() {
    let Ok(path) = std::env::var("RG_GEMMA3_GGUF") else {
        // Written to the real stderr: libtest captures only the print macros, so this line
        // shows in a normal `cargo test` run.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped: RG_GEMMA3_GGUF not set");
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!((f.version(), f.alignment()), (3, 32));
    assert_eq!(f.file_size(), 253_113_024);
    assert_eq!(f.data_start(), 6_525_120);
    assert_eq!(f.metadata().len(), 33);
    assert_eq!(f.get_str("general.architecture").unwrap(), "gemma3");
    assert_eq!(f.get_u32("gemma3.block_count").unwrap(), 18);
    assert_eq!(f.get_u32("gemma3.attention.sliding_window").unwrap(), 512);
    assert_eq!(f.get_u32("general.file_type").unwrap(), 15);
    assert_eq!(
        f.get_f32("gemma3.attention.layer_norm_rms_epsilon")
            .unwrap(),
        1e-6
    );
    assert_eq!(f.get_f32("gemma3.rope.freq_base").unwrap(), 1_000_000.0);
    assert!(f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 262_144);
    assert_eq!(
        (tokens[105].as_str(), tokens[106].as_str()),
        ("<start_of_turn>", "<end_of_turn>")
    );
    match f.get("tokenizer.ggml.scores") {
        Some(MetaValue::Array(rgemma::gguf::MetaArray::F32(s))) => assert_eq!(s[1000], -506.0),
        other => panic!("scores: {other:?}"),
    }

    assert_eq!(f.tensors().len(), 236);
    let count = |ty| f.tensors().iter().filter(|t| t.ty == ty).count();
    use GgmlType::*;
    assert_eq!(
        [count(F32), count(Q5_0), count(Q4K), count(Q8_0), count(Q6K)],
        [109, 81, 27, 10, 9]
    );
    let cases = [
        (
            "output_norm.weight",
            F32,
            vec![640],
            0,
            2560,
            Some(0x11c2_2e7a_cf60_d9d7),
        ),
        (
            "token_embd.weight",
            Q8_0,
            vec![262_144, 640],
            2560,
            178_257_920,
            None,
        ),
        (
            "blk.0.attn_output.weight",
            Q4K,
            vec![640, 1024],
            178_376_704,
            368_640,
            Some(0xdbb9_a77f_9882_e6b9),
        ),
        (
            "blk.17.ffn_down.weight",
            Q6K,
            vec![640, 2048],
            243_702_784,
            1_075_200,
            Some(0x6066_c4e4_493a_d817),
        ),
    ];
    for (name, ty, shape, offset, size, hash) in cases {
        let t = f.tensor(name).unwrap();
        assert_eq!(
            (t.ty, t.shape(), t.offset, t.size),
            (ty, shape, offset, size),
            "{name}"
        );
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, size);
        if let Some(h) = hash {
            assert_eq!(fnv1a64(data), h, "{name} bytes");
        }
    }
    let embd = f.tensor_data(f.tensor("token_embd.weight").unwrap());
    assert_eq!(
        (&embd[..4], &embd[embd.len() - 4..]),
        (&[242, 16, 244, 71][..], &[14, 16, 0, 234][..])
    );
    assert_eq!(
        f.tensors().last().unwrap().name,
        "blk.17.post_ffw_norm.weight"
    );
}
