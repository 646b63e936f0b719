//! The C ABI (`include/rgemma.h`). Every entry point:
//! - catches panics (`guard`), so no unwind crosses the boundary;
//! - validates its pointers and lengths before use;
//! - reports failures through a return value and the thread-local `rg_last_error()`.
//!
//! Handles are boxed Rust objects handed out as raw pointers; `*_free` takes them back.
//! A model is shared by contexts through an `Arc`, so freeing the C model handle while a
//! context still uses it cannot dangle on the Rust side (the header still asks callers to
//! free contexts first).

#![allow(non_camel_case_types)]
// The entry points check their pointers themselves; marking every one `unsafe` would not add
// information for C callers.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::model::{Context, ContextParams, Model};
use crate::sampling::{Sampler, SamplerParams};
use crate::Error;

pub type rg_token = i32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum rg_status {
    RG_OK = 0,
    RG_ERR_INVALID_ARGUMENT,
    RG_ERR_IO,
    RG_ERR_FORMAT,
    RG_ERR_UNSUPPORTED,
    RG_ERR_OUT_OF_MEMORY,
    RG_ERR_BACKEND,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rg_model_params {
    pub n_gpu_layers: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rg_context_params {
    pub n_batch: i32,
    pub n_threads: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rg_sampler_params {
    pub temp: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub seed: u32,
}

/// `RG_DEFAULT_SEED`: seed from the clock.
pub const RG_DEFAULT_SEED: u32 = 0xFFFF_FFFF;

pub struct rg_model {
    model: Arc<Model>,
}

pub struct rg_context {
    ctx: Context,
    /// Whether `ctx.logits()` holds the logits of a decoded position.
    has_logits: bool,
}

pub struct rg_sampler {
    sampler: Sampler,
}

/// A failure on its way to C: the status and the message for `rg_last_error`.
struct CError(rg_status, String);

impl From<Error> for CError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidArgument(_) => rg_status::RG_ERR_INVALID_ARGUMENT,
            Error::Io { .. } => rg_status::RG_ERR_IO,
            Error::Format(_) | Error::Tokenizer(_) => rg_status::RG_ERR_FORMAT,
            Error::Unsupported(_) => rg_status::RG_ERR_UNSUPPORTED,
        };
        CError(status, e.to_string())
    }
}

fn invalid(msg: impl Into<String>) -> CError {
    CError(rg_status::RG_ERR_INVALID_ARGUMENT, msg.into())
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    // Interior NULs would truncate the message; replace them.
    let msg = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
}

/// Runs `f`, turning an error or a panic into `on_error` plus `rg_last_error`.
fn guard<T>(on_error: T, f: impl FnOnce() -> Result<T, CError>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(CError(_, msg))) => {
            set_last_error(&msg);
            on_error
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error: {what}"));
            on_error
        }
    }
}

/// Like `guard` for functions that return a status.
fn guard_status(f: impl FnOnce() -> Result<(), CError>) -> rg_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => rg_status::RG_OK,
        Ok(Err(CError(status, msg))) => {
            set_last_error(&msg);
            status
        }
        Err(_) => {
            set_last_error("internal error: panic in rgemma");
            rg_status::RG_ERR_BACKEND
        }
    }
}

fn model_ref<'a>(model: *const rg_model) -> Result<&'a rg_model, CError> {
    // SAFETY: a non-null model pointer was produced by `rg_model_load` and not yet freed
    // (the caller's contract in the header).
    unsafe { model.as_ref() }.ok_or_else(|| invalid("model is NULL"))
}

fn ctx_mut<'a>(ctx: *mut rg_context) -> Result<&'a mut rg_context, CError> {
    // SAFETY: as for `model_ref`; a context is used by one thread at a time.
    unsafe { ctx.as_mut() }.ok_or_else(|| invalid("context is NULL"))
}

fn ctx_ref<'a>(ctx: *const rg_context) -> Result<&'a rg_context, CError> {
    // SAFETY: as for `ctx_mut`.
    unsafe { ctx.as_ref() }.ok_or_else(|| invalid("context is NULL"))
}

/// A C array as a slice; `len` must be >= 0 and `ptr` non-null unless `len` is 0.
fn slice_in<'a, T>(ptr: *const T, len: i64, what: &str) -> Result<&'a [T], CError> {
    if len < 0 {
        return Err(invalid(format!("{what}: negative length {len}")));
    }
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller guarantees `ptr` points to `len` readable elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len as usize) })
}

fn slice_out<'a, T>(ptr: *mut T, len: i64, what: &str) -> Result<&'a mut [T], CError> {
    if len < 0 {
        return Err(invalid(format!("{what}: negative length {len}")));
    }
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller guarantees `ptr` points to `len` writable elements.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len as usize) })
}

fn token_ids(tokens: &[rg_token], n_vocab: usize) -> Result<Vec<u32>, CError> {
    tokens
        .iter()
        .map(|&t| {
            if t >= 0 && (t as usize) < n_vocab {
                Ok(t as u32)
            } else {
                Err(invalid(format!(
                    "token id {t} out of range (vocabulary {n_vocab})"
                )))
            }
        })
        .collect()
}

#[no_mangle]
pub extern "C" fn rg_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

#[no_mangle]
pub extern "C" fn rg_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

#[no_mangle]
pub extern "C" fn rg_model_default_params() -> rg_model_params {
    rg_model_params { n_gpu_layers: 0 }
}

#[no_mangle]
pub extern "C" fn rg_context_default_params() -> rg_context_params {
    let d = ContextParams::default();
    rg_context_params {
        n_batch: d.batch_size as i32,
        n_threads: d.n_threads as i32,
    }
}

/// llama.cpp's sampler defaults, as `SamplerParams::default()` has them.
#[no_mangle]
pub extern "C" fn rg_sampler_default_params() -> rg_sampler_params {
    let d = SamplerParams::default();
    rg_sampler_params {
        temp: d.temp,
        top_k: d.top_k,
        top_p: d.top_p,
        min_p: d.min_p,
        repeat_penalty: d.repeat_penalty,
        repeat_last_n: d.repeat_last_n as i32,
        seed: RG_DEFAULT_SEED,
    }
}

#[no_mangle]
pub extern "C" fn rg_model_load(
    path: *const c_char,
    params: *const rg_model_params,
) -> *mut rg_model {
    guard(std::ptr::null_mut(), || {
        if path.is_null() {
            return Err(invalid("path is NULL"));
        }
        // SAFETY: non-null, and the caller passes a NUL-terminated string.
        let path = unsafe { CStr::from_ptr(path) };
        let path = path
            .to_str()
            .map_err(|_| invalid("path is not valid UTF-8"))?;
        // SAFETY: NULL or a valid params struct (header contract).
        let _params = unsafe { params.as_ref() }
            .copied()
            .unwrap_or(rg_model_default_params());
        let model = Model::load(path)?;
        Ok(Box::into_raw(Box::new(rg_model {
            model: Arc::new(model),
        })))
    })
}

#[no_mangle]
pub extern "C" fn rg_model_free(model: *mut rg_model) {
    guard((), || {
        if !model.is_null() {
            // SAFETY: produced by `Box::into_raw` in `rg_model_load`, freed once (contract).
            drop(unsafe { Box::from_raw(model) });
        }
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_model_n_vocab(model: *const rg_model) -> i32 {
    guard(-1, || Ok(model_ref(model)?.model.n_vocab() as i32))
}

#[no_mangle]
pub extern "C" fn rg_model_n_embd(model: *const rg_model) -> i32 {
    guard(-1, || Ok(model_ref(model)?.model.hparams().hidden as i32))
}

#[no_mangle]
pub extern "C" fn rg_model_has_tokenizer(model: *const rg_model) -> bool {
    guard(false, || Ok(model_ref(model)?.model.tokenizer().is_some()))
}

fn special_token(model: *const rg_model, pick: impl FnOnce(&Model) -> Option<u32>) -> rg_token {
    guard(-1, || {
        Ok(pick(&model_ref(model)?.model).map_or(-1, |t| t as rg_token))
    })
}

#[no_mangle]
pub extern "C" fn rg_token_bos(model: *const rg_model) -> rg_token {
    special_token(model, |m| Some(m.tokenizer().map_or(2, |t| t.bos())))
}

#[no_mangle]
pub extern "C" fn rg_token_eos(model: *const rg_model) -> rg_token {
    special_token(model, |m| Some(m.tokenizer().map_or(1, |t| t.eos())))
}

#[no_mangle]
pub extern "C" fn rg_token_eot(model: *const rg_model) -> rg_token {
    special_token(model, |m| {
        m.tokenizer().and_then(|t| t.token_id("<end_of_turn>"))
    })
}

#[no_mangle]
pub extern "C" fn rg_token_is_eog(model: *const rg_model, token: rg_token) -> bool {
    let eos = rg_token_eos(model);
    let eot = rg_token_eot(model);
    token >= 0 && (token == eos || token == eot)
}

fn tokenizer_of(model: &rg_model) -> Result<&crate::tokenizer::Tokenizer, CError> {
    model.model.tokenizer().ok_or_else(|| {
        CError(
            rg_status::RG_ERR_UNSUPPORTED,
            "the model has no tokenizer".into(),
        )
    })
}

#[no_mangle]
pub extern "C" fn rg_tokenize(
    model: *const rg_model,
    text: *const c_char,
    text_len: i32,
    tokens: *mut rg_token,
    n_max: i32,
    add_bos: bool,
) -> i32 {
    guard(i32::MIN, || {
        let tok = tokenizer_of(model_ref(model)?)?;
        let text = slice_in(text as *const u8, text_len as i64, "text")?;
        let text = std::str::from_utf8(text).map_err(|e| invalid(format!("text: {e}")))?;
        let out = slice_out(tokens, n_max as i64, "tokens")?;
        let ids = tok.encode(text, add_bos, true)?;
        if ids.len() > out.len() {
            return Ok(-(ids.len() as i32));
        }
        for (o, &id) in out.iter_mut().zip(&ids) {
            *o = id as rg_token;
        }
        Ok(ids.len() as i32)
    })
}

#[no_mangle]
pub extern "C" fn rg_token_to_piece(
    model: *const rg_model,
    token: rg_token,
    buf: *mut c_char,
    len: i32,
) -> i32 {
    guard(i32::MIN, || {
        let tok = tokenizer_of(model_ref(model)?)?;
        let out = slice_out(buf as *mut u8, len as i64, "buf")?;
        let bytes = u32::try_from(token)
            .ok()
            .and_then(|t| tok.token_bytes(t))
            .ok_or_else(|| invalid(format!("token id {token} out of range")))?;
        if bytes.len() > out.len() {
            return Ok(-(bytes.len() as i32));
        }
        out[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len() as i32)
    })
}

#[no_mangle]
pub extern "C" fn rg_detokenize(
    model: *const rg_model,
    tokens: *const rg_token,
    n_tokens: i32,
    buf: *mut c_char,
    len: i32,
    skip_special: bool,
) -> i32 {
    guard(i32::MIN, || {
        let m = model_ref(model)?;
        let tok = tokenizer_of(m)?;
        let ids = token_ids(
            slice_in(tokens, n_tokens as i64, "tokens")?,
            m.model.n_vocab(),
        )?;
        let out = slice_out(buf as *mut u8, len as i64, "buf")?;
        let text = tok.decode(&ids, skip_special)?;
        if text.len() + 1 > out.len() {
            return Ok(-(text.len() as i32 + 1));
        }
        out[..text.len()].copy_from_slice(text.as_bytes());
        out[text.len()] = 0;
        Ok(text.len() as i32)
    })
}

#[no_mangle]
pub extern "C" fn rg_context_new(
    model: *const rg_model,
    params: *const rg_context_params,
) -> *mut rg_context {
    guard(std::ptr::null_mut(), || {
        let m = model_ref(model)?;
        // SAFETY: NULL or a valid params struct (header contract).
        let p = unsafe { params.as_ref() }
            .copied()
            .unwrap_or(rg_context_default_params());
        if p.n_batch <= 0 {
            return Err(invalid(format!(
                "n_batch must be positive, got {}",
                p.n_batch
            )));
        }
        if p.n_threads < 0 {
            return Err(invalid(format!(
                "n_threads must be >= 0, got {}",
                p.n_threads
            )));
        }
        let params = ContextParams {
            batch_size: p.n_batch as usize,
            n_threads: p.n_threads as usize,
            ..Default::default()
        };
        let ctx = Context::new(Arc::clone(&m.model), params)?;
        Ok(Box::into_raw(Box::new(rg_context {
            ctx,
            has_logits: false,
        })))
    })
}

#[no_mangle]
pub extern "C" fn rg_context_free(ctx: *mut rg_context) {
    guard((), || {
        if !ctx.is_null() {
            // SAFETY: produced by `Box::into_raw` in `rg_context_new`, freed once (contract).
            drop(unsafe { Box::from_raw(ctx) });
        }
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_decode(
    ctx: *mut rg_context,
    tokens: *const rg_token,
    n_tokens: i32,
) -> rg_status {
    guard_status(|| {
        let c = ctx_mut(ctx)?;
        let tokens = slice_in(tokens, n_tokens as i64, "tokens")?;
        if tokens.is_empty() {
            return Err(invalid("n_tokens must be positive"));
        }
        let ids = token_ids(tokens, c.ctx.model().n_vocab())?;
        c.ctx.eval(&ids, false)?;
        c.has_logits = true;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_get_logits(ctx: *mut rg_context) -> *const f32 {
    guard(std::ptr::null(), || {
        let c = ctx_mut(ctx)?;
        if !c.has_logits {
            return Err(invalid(
                "no logits: nothing decoded since creation or reset",
            ));
        }
        Ok(c.ctx.logits().as_ptr())
    })
}

#[no_mangle]
pub extern "C" fn rg_context_n_past(ctx: *const rg_context) -> i32 {
    guard(-1, || Ok(ctx_ref(ctx)?.ctx.position() as i32))
}

#[no_mangle]
pub extern "C" fn rg_context_reset(ctx: *mut rg_context) {
    guard((), || {
        let c = ctx_mut(ctx)?;
        c.ctx.reset();
        c.has_logits = false;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_state_size(ctx: *const rg_context) -> usize {
    guard(0, || Ok(ctx_ref(ctx)?.ctx.saved_state_len()))
}

#[no_mangle]
pub extern "C" fn rg_state_save(ctx: *const rg_context, dst: *mut u8, size: usize) -> rg_status {
    guard_status(|| {
        let c = ctx_ref(ctx)?;
        let need = c.ctx.saved_state_len();
        if size < need {
            return Err(invalid(format!(
                "state buffer of {size} bytes, {need} needed"
            )));
        }
        let out = slice_out(dst, need as i64, "dst")?;
        c.ctx.save_state(out)?;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_state_load(ctx: *mut rg_context, src: *const u8, size: usize) -> rg_status {
    guard_status(|| {
        let c = ctx_mut(ctx)?;
        let bytes = slice_in(src, size as i64, "src")?;
        c.ctx.load_state(bytes)?;
        c.has_logits = c.ctx.position() > 0;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_sampler_new(params: *const rg_sampler_params) -> *mut rg_sampler {
    guard(std::ptr::null_mut(), || {
        // SAFETY: NULL or a valid params struct (header contract).
        let params = match unsafe { params.as_ref() } {
            None => SamplerParams::greedy(),
            Some(p) => sampler_params_from_c(p)?,
        };
        Ok(Box::into_raw(Box::new(rg_sampler {
            sampler: Sampler::new(params),
        })))
    })
}

fn sampler_params_from_c(p: &rg_sampler_params) -> Result<SamplerParams, CError> {
    let params = SamplerParams {
        temp: p.temp,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: p.repeat_last_n.max(0) as usize,
        seed: (p.seed != RG_DEFAULT_SEED).then_some(p.seed as u64),
    };
    params.validate()?;
    Ok(params)
}

#[no_mangle]
pub extern "C" fn rg_sampler_sample(sampler: *mut rg_sampler, ctx: *mut rg_context) -> rg_token {
    guard(-1, || {
        // SAFETY: produced by `rg_sampler_new` and not freed (contract).
        let s = unsafe { sampler.as_mut() }.ok_or_else(|| invalid("sampler is NULL"))?;
        let c = ctx_mut(ctx)?;
        if !c.has_logits {
            return Err(invalid(
                "no logits: nothing decoded since creation or reset",
            ));
        }
        let token = s.sampler.sample(c.ctx.logits());
        s.sampler.accept(token);
        Ok(token as rg_token)
    })
}

#[no_mangle]
pub extern "C" fn rg_sampler_reset(sampler: *mut rg_sampler) {
    guard((), || {
        // SAFETY: as in `rg_sampler_sample`.
        if let Some(s) = unsafe { sampler.as_mut() } {
            s.sampler.reset();
        }
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_sampler_free(sampler: *mut rg_sampler) {
    guard((), || {
        if !sampler.is_null() {
            // SAFETY: produced by `Box::into_raw` in `rg_sampler_new`, freed once (contract).
            drop(unsafe { Box::from_raw(sampler) });
        }
        Ok(())
    })
}
