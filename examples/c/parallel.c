/*
 * parallel.c - several continuations of one prompt, decoded together with rg_decode_batch.
 *
 *   cc -O2 -Iinclude examples/c/parallel.c -Ltarget/release -lrgemma -o parallel
 *   LD_LIBRARY_PATH=target/release ./parallel MODEL.gguf "PROMPT" [N_SEQ] [N_GEN] [SEED]
 *
 * PROMPT is text when the model has a tokenizer, otherwise comma-separated token ids.
 * The prompt is decoded once, in sequence 0, then forked into N_SEQ sequences (default 4)
 * with rg_seq_copy: the state of a recurrent model has a fixed size, so a fork copies it
 * whatever the prompt's length. Each sequence then samples with its own sampler (seed
 * SEED + i, llama.cpp's default chain) and every step decodes the next token of all the
 * sequences still running in one rg_decode_batch call. A sequence stops after N_GEN
 * tokens (default 32) or at an end-of-generation token (not printed).
 *
 * Output, for each sequence i in order:
 *   === sequence i ===
 *   <its continuation: text, or comma-separated ids without a tokenizer>
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rgemma.h"

static int fail(const char *what) {
    fprintf(stderr, "error: %s: %s\n", what, rg_last_error());
    return 1;
}

static int parse_ids(const char *s, rg_token *out, int max) {
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s) return -1;
        out[n++] = (rg_token)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* Prints one sequence's continuation: text with a tokenizer, ids without. */
static int print_sequence(rg_model *model, int i, const rg_token *gen, int n) {
    printf("=== sequence %d ===\n", i);
    if (rg_model_has_tokenizer(model)) {
        char text[65536];
        int len = n ? rg_detokenize(model, gen, n, text, sizeof text, false) : 0;
        if (len < 0) return fail("detokenize");
        text[len] = '\0';
        printf("%s\n", text);
    } else {
        for (int t = 0; t < n; t++) printf(t ? ",%d" : "%d", gen[t]);
        printf("\n");
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT [N_SEQ] [N_GEN] [SEED]\n", argv[0]);
        return 2;
    }
    int n_seq = argc > 3 ? atoi(argv[3]) : 4;
    int n_gen = argc > 4 ? atoi(argv[4]) : 32;
    unsigned seed = argc > 5 ? (unsigned)strtoul(argv[5], NULL, 10) : 1;
    if (n_seq < 1 || n_seq > RG_MAX_SEQ || n_gen < 1) {
        fprintf(stderr, "error: N_SEQ must be in 1..%d and N_GEN positive\n", RG_MAX_SEQ);
        return 2;
    }

    rg_model *model = rg_model_load(argv[1], NULL);
    if (!model) return fail("load");

    rg_token prompt[4096];
    int n_prompt;
    if (rg_model_has_tokenizer(model)) {
        n_prompt = rg_tokenize(model, argv[2], (int32_t)strlen(argv[2]), prompt, 4096, true);
        if (n_prompt < 0) return fail("tokenize");
    } else {
        n_prompt = parse_ids(argv[2], prompt, 4096);
        if (n_prompt <= 0) {
            fprintf(stderr, "error: the model has no tokenizer; give the prompt as ids\n");
            return 1;
        }
    }

    /* One slot per sequence; every step has at most one row per sequence, which the
     * default n_batch (512) holds since n_seq <= RG_MAX_SEQ. */
    rg_context_params cparams = rg_context_default_params();
    cparams.n_seq_max = n_seq;
    rg_context *ctx = rg_context_new(model, &cparams);
    if (!ctx) return fail("context");

    /* The prompt once, in sequence 0; then forks: state, position and logits are copied. */
    if (rg_decode(ctx, prompt, n_prompt) != RG_OK) return fail("decode prompt");
    for (int i = 1; i < n_seq; i++) {
        if (rg_seq_copy(ctx, 0, i) != RG_OK) return fail("fork");
    }

    rg_sampler **samplers = calloc((size_t)n_seq, sizeof *samplers);
    rg_token *gen = malloc(sizeof(rg_token) * (size_t)n_seq * n_gen); /* row i: sequence i */
    int *n_done = calloc((size_t)n_seq, sizeof *n_done);               /* tokens generated */
    int *running = malloc(sizeof(int) * (size_t)n_seq);
    if (!samplers || !gen || !n_done || !running) {
        fprintf(stderr, "error: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n_seq; i++) {
        rg_sampler_params sp = rg_sampler_default_params();
        sp.seed = seed + (unsigned)i;
        samplers[i] = rg_sampler_new(&sp);
        if (!samplers[i]) return fail("sampler");
        running[i] = 1;
    }

    /* The batch's arrays belong to the library until rg_batch_free. */
    rg_batch batch = rg_batch_init(n_seq);
    if (!batch.token) return fail("batch");

    int n_calls = 0;
    for (int step = 0; step < n_gen; step++) {
        batch.n_tokens = 0;
        for (int i = 0; i < n_seq; i++) {
            if (!running[i]) continue;
            rg_token t = rg_sampler_sample_seq(samplers[i], ctx, i);
            if (t < 0) return fail("sample");
            if (rg_token_is_eog(model, t)) {
                running[i] = 0;
                continue;
            }
            gen[(size_t)i * n_gen + n_done[i]++] = t;
            if (step + 1 == n_gen) continue; /* the last token need not be decoded */
            int row = batch.n_tokens++;
            batch.token[row] = t;
            batch.seq_id[row] = i;
            batch.logits[row] = 1;
        }
        if (batch.n_tokens == 0) break;
        if (rg_decode_batch(ctx, batch) != RG_OK) return fail("decode batch");
        n_calls++;
    }

    for (int i = 0; i < n_seq; i++) {
        if (print_sequence(model, i, gen + (size_t)i * n_gen, n_done[i]) != 0) return 1;
    }
    fprintf(stderr, "%d sequences from a prompt of %d tokens, %d batched decode calls\n", n_seq,
            n_prompt, n_calls);

    rg_batch_free(batch);
    for (int i = 0; i < n_seq; i++) rg_sampler_free(samplers[i]);
    free(samplers);
    free(gen);
    free(n_done);
    free(running);
    rg_context_free(ctx);
    rg_model_free(model);
    return 0;
}
