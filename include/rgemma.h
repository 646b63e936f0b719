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

#define RG_API_VERSION 1
/* Pass as rg_sampler_params.seed to seed from the clock. */
#define RG_DEFAULT_SEED 0xFFFFFFFFu

typedef struct rg_model rg_model;
typedef struct rg_context rg_context;
typedef struct rg_sampler rg_sampler;
typedef int32_t rg_token;

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

typedef struct {
    /* Tokens per forward chunk when a prompt is decoded (default 512). */
    int32_t n_batch;
    /* Worker threads for this context; 0 = one per core (default). */
    int32_t n_threads;
} rg_context_params;

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

/* Creates a decoding context (recurrent state + attention window) on model. params may be
 * NULL. The state has a fixed size that does not grow with the tokens processed. Returns NULL
 * on failure. */
rg_context *rg_context_new(const rg_model *model, const rg_context_params *params);
void rg_context_free(rg_context *ctx);

/* Processes n_tokens tokens (a prompt, a chunk, or one token) at the next positions.
 * On failure the context is unchanged. */
rg_status rg_decode(rg_context *ctx, const rg_token *tokens, int32_t n_tokens);

/* Logits (n_vocab floats) of the last position processed by rg_decode; NULL if nothing was
 * decoded since creation or reset. Valid until the next rg_decode / rg_context_reset /
 * rg_state_load / rg_context_free on ctx. */
const float *rg_get_logits(rg_context *ctx);

/* Number of tokens processed since creation or the last reset; -1 if ctx is NULL. */
int32_t rg_context_n_past(const rg_context *ctx);

/* Forgets everything: the next token is at position 0. */
void rg_context_reset(rg_context *ctx);

/* Bytes needed to save the context's state (recurrent state, conv tails, attention window,
 * position, last logits). Fixed for a model. 0 if ctx is NULL. */
size_t rg_state_size(const rg_context *ctx);
/* Saves the state into dst (size >= rg_state_size). Restoring it with rg_state_load and
 * continuing gives bit-identical logits to continuing without the save. */
rg_status rg_state_save(const rg_context *ctx, uint8_t *dst, size_t size);
/* Restores a state saved from a context of the same model. A buffer of the wrong size, a
 * corrupt one, or one from another model gives RG_ERR_INVALID_ARGUMENT and leaves ctx
 * unchanged. */
rg_status rg_state_load(rg_context *ctx, const uint8_t *src, size_t size);

/* Creates a sampler. params NULL = greedy. Free with rg_sampler_free. */
rg_sampler *rg_sampler_new(const rg_sampler_params *params);
/* Samples a token from the context's last logits and records it in the sampler's history
 * (for the repetition penalty). Returns -1 on error (nothing decoded yet, NULL pointers). */
rg_token rg_sampler_sample(rg_sampler *sampler, rg_context *ctx);
/* Clears the sampler's history (the random stream continues). */
void rg_sampler_reset(rg_sampler *sampler);
void rg_sampler_free(rg_sampler *sampler);

#ifdef __cplusplus
}
#endif

#endif /* RGEMMA_H */
