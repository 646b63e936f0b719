//! The engine's [`Event`]s as OpenAI's response objects: a whole `chat.completion` /
//! `text_completion`, or the chunks of a stream (server-sent events, `data: {json}\n\n`,
//! ending with `data: [DONE]`).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::engine::{Event, FinishReason, TokenLogprob, Usage};
use crate::model::Model;

/// Which schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completion,
}

/// Per-choice state of an answer being built or streamed.
#[derive(Default)]
struct ChoiceState {
    text: String,
    /// Characters sent before the current token (the completions schema's `text_offset`).
    chars: usize,
    finish: Option<FinishReason>,
    logprobs: Vec<Value>,
    /// Completions schema: the parallel lists.
    lp_tokens: Vec<Value>,
    lp_values: Vec<Value>,
    lp_top: Vec<Value>,
    lp_offsets: Vec<Value>,
}

/// Formats the answer of one request.
pub struct Responder {
    api: Api,
    id: String,
    created: u64,
    model_id: String,
    model: Arc<Model>,
    include_usage: bool,
    logprobs: bool,
    choices: Vec<ChoiceState>,
}

impl Responder {
    pub fn new(
        api: Api,
        id: String,
        model_id: String,
        model: Arc<Model>,
        n: usize,
        include_usage: bool,
        logprobs: bool,
    ) -> Responder {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Responder {
            api,
            id,
            created,
            model_id,
            model,
            include_usage,
            logprobs,
            choices: (0..n).map(|_| ChoiceState::default()).collect(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.api, chunk) {
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
            (Api::Completion, _) => "text_completion",
        }
    }

    /// The text of token `id` as OpenAI's logprobs give it, and its bytes.
    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        match self.model.tokenizer().and_then(|t| t.token_bytes(id)) {
            Some(bytes) => (
                String::from_utf8_lossy(&bytes).into_owned(),
                bytes.into_owned(),
            ),
            None => (id.to_string(), id.to_string().into_bytes()),
        }
    }

    /// Records a token's logprobs in the choice's lists; returns the chat entry.
    fn record_logprob(&mut self, choice: usize, lp: &TokenLogprob) -> Value {
        let (token, bytes) = self.token_text(lp.id);
        let top: Vec<(String, Vec<u8>, f32)> = lp
            .top
            .iter()
            .map(|&(id, p)| {
                let (t, b) = self.token_text(id);
                (t, b, p)
            })
            .collect();
        let entry = json!({
            "token": token,
            "logprob": lp.logprob,
            "bytes": bytes,
            "top_logprobs": top.iter().map(|(t, b, p)| json!({"token": t, "logprob": p, "bytes": b})).collect::<Vec<_>>(),
        });
        let st = &mut self.choices[choice];
        st.logprobs.push(entry.clone());
        st.lp_tokens.push(json!(token));
        st.lp_values.push(json!(lp.logprob));
        let mut top_map = Map::new();
        for (t, _, p) in &top {
            top_map.insert(t.clone(), json!(p));
        }
        st.lp_top.push(Value::Object(top_map));
        st.lp_offsets.push(json!(st.chars));
        entry
    }

    /// Takes one event of a non-streamed request into the answer.
    pub fn absorb(&mut self, event: &Event) {
        match event {
            Event::Token {
                choice,
                text,
                logprob,
                ..
            } => {
                if let Some(lp) = logprob.as_ref().filter(|_| self.logprobs) {
                    self.record_logprob(*choice, lp);
                }
                let st = &mut self.choices[*choice];
                st.text.push_str(text);
                st.chars += text.chars().count();
            }
            Event::Finish { choice, reason } => self.choices[*choice].finish = Some(*reason),
            Event::Done(_) | Event::Error(_) => {}
        }
    }

    fn logprobs_value(&self, st: &ChoiceState) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.api {
            Api::Chat => json!({"content": st.logprobs, "refusal": null}),
            Api::Completion => json!({
                "tokens": st.lp_tokens,
                "token_logprobs": st.lp_values,
                "top_logprobs": st.lp_top,
                "text_offset": st.lp_offsets,
            }),
        }
    }

    fn usage_value(usage: &Usage) -> Value {
        json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        })
    }

    /// The whole answer, after `Done`.
    pub fn complete(&self, usage: &Usage) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let finish = st.finish.map(FinishReason::as_str);
                match self.api {
                    Api::Chat => json!({
                        "index": i,
                        "message": {"role": "assistant", "content": st.text, "refusal": null},
                        "logprobs": self.logprobs_value(st),
                        "finish_reason": finish,
                    }),
                    Api::Completion => json!({
                        "index": i,
                        "text": st.text,
                        "logprobs": self.logprobs_value(st),
                        "finish_reason": finish,
                    }),
                }
            })
            .collect();
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model_id,
            "system_fingerprint": null,
            "choices": choices,
            "usage": Self::usage_value(usage),
        })
    }

    /// A chunk with one choice (`None`: no choices, the usage chunk).
    fn chunk(&self, choice: Option<Value>, usage: Option<Value>) -> String {
        let mut obj = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model_id,
            "system_fingerprint": null,
            "choices": choice.map_or_else(Vec::new, |c| vec![c]),
        });
        if self.include_usage {
            obj["usage"] = usage.unwrap_or(Value::Null);
        }
        sse(&obj)
    }

    /// The chunks that open a chat stream: each choice's `role`.
    pub fn stream_start(&self) -> String {
        if self.api != Api::Chat {
            return String::new();
        }
        (0..self.choices.len())
            .map(|i| {
                self.chunk(
                    Some(json!({
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": null,
                        "finish_reason": null,
                    })),
                    None,
                )
            })
            .collect()
    }

    /// The server-sent events for one engine event (maybe none), and whether the stream
    /// ends with it.
    pub fn stream_event(&mut self, event: &Event) -> (String, bool) {
        match event {
            Event::Token {
                choice,
                text,
                logprob,
                ..
            } => {
                let lp_entry = logprob
                    .as_ref()
                    .filter(|_| self.logprobs)
                    .map(|lp| self.record_logprob(*choice, lp));
                if text.is_empty() && lp_entry.is_none() {
                    return (String::new(), false);
                }
                let st = &mut self.choices[*choice];
                let offset = st.chars;
                st.chars += text.chars().count();
                let logprobs = match (&lp_entry, self.api) {
                    (None, _) => Value::Null,
                    (Some(e), Api::Chat) => json!({"content": [e], "refusal": null}),
                    (Some(e), Api::Completion) => {
                        let mut top = Map::new();
                        for t in e["top_logprobs"].as_array().into_iter().flatten() {
                            top.insert(
                                t["token"].as_str().unwrap_or_default().to_string(),
                                t["logprob"].clone(),
                            );
                        }
                        json!({
                            "tokens": [e["token"]],
                            "token_logprobs": [e["logprob"]],
                            "top_logprobs": [top],
                            "text_offset": [offset],
                        })
                    }
                };
                let c = match self.api {
                    Api::Chat => json!({
                        "index": choice,
                        "delta": {"content": text},
                        "logprobs": logprobs,
                        "finish_reason": null,
                    }),
                    Api::Completion => json!({
                        "index": choice,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": null,
                    }),
                };
                (self.chunk(Some(c), None), false)
            }
            Event::Finish { choice, reason } => {
                let c = match self.api {
                    Api::Chat => json!({
                        "index": choice,
                        "delta": {},
                        "logprobs": null,
                        "finish_reason": reason.as_str(),
                    }),
                    Api::Completion => json!({
                        "index": choice,
                        "text": "",
                        "logprobs": null,
                        "finish_reason": reason.as_str(),
                    }),
                };
                (self.chunk(Some(c), None), false)
            }
            Event::Done(usage) => {
                let mut out = String::new();
                if self.include_usage {
                    out.push_str(&self.chunk(None, Some(Self::usage_value(usage))));
                }
                out.push_str("data: [DONE]\n\n");
                (out, true)
            }
            Event::Error(e) => (sse(&e.body()), true),
        }
    }
}

/// One server-sent event carrying `value`.
fn sse(value: &Value) -> String {
    format!("data: {value}\n\n")
}
