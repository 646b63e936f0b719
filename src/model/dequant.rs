//! Row decoding of stored weights into f32 scratch.
//!
//! Plain float rows are decoded here (the common case of F32/F16/BF16 files); block-quantized
//! rows go through `rgemma_quant::dequantize_row`.

use rgemma_quant::{GgmlType, QuantError};

/// Whether the engine can turn rows of this type into f32.
pub fn is_dequantizable(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || quantized_supported(ty)
}

/// Decodes `dst.len()` elements from `src` (a whole number of blocks of type `ty`).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let expect = |width: usize| {
        if src.len() == dst.len() * width {
            Ok(())
        } else {
            Err(QuantError::LengthMismatch {
                expected: dst.len() * width,
                found: src.len(),
            })
        }
    };
    match ty {
        GgmlType::F32 => {
            expect(4)?;
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
            Ok(())
        }
        GgmlType::F16 => {
            expect(2)?;
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
            Ok(())
        }
        GgmlType::BF16 => {
            expect(2)?;
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
            Ok(())
        }
        _ => dequantize_quantized(ty, src, dst),
    }
}

fn quantized_supported(ty: GgmlType) -> bool {
    ty.is_quantized() && ty.is_supported()
}

fn dequantize_quantized(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    // Until `rgemma_quant::dequantize_row` lands, quantized rows are refused.
    let _ = (src, dst);
    Err(QuantError::Unsupported(ty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_rows_decode() {
        let vals = [1.5f32, -2.25, 0.0, 3.0e-3];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = [0.0f32; 4];
        dequantize_row(GgmlType::F32, &bytes, &mut out).unwrap();
        assert_eq!(out, vals);

        let h: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        dequantize_row(GgmlType::F16, &h, &mut out).unwrap();
        for (o, v) in out.iter().zip(vals) {
            assert!((o - v).abs() <= v.abs() * 1e-3);
        }
        let b: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        dequantize_row(GgmlType::BF16, &b, &mut out).unwrap();
        assert_eq!(out[0..3], vals[0..3]);
        assert!(dequantize_row(GgmlType::F32, &bytes[..15], &mut out).is_err());
    }
}
