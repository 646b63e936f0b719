//! `Model` and `Tokenizer`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rgemma::chat::{ChatTemplate, Message, Role};
use rgemma::gguf::GgufFile;
use rgemma::model::{Context, ContextParams};

use crate::generation::{self, Sampler, Stream};
use crate::{to_py, token_ids};

/// What the Python objects made from one model share: the weights, the thread count new
/// contexts get, and one spare context that `generate` / `stream` reuse (its state is a few
/// tens of MB, and a context starts its own thread pool).
pub(crate) struct Shared {
    pub(crate) model: Arc<rgemma::model::Model>,
    pub(crate) n_threads: usize,
    spare: Mutex<Option<Context>>,
}

impl Shared {
    /// A fresh sequence for one generation: the spare context when it is free, else a new
    /// one. Call with the GIL released (it may wait for the mutex).
    pub(crate) fn take_context(&self) -> rgemma::Result<Context> {
        let spare = self.spare.lock().ok().and_then(|mut s| s.take());
        match spare {
            Some(mut ctx) => {
                ctx.reset();
                Ok(ctx)
            }
            None => Context::new(
                self.model.clone(),
                ContextParams {
                    n_threads: self.n_threads,
                    ..ContextParams::default()
                },
            ),
        }
    }

    /// Returns a context taken with [`Shared::take_context`] for the next generation.
    pub(crate) fn give_back(&self, ctx: Context) {
        if let Ok(mut spare) = self.spare.lock() {
            spare.get_or_insert(ctx);
        }
    }

    pub(crate) fn tokenizer(&self) -> PyResult<&rgemma::tokenizer::Tokenizer> {
        self.model
            .tokenizer()
            .ok_or_else(|| PyValueError::new_err("this model file has no tokenizer: use token ids"))
    }

    /// The ids that end a generation by default: EOS and, in a chat vocabulary,
    /// `<end_of_turn>`.
    pub(crate) fn stop_tokens(&self) -> Vec<u32> {
        let Some(tok) = self.model.tokenizer() else {
            return Vec::new();
        };
        let mut stops = vec![tok.eos()];
        stops.extend(tok.token_id("<end_of_turn>").filter(|&id| id != tok.eos()));
        stops
    }
}

/// `Model.tokenize` / `Tokenizer.tokenize`, with the GIL released.
fn encode(
    py: Python<'_>,
    tok: &rgemma::tokenizer::Tokenizer,
    text: &str,
    add_bos: bool,
    special: bool,
) -> PyResult<Vec<u32>> {
    py.detach(|| tok.encode(text, add_bos, special))
        .map_err(to_py)
}

/// `Model.detokenize` / `Tokenizer.detokenize`: control tokens only with `special`.
fn decode(
    py: Python<'_>,
    tok: &rgemma::tokenizer::Tokenizer,
    ids: Vec<i64>,
    special: bool,
) -> PyResult<String> {
    let ids = token_ids(ids)?;
    py.detach(|| tok.decode(&ids, !special)).map_err(to_py)
}

/// Threads for a new context: `None` = every core the process may use.
pub(crate) fn thread_count(n_threads: Option<i64>) -> PyResult<usize> {
    match n_threads {
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Some(n) if (1..=1024).contains(&n) => Ok(n as usize),
        Some(n) => Err(PyValueError::new_err(format!(
            "n_threads must be between 1 and 1024, got {n}"
        ))),
    }
}

/// A RecurrentGemma model loaded from a GGUF file (memory-mapped; the weights are shared by
/// every context made from it).
#[pyclass(subclass, frozen, module = "rgemma._rgemma")]
pub struct Model {
    pub(crate) shared: Arc<Shared>,
    path: PathBuf,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, n_threads = None))]
    fn new(py: Python<'_>, path: PathBuf, n_threads: Option<i64>) -> PyResult<Self> {
        let n_threads = thread_count(n_threads)?;
        let model = py
            .detach(|| rgemma::model::Model::load(&path))
            .map_err(to_py)?;
        Ok(Model {
            shared: Arc::new(Shared {
                model: Arc::new(model),
                n_threads,
                spare: Mutex::new(None),
            }),
            path,
        })
    }

    /// The file this model was loaded from.
    #[getter]
    fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    #[getter]
    fn n_vocab(&self) -> usize {
        self.shared.model.n_vocab()
    }

    /// Threads of the contexts made for this model unless told otherwise.
    #[getter]
    fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// The file's tokenizer, or None when it has none.
    #[getter]
    fn tokenizer(&self) -> Option<Tokenizer> {
        self.shared.model.tokenizer()?;
        Some(Tokenizer {
            source: Source::Model(self.shared.clone()),
        })
    }

    /// Token ids of `text` (BOS first when `add_bos`); with `special`, control pieces written
    /// in the text (`<start_of_turn>`) become their token instead of plain text.
    #[pyo3(signature = (text, add_bos = true, special = false))]
    fn tokenize(
        &self,
        py: Python<'_>,
        text: &str,
        add_bos: bool,
        special: bool,
    ) -> PyResult<Vec<u32>> {
        encode(py, self.shared.tokenizer()?, text, add_bos, special)
    }

    /// The text of `ids`; control tokens (`<bos>`, `<end_of_turn>`) are left out unless
    /// `special`.
    #[pyo3(signature = (ids, special = false))]
    fn detokenize(&self, py: Python<'_>, ids: Vec<i64>, special: bool) -> PyResult<String> {
        decode(py, self.shared.tokenizer()?, ids, special)
    }

    /// The prompt of a chat, `(role, content)` pairs, in the Gemma turn template (system
    /// and developer messages folded into the next user turn).
    fn _chat_prompt(&self, messages: Vec<(String, String)>) -> PyResult<Vec<u32>> {
        let tok = self.shared.tokenizer()?;
        let template = ChatTemplate::new(tok).ok_or_else(|| {
            PyValueError::new_err(
                "this model's vocabulary has no <start_of_turn>/<end_of_turn>: it cannot chat",
            )
        })?;
        if messages.is_empty() {
            return Err(PyValueError::new_err(
                "messages: at least one message is needed",
            ));
        }
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, (role, content))| {
                let role = match role.as_str() {
                    "system" | "developer" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => {
                        return Err(PyValueError::new_err(format!(
                            "messages[{i}].role: unknown role {other:?} (system, developer, user, assistant)"
                        )))
                    }
                };
                Ok(Message { role, content })
            })
            .collect::<PyResult<Vec<_>>>()?;
        template.render(tok, &messages).map_err(to_py)
    }

    /// Generates from `prompt` (token ids) on a fresh sequence: (text, generated ids,
    /// finish reason "stop" / "length", prompt token count).
    #[pyo3(signature = (prompt, sampler, max_tokens = None, stop = Vec::new(), stop_tokens = None))]
    fn _complete(
        &self,
        py: Python<'_>,
        prompt: Vec<i64>,
        sampler: &Sampler,
        max_tokens: Option<usize>,
        stop: Vec<String>,
        stop_tokens: Option<Vec<i64>>,
    ) -> PyResult<(String, Vec<u32>, &'static str, usize)> {
        generation::complete(
            py,
            &self.shared,
            prompt,
            sampler,
            max_tokens,
            stop,
            stop_tokens,
        )
    }

    /// Like `_complete`, as an iterator of text pieces.
    #[pyo3(signature = (prompt, sampler, max_tokens = None, stop = Vec::new(), stop_tokens = None))]
    fn _stream(
        &self,
        py: Python<'_>,
        prompt: Vec<i64>,
        sampler: &Sampler,
        max_tokens: Option<usize>,
        stop: Vec<String>,
        stop_tokens: Option<Vec<i64>>,
    ) -> PyResult<Stream> {
        generation::stream(
            py,
            &self.shared,
            prompt,
            sampler,
            max_tokens,
            stop,
            stop_tokens,
        )
    }

    /// Ids that end a generation unless told otherwise (EOS, `<end_of_turn>`).
    fn _stop_tokens(&self) -> Vec<u32> {
        self.shared.stop_tokens()
    }

    fn __repr__(&self) -> String {
        let hp = self.shared.model.hparams();
        format!(
            "Model({:?}, layers={}, width={}, n_vocab={}, n_threads={})",
            self.path.display().to_string(),
            hp.n_layers,
            hp.hidden,
            hp.n_vocab,
            self.shared.n_threads
        )
    }
}

enum Source {
    /// Read from a file's metadata alone.
    Own(rgemma::tokenizer::Tokenizer),
    /// A loaded model's.
    Model(Arc<Shared>),
}

/// The tokenizer stored in a GGUF file. `Tokenizer(path)` reads only the file's metadata,
/// whatever model the file holds; `Model.tokenizer` is a loaded model's.
#[pyclass(frozen, module = "rgemma._rgemma")]
pub struct Tokenizer {
    source: Source,
}

impl Tokenizer {
    fn get(&self) -> &rgemma::tokenizer::Tokenizer {
        match &self.source {
            Source::Own(t) => t,
            Source::Model(s) => s.model.tokenizer().expect("checked when made"),
        }
    }
}

#[pymethods]
impl Tokenizer {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let tok = py.detach(|| {
            let file = GgufFile::open(&path)?;
            rgemma::tokenizer::Tokenizer::from_gguf(&file)
        });
        match tok.map_err(to_py)? {
            Some(t) => Ok(Tokenizer {
                source: Source::Own(t),
            }),
            None => Err(PyValueError::new_err(format!(
                "{}: the file has no tokenizer",
                path.display()
            ))),
        }
    }

    /// See `Model.tokenize`.
    #[pyo3(signature = (text, add_bos = true, special = false))]
    fn tokenize(
        &self,
        py: Python<'_>,
        text: &str,
        add_bos: bool,
        special: bool,
    ) -> PyResult<Vec<u32>> {
        encode(py, self.get(), text, add_bos, special)
    }

    /// See `Model.detokenize`.
    #[pyo3(signature = (ids, special = false))]
    fn detokenize(&self, py: Python<'_>, ids: Vec<i64>, special: bool) -> PyResult<String> {
        decode(py, self.get(), ids, special)
    }

    #[getter]
    fn n_vocab(&self) -> usize {
        self.get().n_vocab()
    }

    #[getter]
    fn bos_token_id(&self) -> u32 {
        self.get().bos()
    }

    #[getter]
    fn eos_token_id(&self) -> u32 {
        self.get().eos()
    }

    /// The id of a vocabulary piece (`"<end_of_turn>"`), or None.
    fn token_id(&self, piece: &str) -> Option<u32> {
        self.get().token_id(piece)
    }

    /// The vocabulary string of `id` (`"▁world"`), or None when out of range.
    fn piece(&self, id: i64) -> Option<String> {
        self.get().piece(u32::try_from(id).ok()?).map(str::to_owned)
    }
}
