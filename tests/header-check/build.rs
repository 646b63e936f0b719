//! Generates, from include/rgemma.h with bindgen:
//! - `c_types.rs`: the header's types as C sees them (for size/alignment/offset checks);
//! - `checks.rs`: one `const` per function declared in the header, typed with the header's
//!   signature and initialised with rgemma's exported function of that name. If a signature
//!   drifts, the check crate does not compile; if the header declares a function the
//!   library lacks, likewise.
//! - `declared.rs`: the list of function names the header declares.
//!
//! Without libclang (bindgen loads it at run time) the files say so and the test skips
//! visibly.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(header_bindings)");
    let header = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../include/rgemma.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    let ours = "rg_model|rg_context|rg_sampler|rg_token|rg_seq_id|rg_status|rg_kv_type|rg_batch|rg_model_params|rg_context_params|rg_sampler_params";
    let generated = std::panic::catch_unwind(|| {
        let c_types = bindgen::Builder::default()
            .header(header.to_str().unwrap())
            .allowlist_type("rg_.*")
            .allowlist_var("RG_.*")
            .layout_tests(false)
            .generate()
            .map_err(|e| e.to_string())?;
        let fns = bindgen::Builder::default()
            .header(header.to_str().unwrap())
            .allowlist_function("rg_.*")
            .blocklist_type(ours)
            .layout_tests(false)
            .generate()
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((c_types.to_string(), fns.to_string()))
    });
    match generated {
        Ok(Ok((c_types, fns))) => {
            println!("cargo:rustc-cfg=header_bindings");
            std::fs::write(out.join("c_types.rs"), c_types).unwrap();
            let decls = function_declarations(&fns);
            let mut checks = String::new();
            let mut names = String::from("pub const DECLARED: &[&str] = &[\n");
            for (name, args, ret) in &decls {
                checks.push_str(&format!(
                    "pub const {}: unsafe extern \"C\" fn({}){} = rgemma::capi::{};\n",
                    name.to_uppercase(),
                    args,
                    ret,
                    name
                ));
                names.push_str(&format!("    \"{name}\",\n"));
            }
            names.push_str("];\n");
            std::fs::write(out.join("checks.rs"), checks).unwrap();
            std::fs::write(
                out.join("declared.rs"),
                names + "pub const SKIPPED: Option<&str> = None;\n",
            )
            .unwrap();
        }
        Ok(Err(e)) => skip(&out, &format!("bindgen failed: {e}")),
        Err(_) => skip(&out, "libclang not found (install libclang-dev)"),
    }
}

fn skip(out: &std::path::Path, why: &str) {
    println!("cargo:warning=header check skipped: {why}");
    std::fs::write(out.join("c_types.rs"), "").unwrap();
    std::fs::write(out.join("checks.rs"), "").unwrap();
    std::fs::write(
        out.join("declared.rs"),
        format!("pub const DECLARED: &[&str] = &[];\npub const SKIPPED: Option<&str> = Some({why:?});\n"),
    )
    .unwrap();
}

/// `(name, argument types, " -> ret" or "")` of each `pub fn` in bindgen's extern blocks.
fn function_declarations(src: &str) -> Vec<(String, String, String)> {
    let flat = src.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut decls = Vec::new();
    for chunk in flat.split("pub fn ").skip(1) {
        let decl = &chunk[..chunk.find(';').expect("declaration ends with ;")];
        let open = decl.find('(').unwrap();
        let close = decl.rfind(')').unwrap();
        let name = decl[..open].trim().to_string();
        let types: Vec<&str> = decl[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| a.split_once(':').map_or(a, |(_, ty)| ty).trim())
            .collect();
        let ret = decl[close + 1..].trim();
        let ret = if ret.is_empty() {
            String::new()
        } else {
            format!(" {ret}")
        };
        decls.push((name, types.join(", "), ret));
    }
    decls
}
