//! Parsing of the completion requests (OpenAI's schemas, plus llama-server's `top_k`,
//! `min_p`, `repeat_penalty`, `repeat_last_n`) into what the engine needs. Every error is a
//! 400 that names the field at fault.
//!
//! Fields are read from the JSON by hand rather than through serde structs, so that a wrong
//! type or range says which field and what was expected. Unknown fields are ignored (as
//! llama-server does; clients send vendor extras), but fields that would change the answer
//! and are not implemented (tools, `logit_bias`, `response_format` other than text, `echo`,
//! `suffix`, `best_of` > 1, ...) are refused rather than silently dropped. `null` is the same
//! as an absent field.

use serde_json::{Map, Value};

use super::config::Limits;
use super::engine::GenParams;
use super::error::ApiError;
use crate::chat::{Message, Role};
use crate::sampling::{SamplerParams, TokenPenalties};

/// What the prompt is.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Chat(Vec<Message>),
    Text(String),
    /// Token ids, used verbatim (checked against the vocabulary by the caller).
    Tokens(Vec<u32>),
}

/// A parsed `/v1/chat/completions` or `/v1/completions` request.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    pub input: Input,
    pub params: GenParams,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

/// The body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::invalid_request(format!(
            "the body must be a JSON object, got {}",
            type_name(&other)
        ))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the fields of a JSON object, with errors naming the field.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Fields<'a> {
        Fields { map }
    }

    /// The field, `None` when absent or null.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn wrong_type(name: &str, want: &str, got: &Value) -> ApiError {
        ApiError::invalid_field(
            name,
            format!("'{name}' must be {want}, got {}", type_name(got)),
        )
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::wrong_type(name, "a boolean", v)),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong_type(name, "a string", v)),
        }
    }

    /// A number in `[lo, hi]`.
    pub fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let Some(x) = v.as_f64() else {
            return Err(Self::wrong_type(name, "a number", v));
        };
        if !(lo..=hi).contains(&x) {
            return Err(ApiError::invalid_field(
                name,
                format!("'{name}' must be between {lo} and {hi}, got {x}"),
            ));
        }
        Ok(Some(x as f32))
    }

    /// An integer in `[lo, hi]` (a number with no fractional part).
    pub fn integer(&self, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let out_of_range = |x: &dyn std::fmt::Display| {
            ApiError::invalid_field(
                name,
                format!("'{name}' must be between {lo} and {hi}, got {x}"),
            )
        };
        let Some(x) = as_integer(v) else {
            // An integral number too large for 64 bits is out of range, not of another type.
            return Err(match v.as_f64() {
                Some(f) if f.fract() == 0.0 => out_of_range(v),
                _ => Self::wrong_type(name, "an integer", v),
            });
        };
        if x < lo as i128 || x > hi as i128 {
            return Err(out_of_range(&x));
        }
        Ok(Some(x as i64))
    }
}

/// An integral JSON number (also `3.0`), widened so that any u64 or i64 fits.
fn as_integer(v: &Value) -> Option<i128> {
    if let Some(i) = v.as_i64() {
        return Some(i as i128);
    }
    if let Some(u) = v.as_u64() {
        return Some(u as i128);
    }
    let f = v.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i128)
}

/// Token ids of a JSON array (`field` names it in errors); the vocabulary check is the
/// caller's.
pub fn token_ids(field: &str, v: &Value) -> Result<Vec<u32>, ApiError> {
    let Value::Array(items) = v else {
        return Err(Fields::wrong_type(field, "an array of token ids", v));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            as_integer(t)
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        field,
                        format!("'{field}[{i}]' must be a token id (an integer >= 0), got {t}"),
                    )
                })
        })
        .collect()
}

/// Parses a `/v1/chat/completions` body. `n_slots` bounds `n`.
pub fn parse_chat(
    map: &Map<String, Value>,
    limits: &Limits,
    n_slots: usize,
) -> Result<CompletionRequest, ApiError> {
    let f = Fields::new(map);
    refuse_unsupported(&f)?;
    let messages = parse_messages(&f)?;
    let logprobs = f.bool("logprobs")?.unwrap_or(false);
    let top = f.integer("top_logprobs", 0, 20)?;
    if top.is_some() && !logprobs {
        return Err(ApiError::invalid_field(
            "top_logprobs",
            "'top_logprobs' needs 'logprobs': true",
        ));
    }
    let logprobs = logprobs.then_some(top.unwrap_or(0) as usize);
    common(&f, Input::Chat(messages), logprobs, limits, n_slots)
}

/// Parses a `/v1/completions` body.
pub fn parse_completion(
    map: &Map<String, Value>,
    limits: &Limits,
    n_slots: usize,
) -> Result<CompletionRequest, ApiError> {
    let f = Fields::new(map);
    refuse_unsupported(&f)?;
    if f.bool("echo")?.unwrap_or(false) {
        return Err(ApiError::invalid_field("echo", "'echo' is not supported"));
    }
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_field(
            "suffix",
            "'suffix' is not supported",
        ));
    }
    let input = parse_prompt(f.get("prompt"))?;
    // The legacy schema: logprobs is the number of most likely tokens (0..=5 at OpenAI).
    let logprobs = f.integer("logprobs", 0, 20)?.map(|k| k as usize);
    common(&f, input, logprobs, limits, n_slots)
}

/// `prompt`: a string, token ids, or a list holding one of either.
fn parse_prompt(v: Option<&Value>) -> Result<Input, ApiError> {
    let Some(v) = v else {
        return Err(ApiError::invalid_field("prompt", "'prompt' is required"));
    };
    let input = match v {
        Value::String(s) => Input::Text(s.clone()),
        Value::Array(items) if items.iter().all(|x| x.is_number()) => {
            Input::Tokens(token_ids("prompt", v)?)
        }
        Value::Array(items) => {
            if items.len() != 1 {
                return Err(ApiError::invalid_field(
                    "prompt",
                    format!(
                        "'prompt' as a list must hold one prompt (one request per prompt), got {}",
                        items.len()
                    ),
                ));
            }
            match &items[0] {
                Value::String(s) => Input::Text(s.clone()),
                inner @ Value::Array(_) => Input::Tokens(token_ids("prompt", inner)?),
                other => {
                    return Err(ApiError::invalid_field(
                        "prompt",
                        format!(
                            "'prompt[0]' must be a string or token ids, got {}",
                            type_name(other)
                        ),
                    ))
                }
            }
        }
        other => {
            return Err(ApiError::invalid_field(
                "prompt",
                format!(
                    "'prompt' must be a string or an array of token ids, got {}",
                    type_name(other)
                ),
            ))
        }
    };
    let empty = match &input {
        Input::Text(s) => s.is_empty(),
        Input::Tokens(t) => t.is_empty(),
        Input::Chat(_) => false,
    };
    if empty {
        return Err(ApiError::invalid_field("prompt", "'prompt' is empty"));
    }
    Ok(input)
}

/// `messages`: a non-empty list of `{role, content}`.
fn parse_messages(f: &Fields<'_>) -> Result<Vec<Message>, ApiError> {
    let items = match f.get("messages") {
        None => {
            return Err(ApiError::invalid_field(
                "messages",
                "'messages' is required",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(v) => return Err(Fields::wrong_type("messages", "an array", v)),
    };
    if items.is_empty() {
        return Err(ApiError::invalid_field(
            "messages",
            "'messages' must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        let Value::Object(m) = item else {
            return Err(ApiError::invalid_field(
                &format!("messages[{i}]"),
                format!("'messages[{i}]' must be an object, got {}", type_name(item)),
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => match r.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::invalid_field(
                        &at("role"),
                        format!(
                            "'{}' must be system, developer, user or assistant, got '{other}' (tools are not supported)",
                            at("role")
                        ),
                    ))
                }
            },
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_field(
                    &at("role"),
                    format!("'{}' is required", at("role")),
                ))
            }
            Some(v) => return Err(Fields::wrong_type(&at("role"), "a string", v)),
        };
        if m.get("tool_calls").is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid_field(
                &at("tool_calls"),
                "tool calls are not supported",
            ));
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => text_parts(&at("content"), parts)?,
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_field(
                    &at("content"),
                    format!("'{}' is required", at("content")),
                ))
            }
            Some(v) => {
                return Err(Fields::wrong_type(
                    &at("content"),
                    "a string or an array of text parts",
                    v,
                ))
            }
        };
        out.push(Message { role, content });
    }
    Ok(out)
}

/// The text of a content array (`[{"type": "text", "text": "..."}]`), joined with newlines
/// as OpenAI's text parts are concatenated. Other part types are refused.
fn text_parts(field: &str, parts: &[Value]) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (k, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str);
        match (kind, part.get("text")) {
            (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
            (Some("text"), _) => {
                return Err(ApiError::invalid_field(
                    field,
                    format!("'{field}[{k}].text' must be a string"),
                ))
            }
            (Some(other), _) => {
                return Err(ApiError::invalid_field(
                    field,
                    format!(
                        "'{field}[{k}]': content of type '{other}' is not supported (text only)"
                    ),
                ))
            }
            (None, _) => {
                return Err(ApiError::invalid_field(
                    field,
                    format!("'{field}[{k}]' must be an object with \"type\": \"text\""),
                ))
            }
        }
    }
    Ok(texts.join("\n"))
}

/// Fields of both endpoints that would change the answer and are not implemented.
fn refuse_unsupported(f: &Fields<'_>) -> Result<(), ApiError> {
    let refuse = |name: &str, what: &str| {
        Err(ApiError::invalid_field(
            name,
            format!("'{name}' is not supported{what}"),
        ))
    };
    if f.get("tools")
        .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
    {
        return refuse("tools", " (no tool calling)");
    }
    if f.get("functions").is_some() {
        return refuse("functions", " (no function calling)");
    }
    if f.get("function_call")
        .is_some_and(|v| v.as_str() != Some("none"))
    {
        return refuse("function_call", " (no function calling)");
    }
    if f.get("tool_choice")
        .is_some_and(|v| v.as_str() != Some("none"))
    {
        return refuse("tool_choice", " (no tool calling)");
    }
    if let Some(v) = f.get("response_format") {
        if v.get("type").and_then(Value::as_str) != Some("text") {
            return refuse("response_format", " (only {\"type\": \"text\"})");
        }
    }
    if f.get("logit_bias")
        .is_some_and(|v| v.as_object().is_none_or(|m| !m.is_empty()))
    {
        return refuse("logit_bias", "");
    }
    if f.get("best_of").is_some_and(|v| as_integer(v) != Some(1)) {
        return refuse("best_of", " (only 1)");
    }
    if let Some(v) = f.get("modalities") {
        if v.as_array()
            .is_none_or(|a| a.iter().any(|m| m.as_str() != Some("text")))
        {
            return refuse("modalities", " (text only)");
        }
    }
    for name in ["audio", "prediction"] {
        if f.get(name).is_some() {
            return refuse(name, "");
        }
    }
    Ok(())
}

/// The sampling and output fields both endpoints share.
fn common(
    f: &Fields<'_>,
    input: Input,
    logprobs: Option<usize>,
    limits: &Limits,
    n_slots: usize,
) -> Result<CompletionRequest, ApiError> {
    let defaults = SamplerParams::default();
    let max_cap = limits.max_tokens as i64;
    let max_tokens = match f.integer("max_completion_tokens", 1, max_cap)? {
        Some(n) => n,
        None => f
            .integer("max_tokens", 1, max_cap)?
            .unwrap_or(limits.default_max_tokens.min(limits.max_tokens) as i64),
    } as usize;
    let seed = match f.integer("seed", -1, i64::MAX)? {
        None | Some(-1) => None,
        Some(s) => Some(s as u64),
    };
    let sampler = SamplerParams {
        temp: f
            .number("temperature", 0.0, 100.0)?
            .unwrap_or(defaults.temp),
        top_k: f
            .integer("top_k", i32::MIN as i64, i32::MAX as i64)?
            .map_or(defaults.top_k, |k| k as i32),
        top_p: f.number("top_p", 0.0, 1.0)?.unwrap_or(defaults.top_p),
        min_p: f.number("min_p", 0.0, 1.0)?.unwrap_or(defaults.min_p),
        repeat_penalty: match f.number("repeat_penalty", 0.0, 100.0)? {
            Some(p) if p <= 0.0 => {
                return Err(ApiError::invalid_field(
                    "repeat_penalty",
                    "'repeat_penalty' must be > 0",
                ))
            }
            Some(p) => p,
            None => defaults.repeat_penalty,
        },
        repeat_last_n: f
            .integer("repeat_last_n", 0, 1 << 16)?
            .map_or(defaults.repeat_last_n, |n| n as usize),
        seed,
    };
    let penalties = TokenPenalties {
        presence: f.number("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency: f.number("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
    };
    let n = f.integer("n", 1, i64::MAX)?.unwrap_or(1) as usize;
    if n > n_slots {
        return Err(ApiError::invalid_field(
            "n",
            format!("'n' must be at most {n_slots} (the server's --parallel slots), got {n}"),
        ));
    }
    let stop_strings = parse_stop(f, limits)?;
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields::new(o)
            .bool("include_usage")
            .map_err(|_| {
                ApiError::invalid_field(
                    "stream_options.include_usage",
                    "'stream_options.include_usage' must be a boolean",
                )
            })?
            .unwrap_or(false),
        Some(v) => return Err(Fields::wrong_type("stream_options", "an object", v)),
    };
    Ok(CompletionRequest {
        input,
        params: GenParams {
            sampler,
            penalties,
            max_tokens,
            stop_strings,
            n,
            logprobs,
        },
        stream,
        include_usage,
    })
}

/// `stop`: a string or a list of strings.
fn parse_stop(f: &Fields<'_>, limits: &Limits) -> Result<Vec<String>, ApiError> {
    let stops: Vec<String> = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::invalid_field(
                    "stop",
                    format!("'stop[{i}]' must be a string, got {}", type_name(other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(Fields::wrong_type(
                "stop",
                "a string or an array of strings",
                v,
            ))
        }
    };
    if stops.len() > limits.max_stop_strings {
        return Err(ApiError::invalid_field(
            "stop",
            format!(
                "'stop' may hold at most {} strings, got {}",
                limits.max_stop_strings,
                stops.len()
            ),
        ));
    }
    if let Some(long) = stops.iter().find(|s| s.len() > limits.max_stop_bytes) {
        return Err(ApiError::invalid_field(
            "stop",
            format!(
                "stop strings may be at most {} bytes, got one of {}",
                limits.max_stop_bytes,
                long.len()
            ),
        ));
    }
    Ok(stops)
}
