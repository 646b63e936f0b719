//! The C ABI (`include/rgemma.h`). Every entry point:
//! - catches panics (`guard`), so no unwind crosses the boundary;
//! - validates its pointers and lengths before use;
//! - reports failures through a return value and the thread-local `rg_last_error()`.
//!
//! Handles are boxed Rust objects handed out as raw pointers; `*_free` takes them back.
//! A model is shared by contexts through an `Arc`, so freeing the C model handle while a
//! context still uses it cannot dangle on the Rust side (the header still asks callers to
//! free contexts first).
//!
//! Many sequences: an `rg_context` holds a [`Context`] whose batch context has `n_seq_max`
//! sequence slots. The single-sequence calls (`rg_decode`, `rg_get_logits`, `rg_state_*`)
//! work on sequence 0; `rg_decode_batch` and `rg_seq_*` reach every slot. The arrays of an
//! `rg_batch` made by `rg_batch_init` are owned by a registry here (see [`BATCHES`]), so that
//! `rg_batch_free` of a batch that is not ours, or freed twice, is an error and not a crash.

#![allow(non_camel_case_types)]
// The entry points check their pointers themselves; marking every one `unsafe` would not add
// information for C callers.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use crate::model::{BatchRow, Context, ContextParams, KvType, Model};
use crate::sampling::{Sampler, SamplerParams};
use crate::Error;

pub type rg_token = i32;
pub type rg_seq_id = i32;

/// Element type of the attention K/V rings; one type for keys and values (the engine has
/// one ring type). A C enum is int-sized; it is kept here as a plain integer so that a
/// value outside the enum is an error rather than undefined behaviour.
pub type rg_kv_type = i32;
pub const RG_KV_F32: rg_kv_type = 0;
pub const RG_KV_F16: rg_kv_type = 1;

/// Most sequence slots a context may have (llama.cpp's `LLAMA_MAX_SEQ`): a clear error
/// instead of an allocation failure when a caller passes a huge `n_seq_max`.
pub const RG_MAX_SEQ: i32 = 256;

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
    pub n_seq_max: i32,
    pub kv_type: rg_kv_type,
}

/// Rows for `rg_decode_batch`, in the shape of `llama_batch` (one sequence per row;
/// positions are implicit: a row continues its sequence).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rg_batch {
    pub n_tokens: i32,
    pub token: *mut rg_token,
    pub seq_id: *mut rg_seq_id,
    pub logits: *mut i8,
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
    /// Rows handed to the engine by `rg_decode_batch`; capacity `n_batch` from creation, so
    /// a decode allocates nothing.
    rows: Vec<BatchRow>,
    /// Rows of the last `rg_decode_batch` while `rg_get_logits_ith` may read them; 0 after
    /// anything else that decodes or resets.
    batch_rows: usize,
}

/// The arrays behind one `rg_batch` of `rg_batch_init`, of the same length (its rows).
struct BatchArrays {
    token: Vec<rg_token>,
    seq_id: Vec<rg_seq_id>,
    logits: Vec<i8>,
}

/// Live batches of `rg_batch_init`, keyed by the address of their token array. The
/// registry owns the arrays (a `Vec`'s buffer does not move while it is not resized), lets
/// `rg_batch_free` refuse a foreign or already freed batch, and tells `rg_decode_batch` the
/// capacity of a batch's arrays.
static BATCHES: Mutex<BTreeMap<usize, BatchArrays>> = Mutex::new(BTreeMap::new());

fn batches() -> std::sync::MutexGuard<'static, BTreeMap<usize, BatchArrays>> {
    // Only lookups, inserts and removes run under the lock and none leaves the map
    // inconsistent, so a poisoned lock is still usable.
    BATCHES.lock().unwrap_or_else(|e| e.into_inner())
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

/// Sequence `seq` of `c`, checked against `0 .. n_seq_max`.
fn seq_index(c: &rg_context, seq: rg_seq_id) -> Result<usize, CError> {
    let n_seq = c.ctx.batch().n_seq_max();
    if seq < 0 || seq as usize >= n_seq {
        return Err(invalid(format!(
            "sequence id {seq} out of range (n_seq_max {n_seq})"
        )));
    }
    Ok(seq as usize)
}

fn kv_type_from_c(kv: rg_kv_type) -> Result<KvType, CError> {
    match kv {
        RG_KV_F32 => Ok(KvType::F32),
        RG_KV_F16 => Ok(KvType::F16),
        _ => Err(invalid(format!(
            "kv_type {kv}: expected RG_KV_F32 ({RG_KV_F32}) or RG_KV_F16 ({RG_KV_F16})"
        ))),
    }
}

fn kv_type_to_c(kv: KvType) -> rg_kv_type {
    match kv {
        KvType::F32 => RG_KV_F32,
        KvType::F16 => RG_KV_F16,
    }
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
        n_seq_max: d.n_seq_max as i32,
        kv_type: kv_type_to_c(d.kv_type),
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
        if !(1..=RG_MAX_SEQ).contains(&p.n_seq_max) {
            return Err(invalid(format!(
                "n_seq_max must be in 1..={RG_MAX_SEQ}, got {}",
                p.n_seq_max
            )));
        }
        let params = ContextParams {
            batch_size: p.n_batch as usize,
            n_threads: p.n_threads as usize,
            n_seq_max: p.n_seq_max as usize,
            kv_type: kv_type_from_c(p.kv_type)?,
        };
        let ctx = Context::new(Arc::clone(&m.model), params)?;
        Ok(Box::into_raw(Box::new(rg_context {
            ctx,
            rows: Vec::with_capacity(params.batch_size),
            batch_rows: 0,
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
        // The engine's per-row outputs are overwritten from here on.
        c.batch_rows = 0;
        c.ctx.eval(&ids, false)?;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_get_logits(ctx: *mut rg_context) -> *const f32 {
    guard(std::ptr::null(), || {
        Ok(seq_logits(ctx_ref(ctx)?, 0)?.as_ptr())
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
        c.batch_rows = 0;
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
        forget_logits_of_empty(c, 0)
    })
}

/// A state saved at position 0 holds zeros for logits; after loading it the sequence has no
/// logits, as after creation (`rg_get_logits` answers NULL, not zeros).
fn forget_logits_of_empty(c: &mut rg_context, seq: usize) -> Result<(), CError> {
    let batch = c.ctx.batch_mut()?;
    if batch.seq_position(seq)? == 0 {
        batch.seq_clear(seq)?;
    }
    Ok(())
}

/// The logits after the last token of `seq`, or an error saying there are none.
fn seq_logits(c: &rg_context, seq: usize) -> Result<&[f32], CError> {
    c.ctx.batch().seq_logits(seq).ok_or_else(|| {
        invalid(format!(
            "no logits for sequence {seq}: nothing decoded with logits since it was created, \
             cleared or reset"
        ))
    })
}

#[no_mangle]
pub extern "C" fn rg_context_n_seq_max(ctx: *const rg_context) -> i32 {
    guard(-1, || Ok(ctx_ref(ctx)?.ctx.batch().n_seq_max() as i32))
}

#[no_mangle]
pub extern "C" fn rg_context_kv_type(ctx: *const rg_context) -> rg_kv_type {
    guard(-1, || Ok(kv_type_to_c(ctx_ref(ctx)?.ctx.batch().kv_type())))
}

/// The batch returned when `rg_batch_init` fails: no arrays.
fn empty_batch() -> rg_batch {
    rg_batch {
        n_tokens: 0,
        token: std::ptr::null_mut(),
        seq_id: std::ptr::null_mut(),
        logits: std::ptr::null_mut(),
    }
}

/// A zeroed vector of `n` values, or an out-of-memory error instead of an abort.
fn zeroed<T: Copy + Default>(n: usize) -> Result<Vec<T>, CError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        CError(
            rg_status::RG_ERR_OUT_OF_MEMORY,
            format!("cannot allocate a batch of {n} rows"),
        )
    })?;
    v.resize(n, T::default());
    Ok(v)
}

#[no_mangle]
pub extern "C" fn rg_batch_init(n_tokens_max: i32) -> rg_batch {
    guard(empty_batch(), || {
        if n_tokens_max <= 0 {
            return Err(invalid(format!(
                "n_tokens_max must be positive, got {n_tokens_max}"
            )));
        }
        let n = n_tokens_max as usize;
        let mut arrays = BatchArrays {
            token: zeroed(n)?,
            seq_id: zeroed(n)?,
            logits: zeroed(n)?,
        };
        let batch = rg_batch {
            n_tokens: 0,
            token: arrays.token.as_mut_ptr(),
            seq_id: arrays.seq_id.as_mut_ptr(),
            logits: arrays.logits.as_mut_ptr(),
        };
        batches().insert(batch.token as usize, arrays);
        Ok(batch)
    })
}

#[no_mangle]
pub extern "C" fn rg_batch_free(batch: rg_batch) {
    guard((), || {
        if batch.token.is_null() {
            return Ok(());
        }
        match batches().remove(&(batch.token as usize)) {
            Some(_) => Ok(()),
            None => Err(invalid(
                "rg_batch_free: not a live batch of rg_batch_init (freed already?)",
            )),
        }
    })
}

#[no_mangle]
pub extern "C" fn rg_decode_batch(ctx: *mut rg_context, batch: rg_batch) -> rg_status {
    guard_status(|| {
        let c = ctx_mut(ctx)?;
        let n = batch.n_tokens;
        if n <= 0 {
            return Err(invalid(format!("batch.n_tokens must be positive, got {n}")));
        }
        let capacity = c.ctx.batch().batch_capacity();
        if n as usize > capacity {
            return Err(invalid(format!(
                "batch of {n} rows, the context takes at most {capacity} (n_batch)"
            )));
        }
        if let Some(arrays) = batches().get(&(batch.token as usize)) {
            if n as usize > arrays.token.len() {
                return Err(invalid(format!(
                    "batch.n_tokens {n} exceeds the {} rows of rg_batch_init",
                    arrays.token.len()
                )));
            }
        }
        let tokens = slice_in(batch.token, n as i64, "batch.token")?;
        let seq_ids = slice_in(batch.seq_id, n as i64, "batch.seq_id")?;
        let want_logits = slice_in(batch.logits, n as i64, "batch.logits")?;
        let n_vocab = c.ctx.model().n_vocab();
        // Every row is checked here, so that an engine error below can only come from the
        // forward pass itself.
        c.rows.clear();
        for (i, ((&token, &seq), &logits)) in
            tokens.iter().zip(seq_ids).zip(want_logits).enumerate()
        {
            let seq =
                seq_index(c, seq).map_err(|CError(s, m)| CError(s, format!("row {i}: {m}")))?;
            if token < 0 || token as usize >= n_vocab {
                return Err(invalid(format!(
                    "row {i}: token id {token} out of range (vocabulary {n_vocab})"
                )));
            }
            c.rows.push(BatchRow {
                token: token as u32,
                seq,
                logits: logits != 0,
            });
        }
        let rg_context {
            ctx,
            rows,
            batch_rows,
        } = c;
        match ctx.batch_mut()?.decode(rows) {
            Ok(()) => {
                *batch_rows = rows.len();
                Ok(())
            }
            Err(e) => {
                // The forward pass failed midway: the engine cleared the batch's sequences
                // and its per-row outputs are not those of this batch.
                *batch_rows = 0;
                Err(e.into())
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn rg_get_logits_ith(ctx: *mut rg_context, i: i32) -> *const f32 {
    guard(std::ptr::null(), || {
        let c = ctx_ref(ctx)?;
        let n = c.batch_rows as i64;
        if n == 0 {
            return Err(invalid(
                "no batch rows: rg_get_logits_ith reads the rows of the last rg_decode_batch \
                 (none since creation, or rg_decode / rg_context_reset came after it)",
            ));
        }
        // Negative indices count from the end, as in llama_get_logits_ith.
        let row = if i < 0 { n + i as i64 } else { i as i64 };
        if !(0..n).contains(&row) {
            return Err(invalid(format!(
                "row {i} out of range: the last batch had {n} rows"
            )));
        }
        let logits = c
            .ctx
            .batch()
            .logits_ith(row as usize)
            .ok_or_else(|| invalid(format!("row {i} of the last batch asked for no logits")))?;
        Ok(logits.as_ptr())
    })
}

#[no_mangle]
pub extern "C" fn rg_seq_get_logits(ctx: *mut rg_context, seq: rg_seq_id) -> *const f32 {
    guard(std::ptr::null(), || {
        let c = ctx_ref(ctx)?;
        Ok(seq_logits(c, seq_index(c, seq)?)?.as_ptr())
    })
}

#[no_mangle]
pub extern "C" fn rg_seq_n_past(ctx: *const rg_context, seq: rg_seq_id) -> i32 {
    guard(-1, || {
        let c = ctx_ref(ctx)?;
        Ok(c.ctx.batch().seq_position(seq_index(c, seq)?)? as i32)
    })
}

#[no_mangle]
pub extern "C" fn rg_seq_clear(ctx: *mut rg_context, seq: rg_seq_id) -> rg_status {
    guard_status(|| {
        let c = ctx_mut(ctx)?;
        let seq = seq_index(c, seq)?;
        c.ctx.batch_mut()?.seq_clear(seq)?;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_seq_copy(ctx: *mut rg_context, src: rg_seq_id, dst: rg_seq_id) -> rg_status {
    guard_status(|| {
        let c = ctx_mut(ctx)?;
        let (src, dst) = (seq_index(c, src)?, seq_index(c, dst)?);
        c.ctx.batch_mut()?.seq_copy(src, dst)?;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_seq_state_size(ctx: *const rg_context) -> usize {
    guard(0, || Ok(ctx_ref(ctx)?.ctx.batch().seq_state_len()))
}

#[no_mangle]
pub extern "C" fn rg_seq_state_save(
    ctx: *const rg_context,
    seq: rg_seq_id,
    dst: *mut u8,
    size: usize,
) -> rg_status {
    guard_status(|| {
        let c = ctx_ref(ctx)?;
        let seq = seq_index(c, seq)?;
        let need = c.ctx.batch().seq_state_len();
        if size < need {
            return Err(invalid(format!(
                "state buffer of {size} bytes, {need} needed"
            )));
        }
        let out = slice_out(dst, need as i64, "dst")?;
        c.ctx.batch().seq_save(seq, out)?;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn rg_seq_state_load(
    ctx: *mut rg_context,
    seq: rg_seq_id,
    src: *const u8,
    size: usize,
) -> rg_status {
    guard_status(|| {
        let c = ctx_mut(ctx)?;
        let seq = seq_index(c, seq)?;
        let bytes = slice_in(src, size as i64, "src")?;
        c.ctx.batch_mut()?.seq_load(seq, bytes)?;
        forget_logits_of_empty(c, seq)
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
        sample_into(s, ctx_ref(ctx)?, 0)
    })
}

#[no_mangle]
pub extern "C" fn rg_sampler_sample_seq(
    sampler: *mut rg_sampler,
    ctx: *mut rg_context,
    seq: rg_seq_id,
) -> rg_token {
    guard(-1, || {
        // SAFETY: as in `rg_sampler_sample`.
        let s = unsafe { sampler.as_mut() }.ok_or_else(|| invalid("sampler is NULL"))?;
        let c = ctx_ref(ctx)?;
        sample_into(s, c, seq_index(c, seq)?)
    })
}

/// Samples from the logits of `seq` and records the token in the sampler's history.
fn sample_into(s: &mut rg_sampler, c: &rg_context, seq: usize) -> Result<rg_token, CError> {
    let token = s.sampler.sample(seq_logits(c, seq)?);
    s.sampler.accept(token);
    Ok(token as rg_token)
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
