//! Compile-time proof that include/rgemma.h and rgemma's C ABI agree (see build.rs).

#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code
)]

/// The header's types as bindgen sees them.
pub mod c {
    include!(concat!(env!("OUT_DIR"), "/c_types.rs"));
}

/// One constant per header function, typed by the header, valued by the library.
pub mod checks {
    #[allow(unused_imports)]
    use rgemma::capi::*;
    include!(concat!(env!("OUT_DIR"), "/checks.rs"));
}

include!(concat!(env!("OUT_DIR"), "/declared.rs"));
