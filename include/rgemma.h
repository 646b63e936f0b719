/*
 * rgemma.h - C API of rgemma, an inference engine for Google's RecurrentGemma (Griffin) models.
 *
 * Link against librgemma (shared: librgemma.so / .dylib, static: librgemma.a; the static
 * library also needs -lpthread -ldl -lm on Linux).
 *
 * Conventions
 * - Every function is safe to call with NULL pointers and out-of-range values: it fails with
 *   a status (or NULL / a negative count) and never crashes. No Rust panic crosses this
 *   boundary.
 * - On failure, rg_last_error() returns a message describing the last failure on the calling
 *   thread.
 * - Objects returned by *_new / *_load are owned by the caller and released with the matching
 *   *_free function, which accepts NULL. Strings and arrays returned as `const` pointers are
 *   owned by the library; their lifetime is stated per function.
 *
 * Many sequences
 * - A context holds n_seq_max sequences (rg_context_params.n_seq_max, default 1), ids
 *   0 .. n_seq_max-1, each with its own fixed-size state. rg_decode_batch decodes rows of
 *   several sequences in one forward pass (the weights are read once per call, whatever the
 *   number of sequences). The single-sequence calls (rg_decode, rg_get_logits,
 *   rg_context_n_past, rg_state_*, rg_sampler_sample) work on sequence 0.
 * - Positions are implicit: a sequence's rows continue where it stopped. A recurrent state
 *   cannot be rewound, so there is no per-position removal; rg_seq_clear empties a sequence,
 *   rg_seq_copy forks one, and rg_seq_state_save / _load snapshot one.
 *
 * Thread safety
 * - An rg_model is immutable after loading and may be shared by any number of threads and
 *   contexts at once. It must outlive every context created from it.
 * - An rg_context and an rg_sampler may be used by one thread at a time (they may move
 *   between threads). Different contexts of one model may run concurrently.
 * - rg_last_error() is thread-local.
 */
#ifndef RGEMMA_H
#define RGEMMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 2: rg_context_params gained n_seq_max and kv_type; batches and sequence calls. */
#define RG_API_VERSION 2
/* Pass as rg_sampler_params.seed to seed from the clock. */
#define RG_DEFAULT_SEED 0xFFFFFFFFu
/* Most sequences one context may hold (rg_context_params.n_seq_max). */
#define RG_MAX_SEQ 256

typedef struct rg_model rg_model;
typedef struct rg_context rg_context;
typedef struct rg_sampler rg_sampler;
typedef int32_t rg_token;
typedef int32_t rg_seq_id;

typedef enum {
    RG_OK = 0,
    RG_ERR_INVALID_ARGUMENT, /* NULL pointer, negative length, id out of range, bad state buffer */
    RG_ERR_IO,               /* a file could not be opened or read */
    RG_ERR_FORMAT,           /* a file is malformed (GGUF, tokenizer) */
    RG_ERR_UNSUPPORTED,      /* a valid input rgemma does not handle (tensor type, architecture) */
    RG_ERR_OUT_OF_MEMORY,
    RG_ERR_BACKEND           /* the compute backend failed */
} rg_status;

typedef struct {
    /* Layers to run on the GPU; 0 = CPU only. Builds without CUDA run on the CPU whatever
     * the value. */
    int32_t n_gpu_layers;
} rg_model_params;

/* Element type of the attention K/V cache (llama.cpp's --cache-type-k / --cache-type-v).
 * rgemma keeps keys and values in one type, hence one setting for both. */
typedef enum {
    RG_KV_F32 = 0, /* exact (the reference computes in f32); the default */
    RG_KV_F16 = 1  /* half the cache memory; keys and values rounded to f16 when stored */
} rg_kv_type;

typedef struct {
    /* Tokens per forward chunk when a prompt is decoded, and the most rows one
     * rg_decode_batch takes (default 512). */
    int32_t n_batch;
    /* Worker threads for this context; 0 = one per core (default). */
    int32_t n_threads;
    /* Sequences the context holds, 1 ..= RG_MAX_SEQ (default 1). Each costs one fixed-size
     * state (recurrent state + attention window) for the context's whole life. */
    int32_t n_seq_max;
    /* Type of the attention K/V cache of every sequence (default RG_KV_F32). Stored as an
     * int32_t-sized rg_kv_type; any other value makes rg_context_new fail. */
    rg_kv_type kv_type;
} rg_context_params;

/* Rows for rg_decode_batch, in the shape of llama_batch. Row i appends token[i] to sequence
 * seq_id[i]; when logits[i] != 0 the logits after that token are computed. Each row belongs
 * to one sequence, and there is no position array: a row continues its sequence. To share a
 * prompt between sequences, decode it once and fork it with rg_seq_copy.
 * The arrays of a batch made by rg_batch_init are owned by the library (fill them, do not
 * free them yourself, do not replace the pointers before rg_batch_free). A caller may also
 * point the fields at arrays of its own (then it owns them and must not call rg_batch_free
 * on that batch). */
typedef struct {
    int32_t n_tokens; /* rows in use, 1 ..= the arrays' length and the context's n_batch */
    rg_token *token;
    rg_seq_id *seq_id;
    int8_t *logits;
} rg_batch;

typedef struct {
    float temp;           /* <= 0: greedy (argmax). Default 0.8 */
    int32_t top_k;        /* <= 0: off. Default 40 */
    float top_p;          /* 1.0: off. Default 0.95 */
    float min_p;          /* 0.0: off. Default 0.05 */
    float repeat_penalty; /* 1.0: off. Default 1.0 */
    int32_t repeat_last_n;/* tokens of history the penalty looks at. Default 64 */
    uint32_t seed;        /* RG_DEFAULT_SEED: seeded from the clock */
} rg_sampler_params;

/* Message of the last failure on this thread ("" if none). Valid until the next rgemma call
 * on this thread. */
const char *rg_last_error(void);

/* Library version, e.g. "0.1.0". Static storage. */
const char *rg_version(void);

rg_model_params rg_model_default_params(void);
rg_context_params rg_context_default_params(void);
rg_sampler_params rg_sampler_default_params(void);

/* Loads a GGUF model (memory-mapped). params may be NULL (defaults). Returns NULL on failure
 * (see rg_last_error). Free with rg_model_free after every context of it is freed. */
rg_model *rg_model_load(const char *path, const rg_model_params *params);
void rg_model_free(rg_model *model);

/* Vocabulary size and embedding width; -1 if model is NULL. */
int32_t rg_model_n_vocab(const rg_model *model);
int32_t rg_model_n_embd(const rg_model *model);
/* Whether the file carries a tokenizer (if not, only token ids can be used). */
bool rg_model_has_tokenizer(const rg_model *model);

/* Special tokens; -1 if model is NULL or the token does not exist. rg_token_eot is
 * <end_of_turn>, which ends a chat reply. */
rg_token rg_token_bos(const rg_model *model);
rg_token rg_token_eos(const rg_model *model);
rg_token rg_token_eot(const rg_model *model);
/* Whether generation should stop at `token` (EOS or <end_of_turn>). */
bool rg_token_is_eog(const rg_model *model, rg_token token);

/* Tokenizes text_len bytes of UTF-8 text (need not be NUL-terminated). Special tokens written
 * in the text (e.g. "<start_of_turn>") are recognised. Writes at most n_max tokens.
 * Returns the number of tokens, or -(tokens needed) if n_max is too small (nothing useful is
 * written then), or INT32_MIN on error (see rg_last_error). Thread-safe. */
int32_t rg_tokenize(const rg_model *model, const char *text, int32_t text_len,
                    rg_token *tokens, int32_t n_max, bool add_bos);

/* Writes the UTF-8 bytes that `token` stands for into buf (not NUL-terminated). A piece may
 * be an incomplete UTF-8 sequence (byte-fallback tokens); concatenate pieces before
 * displaying. Returns the byte count, -(bytes needed) if len is too small, or INT32_MIN on
 * error. Thread-safe. */
int32_t rg_token_to_piece(const rg_model *model, rg_token token, char *buf, int32_t len);

/* Decodes n_tokens tokens into UTF-8 text in buf, NUL-terminated. skip_special drops control
 * tokens. Returns the length without the NUL, -(length + 1) if len is too small, INT32_MIN on
 * error. */
int32_t rg_detokenize(const rg_model *model, const rg_token *tokens, int32_t n_tokens,
                      char *buf, int32_t len, bool skip_special);

/* Creates a decoding context (n_seq_max sequences, each a recurrent state + attention
 * window) on model. params may be NULL (defaults: one sequence). The state has a fixed size
 * that does not grow with the tokens processed. Returns NULL on failure (n_batch <= 0,
 * n_threads < 0, n_seq_max outside 1 ..= RG_MAX_SEQ, an unknown kv_type, ...). */
rg_context *rg_context_new(const rg_model *model, const rg_context_params *params);
void rg_context_free(rg_context *ctx);

/* The context's n_seq_max and kv_type; -1 if ctx is NULL. */
int32_t rg_context_n_seq_max(const rg_context *ctx);
rg_kv_type rg_context_kv_type(const rg_context *ctx);

/* Processes n_tokens tokens (a prompt, a chunk, or one token) at the next positions of
 * sequence 0, in chunks of n_batch. On a failure found before decoding (NULL, bad length or
 * token id) the context is unchanged. */
rg_status rg_decode(rg_context *ctx, const rg_token *tokens, int32_t n_tokens);

/* Logits (n_vocab floats) after the last token of sequence 0, i.e. rg_seq_get_logits(ctx, 0);
 * NULL if there are none (nothing decoded since creation or reset, or the last row of
 * sequence 0 in a batch asked for none). Owned by ctx; valid until the next call that
 * decodes or changes a sequence of ctx (rg_decode, rg_decode_batch, rg_context_reset,
 * rg_seq_clear / _copy / _state_load, rg_state_load) or rg_context_free. */
const float *rg_get_logits(rg_context *ctx);

/* Number of tokens processed in sequence 0 since creation or the last reset; -1 if ctx is
 * NULL. */
int32_t rg_context_n_past(const rg_context *ctx);

/* Forgets everything in every sequence: each next token is at position 0. */
void rg_context_reset(rg_context *ctx);

/* Bytes needed to save the state of sequence 0 (recurrent state, conv tails, attention
 * window, position, last logits). Fixed for a model. 0 if ctx is NULL. */
size_t rg_state_size(const rg_context *ctx);
/* Saves the state of sequence 0 into dst (size >= rg_state_size). Restoring it with
 * rg_state_load and continuing gives bit-identical logits to continuing without the save. */
rg_status rg_state_save(const rg_context *ctx, uint8_t *dst, size_t size);
/* Restores sequence 0 from a state saved from a context of the same model. A buffer of the
 * wrong size, a corrupt one, or one from another model gives RG_ERR_INVALID_ARGUMENT and
 * leaves ctx unchanged. */
rg_status rg_state_load(rg_context *ctx, const uint8_t *src, size_t size);

/* Allocates a batch whose three arrays hold n_tokens_max rows (zeroed), n_tokens = 0. The
 * library owns the arrays; release them with rg_batch_free. On failure (n_tokens_max <= 0,
 * out of memory) returns a batch with NULL arrays (see rg_last_error). */
rg_batch rg_batch_init(int32_t n_tokens_max);
/* Releases the arrays of a batch made by rg_batch_init. A batch with NULL arrays is ignored;
 * one not made by rg_batch_init, or already freed, is refused (rg_last_error says so) and
 * nothing is freed. */
void rg_batch_free(rg_batch batch);

/* Decodes the batch's n_tokens rows in one forward pass. Rows of one sequence are processed
 * in their order; rows of different sequences may come in any order. Every row is checked
 * first (n_tokens in 1 ..= n_batch and the arrays' length, arrays not NULL, each seq_id in
 * 0 .. n_seq_max-1, each token in the vocabulary): on such an error nothing changes. If the
 * computation itself fails, the sequences of the batch are cleared. Afterwards each sequence
 * whose last row asked for logits has them (rg_seq_get_logits); the batch's rows are read
 * with rg_get_logits_ith. Sequences without rows in the batch are untouched. The batch's
 * arrays are only read. */
rg_status rg_decode_batch(rg_context *ctx, rg_batch batch);

/* Logits (n_vocab floats) after row i of the last rg_decode_batch; i < 0 counts from the end
 * (-1 = last row). NULL with an error if row i asked for no logits, i is out of range, or
 * rg_decode / rg_context_reset ran since that batch. Owned by ctx; valid until the next
 * rg_decode / rg_decode_batch / rg_context_reset / rg_context_free. */
const float *rg_get_logits_ith(rg_context *ctx, int32_t i);

/* Logits (n_vocab floats) after the last token of sequence seq (decoded with logits, or
 * carried over by rg_seq_copy / rg_seq_state_load). NULL with an error if there are none or
 * seq is out of range. Owned by ctx; valid as rg_get_logits's. */
const float *rg_seq_get_logits(rg_context *ctx, rg_seq_id seq);

/* Tokens decoded in sequence seq since it was created or cleared (= its next position);
 * -1 if ctx is NULL or seq out of range. */
int32_t rg_seq_n_past(const rg_context *ctx, rg_seq_id seq);

/* Empties sequence seq: position 0, zero state, no logits. */
rg_status rg_seq_clear(rg_context *ctx, rg_seq_id seq);

/* Makes sequence dst a copy of sequence src: state, position and logits (a fork; both then
 * continue independently). Copies one fixed-size state, whatever the length decoded.
 * src == dst does nothing. */
rg_status rg_seq_copy(rg_context *ctx, rg_seq_id src, rg_seq_id dst);

/* Bytes needed to save one sequence's state; the same as rg_state_size, and the formats are
 * the same: a state saved from any sequence (or with rg_state_save) loads into any sequence
 * of any context of the same model (with rg_seq_state_load or rg_state_load). 0 if ctx is
 * NULL. */
size_t rg_seq_state_size(const rg_context *ctx);
/* Saves sequence seq into dst (size >= rg_seq_state_size). */
rg_status rg_seq_state_save(const rg_context *ctx, rg_seq_id seq, uint8_t *dst, size_t size);
/* Restores sequence seq from a saved state. A buffer of the wrong size, a corrupt one, one
 * from another model, or seq out of range gives RG_ERR_INVALID_ARGUMENT and changes
 * nothing. */
rg_status rg_seq_state_load(rg_context *ctx, rg_seq_id seq, const uint8_t *src, size_t size);

/* Creates a sampler. params NULL = greedy. Free with rg_sampler_free. */
rg_sampler *rg_sampler_new(const rg_sampler_params *params);
/* Samples a token from the logits of sequence 0 (rg_get_logits) and records it in the
 * sampler's history (for the repetition penalty). Returns -1 on error (no logits, NULL
 * pointers). */
rg_token rg_sampler_sample(rg_sampler *sampler, rg_context *ctx);
/* The same from the logits of sequence seq (rg_seq_get_logits). Give each sequence its own
 * sampler: the history and the random stream are the sampler's. */
rg_token rg_sampler_sample_seq(rg_sampler *sampler, rg_context *ctx, rg_seq_id seq);
/* Clears the sampler's history and restarts its random stream from the seed (the same
 * tokens again for the same logits). */
void rg_sampler_reset(rg_sampler *sampler);
void rg_sampler_free(rg_sampler *sampler);

#ifdef __cplusplus
}
#endif

#endif /* RGEMMA_H */
