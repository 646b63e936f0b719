//! Output presets (`general.file_type`) and the per-tensor type rules: llama-quantize's
//! mixing rules (gguf-and-quantization.md §2.10) plus rgemma's own rules for the tensors
//! llama.cpp has no name for (RG-LRU gate blocks).

use std::fmt;

use rgemma_quant::GgmlType;

/// A target preset, numbered as llama.cpp's `llama_ftype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
}

impl FileType {
    pub const ALL: [FileType; 17] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q2K,
        FileType::Q3KS,
        FileType::Q3KM,
        FileType::Q3KL,
        FileType::Q4KS,
        FileType::Q4KM,
        FileType::Q5KS,
        FileType::Q5KM,
        FileType::Q6K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q8_0 => "Q8_0",
            FileType::Q4_0 => "Q4_0",
            FileType::Q4_1 => "Q4_1",
            FileType::Q5_0 => "Q5_0",
            FileType::Q5_1 => "Q5_1",
            FileType::Q2K => "Q2_K",
            FileType::Q3KS => "Q3_K_S",
            FileType::Q3KM => "Q3_K_M",
            FileType::Q3KL => "Q3_K_L",
            FileType::Q4KS => "Q4_K_S",
            FileType::Q4KM => "Q4_K_M",
            FileType::Q5KS => "Q5_K_S",
            FileType::Q5KM => "Q5_K_M",
            FileType::Q6K => "Q6_K",
        }
    }

    /// Parses a preset name case-insensitively (`q4_k_m`, `BF16`, ...).
    pub fn parse(s: &str) -> Option<FileType> {
        FileType::ALL
            .iter()
            .copied()
            .find(|f| f.name().eq_ignore_ascii_case(s))
    }

    /// The `general.file_type` value (llama_ftype).
    pub fn ftype_id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q2K => 10,
            FileType::Q3KS => 11,
            FileType::Q3KM => 12,
            FileType::Q3KL => 13,
            FileType::Q4KS => 14,
            FileType::Q4KM => 15,
            FileType::Q5KS => 16,
            FileType::Q5KM => 17,
            FileType::Q6K => 18,
            FileType::BF16 => 32,
        }
    }

    pub fn from_ftype_id(id: u32) -> Option<FileType> {
        FileType::ALL.iter().copied().find(|f| f.ftype_id() == id)
    }

    /// The type of 2-D matrices without a special rule (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q2K => GgmlType::Q2K,
            FileType::Q3KS | FileType::Q3KM | FileType::Q3KL => GgmlType::Q3K,
            FileType::Q4KS | FileType::Q4KM => GgmlType::Q4K,
            FileType::Q5KS | FileType::Q5KM => GgmlType::Q5K,
            FileType::Q6K => GgmlType::Q6K,
        }
    }

    /// The type of the RG-LRU gate blocks: kept in floating point (they are small and feed
    /// a sigmoid inside the recurrence); F32 in F32, BF16 in BF16, F16 otherwise.
    pub fn gate_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::BF16 => GgmlType::BF16,
            _ => GgmlType::F16,
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a tensor is, as far as the type rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorClass {
    /// 1-D tensors (norms, biases, `rg_a`) and the conv: always F32.
    KeepF32,
    /// `rg_input_gate.weight`, `rg_a_gate.weight`: [`FileType::gate_type`].
    Gate,
    /// The tied embedding / output head.
    TokenEmbd,
    AttnV,
    /// The attention block's output projection (`attn_output.weight`; the recurrent block's
    /// `rg_out` has no llama.cpp name and takes the default type).
    AttnOutput,
    FfnDown,
    /// Any other 2-D matrix.
    Matrix,
}

/// Classifies a tensor of the rgemma schema by name and rank.
pub fn classify(name: &str, n_dims: usize) -> TensorClass {
    if n_dims < 2
        || name.contains("ssm_conv1d")
        || !name.ends_with("weight")
        || name.ends_with("_norm.weight")
    {
        TensorClass::KeepF32
    } else if name.ends_with("rg_input_gate.weight") || name.ends_with("rg_a_gate.weight") {
        TensorClass::Gate
    } else if name == "token_embd.weight" {
        TensorClass::TokenEmbd
    } else if name.contains("attn_v.weight") {
        TensorClass::AttnV
    } else if name.contains("attn_output.weight") {
        TensorClass::AttnOutput
    } else if name.contains("ffn_down") {
        TensorClass::FfnDown
    } else {
        TensorClass::Matrix
    }
}

/// llama-quantize's `use_more_bits`: the first and last eighth and every third one between.
pub fn use_more_bits(i: u64, n: u64) -> bool {
    // Short-circuit keeps `i - n / 8` from underflowing.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Picks each tensor's type in file order (the attn_v / ffn_down counters depend on it).
pub struct TypeChooser {
    ftype: FileType,
    /// Quantizing with an importance matrix (one Q4_0 / Q5_0 rule depends on it).
    has_imatrix: bool,
    /// Query heads per K/V head (llama.cpp's `n_gqa`: the attn_v rule of Q2_K depends on it).
    n_gqa: u64,
    n_attn_v: u64,
    n_ffn_down: u64,
    i_attn_v: u64,
    i_ffn_down: u64,
}

impl TypeChooser {
    /// `n_attn_v`: number of attn_v matrices in the file; `n_layers`: block count (llama.cpp
    /// counts ffn_down against the layer count). Without an importance matrix and with one
    /// query head per K/V head until told otherwise ([`TypeChooser::with_imatrix`],
    /// [`TypeChooser::with_gqa`]).
    pub fn new(ftype: FileType, n_attn_v: u64, n_layers: u64) -> TypeChooser {
        TypeChooser {
            ftype,
            has_imatrix: false,
            n_gqa: 1,
            n_attn_v,
            n_ffn_down: n_layers,
            i_attn_v: 0,
            i_ffn_down: 0,
        }
    }

    /// Quantizing with an importance matrix.
    pub fn with_imatrix(mut self, has_imatrix: bool) -> TypeChooser {
        self.has_imatrix = has_imatrix;
        self
    }

    /// Query heads per K/V head.
    pub fn with_gqa(mut self, n_gqa: u64) -> TypeChooser {
        self.n_gqa = n_gqa;
        self
    }

    /// The type of the next tensor. `row_len` is `ne[0]` (the innermost dimension).
    pub fn choose(&mut self, class: TensorClass, row_len: u64) -> GgmlType {
        use FileType as F;
        use GgmlType as G;
        let ty = match class {
            TensorClass::KeepF32 => return G::F32,
            TensorClass::Gate => self.ftype.gate_type(),
            _ if !self.ftype.default_type().is_quantized() => self.ftype.default_type(),
            TensorClass::TokenEmbd => {
                // Tied embeddings: the embedding gets the output-head rule.
                let default = self.ftype.default_type();
                if !row_len.is_multiple_of(default.block_size() as u64) || default == G::Q8_0 {
                    G::Q8_0
                } else {
                    G::Q6K
                }
            }
            TensorClass::AttnV => {
                let i = self.i_attn_v;
                self.i_attn_v += 1;
                match self.ftype {
                    F::Q2K if self.n_gqa >= 4 => G::Q4K,
                    F::Q2K => G::Q3K,
                    F::Q3KM if i < 2 => G::Q5K,
                    F::Q3KM => G::Q4K,
                    F::Q3KL => G::Q5K,
                    F::Q4KM | F::Q5KM if use_more_bits(i, self.n_attn_v) => G::Q6K,
                    F::Q4KS if i < 4 => G::Q5K,
                    _ => self.ftype.default_type(),
                }
            }
            TensorClass::AttnOutput => match self.ftype {
                F::Q2K => G::Q3K,
                F::Q3KM => G::Q4K,
                F::Q3KL => G::Q5K,
                _ => self.ftype.default_type(),
            },
            TensorClass::FfnDown => {
                let i = self.i_ffn_down;
                self.i_ffn_down += 1;
                let n = self.n_ffn_down;
                match self.ftype {
                    F::Q2K => G::Q3K,
                    F::Q3KM if i < n / 16 => G::Q5K,
                    F::Q3KM => G::Q4K,
                    F::Q3KL => G::Q5K,
                    F::Q4KM | F::Q5KM if use_more_bits(i, n) => G::Q6K,
                    F::Q4KS if i < n / 8 => G::Q5K,
                    // llama-quantize guards the first eighth of ffn_down against Q4_0 / Q5_0
                    // "craziness", only with an imatrix (so that files made without one stay
                    // as they always were).
                    F::Q4_0 if self.has_imatrix && i < n / 8 => G::Q4_1,
                    F::Q5_0 if self.has_imatrix && i < n / 8 => G::Q5_1,
                    _ => self.ftype.default_type(),
                }
            }
            TensorClass::Matrix => self.ftype.default_type(),
        };
        fallback(ty, row_len)
    }
}

/// ggml's fallbacks when the row length is not a multiple of the block size: Q4_K -> Q5_0,
/// Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K and Q3_K -> Q4_0 (llama.cpp now picks IQ4_NL, which
/// rgemma does not have; Q4_0 is what it picked before), and F16 when even the fallback does
/// not fit. (llama-quantize aborts for a legacy type whose block does not fit; we use F16
/// there too.)
pub fn fallback(ty: GgmlType, row_len: u64) -> GgmlType {
    let fits = |t: GgmlType| row_len.is_multiple_of(t.block_size() as u64);
    if fits(ty) {
        return ty;
    }
    let next = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        _ => GgmlType::F16,
    };
    if fits(next) {
        next
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gguf-and-quantization.md §2.10 applies llama-quantize's rules to the 2B model:
    /// ffn_down Q6_K in layers 0-2, 5, 8, 11, 14, 17, 20, 22-25; attn_v Q6_K in attention
    /// layers #0, 3, 6, 7 of 8.
    #[test]
    fn q4_k_m_on_2b_geometry_matches_llama_quantize() {
        let mut c = TypeChooser::new(FileType::Q4KM, 8, 26);
        let down: Vec<u64> = (0..26)
            .filter(|_| c.choose(TensorClass::FfnDown, 7680) == GgmlType::Q6K)
            .collect();
        assert_eq!(down, vec![0, 1, 2, 5, 8, 11, 14, 17, 20, 22, 23, 24, 25]);
        let v: Vec<u64> = (0..8)
            .filter(|_| c.choose(TensorClass::AttnV, 2560) == GgmlType::Q6K)
            .collect();
        assert_eq!(v, vec![0, 3, 6, 7]);
        assert_eq!(c.choose(TensorClass::Matrix, 2560), GgmlType::Q4K);
        assert_eq!(c.choose(TensorClass::TokenEmbd, 2560), GgmlType::Q6K);
        assert_eq!(c.choose(TensorClass::Gate, 256), GgmlType::F16);
        assert_eq!(c.choose(TensorClass::KeepF32, 2560), GgmlType::F32);
    }

    #[test]
    fn q4_k_s_and_legacy_rules() {
        let mut c = TypeChooser::new(FileType::Q4KS, 8, 26);
        let v: Vec<GgmlType> = (0..8).map(|_| c.choose(TensorClass::AttnV, 2560)).collect();
        assert_eq!(
            &v[..5],
            &[
                GgmlType::Q5K,
                GgmlType::Q5K,
                GgmlType::Q5K,
                GgmlType::Q5K,
                GgmlType::Q4K
            ]
        );
        let d: Vec<GgmlType> = (0..26)
            .map(|_| c.choose(TensorClass::FfnDown, 7680))
            .collect();
        assert_eq!(d.iter().filter(|&&t| t == GgmlType::Q5K).count(), 3);
        let mut c = TypeChooser::new(FileType::Q4_0, 8, 26);
        assert_eq!(c.choose(TensorClass::TokenEmbd, 2560), GgmlType::Q6K);
        assert_eq!(c.choose(TensorClass::FfnDown, 7680), GgmlType::Q4_0);
        let mut c = TypeChooser::new(FileType::Q8_0, 8, 26);
        assert_eq!(c.choose(TensorClass::TokenEmbd, 2560), GgmlType::Q8_0);
        let mut c = TypeChooser::new(FileType::BF16, 8, 26);
        assert_eq!(c.choose(TensorClass::TokenEmbd, 2560), GgmlType::BF16);
        assert_eq!(c.choose(TensorClass::Gate, 256), GgmlType::BF16);
    }

    /// The 2- and 3-bit presets on the 2B geometry (10 query heads on one K/V head: attn_v of
    /// Q2_K gets Q4_K), with llama-quantize's rules.
    #[test]
    fn two_and_three_bit_presets_on_2b_geometry() {
        use GgmlType::{Q2K, Q3K, Q4K, Q5K, Q6K};
        let mut c = TypeChooser::new(FileType::Q2K, 8, 26).with_gqa(10);
        assert_eq!(c.choose(TensorClass::Matrix, 2560), Q2K);
        assert_eq!(c.choose(TensorClass::AttnV, 2560), Q4K);
        assert_eq!(c.choose(TensorClass::FfnDown, 7680), Q3K);
        assert_eq!(c.choose(TensorClass::AttnOutput, 2560), Q3K);
        assert_eq!(c.choose(TensorClass::TokenEmbd, 2560), Q6K);
        let mut c = TypeChooser::new(FileType::Q2K, 8, 26);
        assert_eq!(c.choose(TensorClass::AttnV, 2560), Q3K, "no GQA");

        let mut c = TypeChooser::new(FileType::Q3KM, 8, 26).with_gqa(10);
        let v: Vec<GgmlType> = (0..8).map(|_| c.choose(TensorClass::AttnV, 2560)).collect();
        assert_eq!(v, [Q5K, Q5K, Q4K, Q4K, Q4K, Q4K, Q4K, Q4K]);
        // n_layer / 16 = 1 layer of Q5_K, then Q4_K.
        let d: Vec<GgmlType> = (0..3)
            .map(|_| c.choose(TensorClass::FfnDown, 7680))
            .collect();
        assert_eq!(d, [Q5K, Q4K, Q4K]);
        assert_eq!(c.choose(TensorClass::AttnOutput, 2560), Q4K);
        assert_eq!(c.choose(TensorClass::Matrix, 2560), Q3K);

        let mut c = TypeChooser::new(FileType::Q3KL, 8, 26);
        assert_eq!(c.choose(TensorClass::AttnV, 2560), Q5K);
        assert_eq!(c.choose(TensorClass::FfnDown, 7680), Q5K);
        assert_eq!(c.choose(TensorClass::AttnOutput, 2560), Q5K);
        let mut c = TypeChooser::new(FileType::Q3KS, 8, 26);
        assert_eq!(c.choose(TensorClass::AttnV, 2560), Q3K);
        assert_eq!(c.choose(TensorClass::FfnDown, 7680), Q3K);
        assert_eq!(c.choose(TensorClass::AttnOutput, 2560), Q3K);
        // Rows that do not hold a 256-value super-block: Q4_0 (llama.cpp's former choice).
        assert_eq!(c.choose(TensorClass::Matrix, 96), GgmlType::Q4_0);
    }

    /// With an importance matrix, llama-quantize puts the first eighth of ffn_down of Q4_0 /
    /// Q5_0 files in Q4_1 / Q5_1; without one, nothing changes.
    #[test]
    fn imatrix_guards_the_first_ffn_down_layers_of_q4_0() {
        let mut c = TypeChooser::new(FileType::Q4_0, 8, 26).with_imatrix(true);
        let d: Vec<GgmlType> = (0..4)
            .map(|_| c.choose(TensorClass::FfnDown, 7680))
            .collect();
        assert_eq!(
            d,
            [
                GgmlType::Q4_1,
                GgmlType::Q4_1,
                GgmlType::Q4_1,
                GgmlType::Q4_0
            ]
        );
        let mut c = TypeChooser::new(FileType::Q5_0, 8, 26).with_imatrix(true);
        assert_eq!(c.choose(TensorClass::FfnDown, 7680), GgmlType::Q5_1);
        let mut c = TypeChooser::new(FileType::Q4_0, 8, 26);
        assert_eq!(c.choose(TensorClass::FfnDown, 7680), GgmlType::Q4_0);
    }

    #[test]
    fn fallbacks_for_short_rows() {
        // tiny-rg: hidden 64.
        let mut c = TypeChooser::new(FileType::Q4KM, 2, 6);
        assert_eq!(c.choose(TensorClass::TokenEmbd, 64), GgmlType::Q8_0);
        assert_eq!(c.choose(TensorClass::Matrix, 64), GgmlType::Q5_0);
        // ffn_down of 6 layers: use_more_bits for i = 2 and 5 (Q6_K -> Q8_0), else Q4_K -> Q5_0.
        let down: Vec<GgmlType> = (0..6).map(|_| c.choose(TensorClass::FfnDown, 96)).collect();
        use GgmlType::{Q5_0, Q8_0};
        assert_eq!(down, vec![Q5_0, Q5_0, Q8_0, Q5_0, Q5_0, Q8_0]);
        let mut c = TypeChooser::new(FileType::Q4_0, 2, 6);
        assert_eq!(c.choose(TensorClass::TokenEmbd, 64), GgmlType::Q8_0); // Q6_K -> Q8_0
        assert_eq!(c.choose(TensorClass::Matrix, 48), GgmlType::F16);
        assert_eq!(fallback(GgmlType::Q5K, 96), GgmlType::Q5_1);
        assert_eq!(fallback(GgmlType::Q5K, 40), GgmlType::F16);
    }

    #[test]
    fn names_and_ids() {
        for f in FileType::ALL {
            assert_eq!(FileType::parse(&f.name().to_lowercase()), Some(f));
            assert_eq!(FileType::from_ftype_id(f.ftype_id()), Some(f));
        }
        assert_eq!(FileType::parse("q4_k"), None);
    }

    #[test]
    fn classes() {
        assert_eq!(classify("blk.0.attn_norm.weight", 1), TensorClass::KeepF32);
        assert_eq!(classify("blk.0.ssm_conv1d.weight", 2), TensorClass::KeepF32);
        assert_eq!(classify("blk.0.ffn_down.bias", 1), TensorClass::KeepF32);
        assert_eq!(classify("blk.0.rg_a_gate.weight", 3), TensorClass::Gate);
        assert_eq!(classify("blk.2.attn_v.weight", 2), TensorClass::AttnV);
        assert_eq!(
            classify("blk.2.attn_output.weight", 2),
            TensorClass::AttnOutput
        );
        assert_eq!(classify("blk.0.rg_out.weight", 2), TensorClass::Matrix);
        assert_eq!(classify("blk.2.ffn_down.weight", 2), TensorClass::FfnDown);
        assert_eq!(classify("token_embd.weight", 2), TensorClass::TokenEmbd);
        assert_eq!(classify("blk.0.rg_x.weight", 2), TensorClass::Matrix);
    }
}
