//! The committed header and the library cannot drift: function signatures are checked at
//! compile time by this crate (src/lib.rs); here the sets of functions, the struct layouts
//! and the enum values are compared.

//! Without libclang the bindings cannot be generated; then only `skipped_without_libclang`
//! runs and says so.

#![cfg_attr(not(header_bindings), allow(unused))]

use rgemma_header_check::{DECLARED, SKIPPED};

#[cfg(not(header_bindings))]
#[test]
fn skipped_without_libclang() {
    eprintln!("skipped: {}", SKIPPED.unwrap_or("no bindings"));
}

fn skipped() -> bool {
    if let Some(why) = SKIPPED {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

#[test]
fn header_declares_exactly_the_exported_functions() {
    if skipped() {
        return;
    }
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../src/capi.rs")).unwrap();
    let mut exported: Vec<String> = src
        .split("#[no_mangle]")
        .skip(1)
        .map(|s| {
            let s = s.trim_start();
            let s = s
                .strip_prefix("pub extern \"C\" fn ")
                .or_else(|| s.strip_prefix("pub unsafe extern \"C\" fn "))
                .expect("#[no_mangle] on a pub extern \"C\" fn");
            s[..s.find('(').unwrap()].trim().to_string()
        })
        .collect();
    let mut declared: Vec<String> = DECLARED.iter().map(|s| s.to_string()).collect();
    exported.sort();
    declared.sort();
    assert_eq!(
        declared, exported,
        "header functions vs #[no_mangle] functions in src/capi.rs"
    );
    assert!(
        declared.len() >= 20,
        "only {} functions found",
        declared.len()
    );
}

#[cfg(header_bindings)]
macro_rules! same_layout {
    ($name:ident { $($field:ident),* }) => {{
        use rgemma_header_check::c;
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(size_of::<c::$name>(), size_of::<rgemma::capi::$name>(), "size of {}", stringify!($name));
        assert_eq!(align_of::<c::$name>(), align_of::<rgemma::capi::$name>(), "align of {}", stringify!($name));
        $(assert_eq!(offset_of!(c::$name, $field), offset_of!(rgemma::capi::$name, $field), "{}.{}", stringify!($name), stringify!($field));)*
    }};
}

#[cfg(header_bindings)]
#[test]
fn param_structs_have_the_same_layout() {
    if skipped() {
        return;
    }
    same_layout!(rg_model_params { n_gpu_layers });
    same_layout!(rg_context_params {
        n_batch,
        n_threads,
        n_seq_max,
        kv_type
    });
    same_layout!(rg_batch {
        n_tokens,
        token,
        seq_id,
        logits
    });
    same_layout!(rg_sampler_params {
        temp,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        repeat_last_n,
        seed
    });
}

#[cfg(header_bindings)]
#[test]
fn status_values_match() {
    if skipped() {
        return;
    }
    use rgemma::capi::rg_status as R;
    use rgemma_header_check::c;
    use std::mem::size_of;
    let pairs = [
        (c::rg_status_RG_OK, R::RG_OK),
        (
            c::rg_status_RG_ERR_INVALID_ARGUMENT,
            R::RG_ERR_INVALID_ARGUMENT,
        ),
        (c::rg_status_RG_ERR_IO, R::RG_ERR_IO),
        (c::rg_status_RG_ERR_FORMAT, R::RG_ERR_FORMAT),
        (c::rg_status_RG_ERR_UNSUPPORTED, R::RG_ERR_UNSUPPORTED),
        (c::rg_status_RG_ERR_OUT_OF_MEMORY, R::RG_ERR_OUT_OF_MEMORY),
        (c::rg_status_RG_ERR_BACKEND, R::RG_ERR_BACKEND),
    ];
    for (cv, rv) in pairs {
        assert_eq!(cv as i64, rv as i64);
    }
    assert_eq!(size_of::<c::rg_status>(), size_of::<R>());
    assert_eq!(c::RG_DEFAULT_SEED, rgemma::capi::RG_DEFAULT_SEED);
    assert_eq!(c::RG_MAX_SEQ as i64, rgemma::capi::RG_MAX_SEQ as i64);
}

#[cfg(header_bindings)]
#[test]
fn kv_type_values_match() {
    if skipped() {
        return;
    }
    use rgemma_header_check::c;
    use std::mem::size_of;
    assert_eq!(
        c::rg_kv_type_RG_KV_F32 as i64,
        rgemma::capi::RG_KV_F32 as i64
    );
    assert_eq!(
        c::rg_kv_type_RG_KV_F16 as i64,
        rgemma::capi::RG_KV_F16 as i64
    );
    assert_eq!(
        size_of::<c::rg_kv_type>(),
        size_of::<rgemma::capi::rg_kv_type>()
    );
}
