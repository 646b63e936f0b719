//! `rgemma._rgemma`: the native half of the `rgemma` Python package (the Python half,
//! `rgemma/__init__.py`, subclasses these types to hand logits out as numpy arrays and to
//! shape chat completions).
//!
//! - `model.rs`: `Model` (weights, tokenizer, a spare context for `generate`) and
//!   `Tokenizer` (any GGUF file's tokenizer, without weights).
//! - `context.rs`: `Context` (one sequence) and `BatchContext` (many, decoded together).
//! - `generation.rs`: `Sampler`, one-shot generation and the `Stream` iterator.
//!
//! Threads: every call that runs the model releases the GIL; a context is behind a mutex
//! that is only ever locked with the GIL released, so two threads using one context take
//! turns and two contexts run in parallel. Ctrl-C: generation polls Python's signal
//! handlers between prompt chunks and tokens and raises `KeyboardInterrupt` there.

mod context;
mod generation;
mod model;

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The engine's errors as Python exceptions: a missing file is `FileNotFoundError`, other
/// I/O errors `OSError`, bad arguments and bad files `ValueError`; the message is the
/// engine's.
pub(crate) fn to_py(e: rgemma::Error) -> PyErr {
    match &e {
        rgemma::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        rgemma::Error::Io { .. } => PyOSError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// Locks a mutex that is only locked with the GIL released. A panic inside a call (a bug)
/// poisons it; later calls then raise instead of using a half-updated state.
pub(crate) fn lock<T>(m: &Mutex<T>) -> PyResult<MutexGuard<'_, T>> {
    m.lock().map_err(|_| {
        PyRuntimeError::new_err("this object is unusable: an earlier call failed inside rgemma")
    })
}

/// Token ids from Python ints: negative or too large ones are a `ValueError` naming the
/// position (the range check against the vocabulary is the engine's).
pub(crate) fn token_ids(ids: Vec<i64>) -> PyResult<Vec<u32>> {
    ids.iter()
        .enumerate()
        .map(|(i, &id)| {
            u32::try_from(id)
                .map_err(|_| PyValueError::new_err(format!("token {i} has invalid id {id}")))
        })
        .collect()
}

/// An immutable block of f32 values that numpy wraps without a copy (through
/// `__array_interface__`; `rgemma/__init__.py` calls `numpy.asarray` on it). The array keeps
/// this object, and so the values, alive; the values never change, so an array taken before
/// a later `eval` keeps its numbers.
#[pyclass(frozen, module = "rgemma._rgemma")]
pub(crate) struct F32Buffer {
    data: Box<[f32]>,
    shape: Vec<usize>,
}

impl F32Buffer {
    pub(crate) fn new(data: Box<[f32]>, shape: Vec<usize>) -> F32Buffer {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        F32Buffer { data, shape }
    }
}

#[pymethods]
impl F32Buffer {
    /// numpy's array interface (version 3): little-endian f32, C order, read-only.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", pyo3::types::PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", "<f4")?;
        // (address, read-only). The address of an empty box is dangling but never read.
        d.set_item("data", (self.data.as_ptr() as usize, true))?;
        Ok(d)
    }

    fn __len__(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
}

#[pymodule]
fn _rgemma(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<F32Buffer>()?;
    m.add_class::<model::Tokenizer>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<context::Context>()?;
    m.add_class::<context::BatchContext>()?;
    m.add_class::<generation::Sampler>()?;
    m.add_class::<generation::Stream>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
