/*
 * simple.c - greedy generation through the rgemma C API, plus a prompt-cache demo.
 *
 *   cc -O2 -Iinclude examples/c/simple.c -Ltarget/release -lrgemma -o simple
 *   LD_LIBRARY_PATH=target/release ./simple MODEL.gguf "PROMPT" [N] [LOGITS_OUT]
 *
 * PROMPT is text when the model has a tokenizer, otherwise comma-separated token ids.
 * Prints the generated text (or ids). With LOGITS_OUT, writes the float32 logits of the last
 * prompt position and of each generated token fed back (N rows of n_vocab) to that file.
 *
 * Prompt caching: the recurrent state is small and fixed, so after the prompt it is saved
 * once; the same continuation is then generated twice from the restored state, and the
 * example checks that both runs give bit-identical logits.
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

/* Generates n tokens greedily; copies the logits used for each choice to logits_rows. */
static int generate(rg_context *ctx, rg_sampler *greedy, int n, int n_vocab, rg_token *out,
                    float *logits_rows) {
    for (int i = 0; i < n; i++) {
        const float *logits = rg_get_logits(ctx);
        if (!logits) return -1;
        memcpy(logits_rows + (size_t)i * n_vocab, logits, sizeof(float) * n_vocab);
        rg_token t = rg_sampler_sample(greedy, ctx);
        if (t < 0) return -1;
        out[i] = t;
        if (rg_decode(ctx, &t, 1) != RG_OK) return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT [N] [LOGITS_OUT]\n", argv[0]);
        return 2;
    }
    int n_gen = argc > 3 ? atoi(argv[3]) : 16;
    if (n_gen < 1) n_gen = 1;

    rg_model *model = rg_model_load(argv[1], NULL);
    if (!model) return fail("load");
    int n_vocab = rg_model_n_vocab(model);

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

    rg_context *ctx = rg_context_new(model, NULL);
    if (!ctx) return fail("context");
    rg_sampler *greedy = rg_sampler_new(NULL);
    if (!greedy) return fail("sampler");
    if (rg_decode(ctx, prompt, n_prompt) != RG_OK) return fail("decode prompt");

    /* Save the state after the prompt (the "prompt cache"). */
    size_t state_size = rg_state_size(ctx);
    uint8_t *state = malloc(state_size);
    if (rg_state_save(ctx, state, state_size) != RG_OK) return fail("state save");

    rg_token *gen = malloc(sizeof(rg_token) * n_gen);
    rg_token *gen2 = malloc(sizeof(rg_token) * n_gen);
    float *rows = malloc(sizeof(float) * (size_t)n_gen * n_vocab);
    float *rows2 = malloc(sizeof(float) * (size_t)n_gen * n_vocab);
    if (generate(ctx, greedy, n_gen, n_vocab, gen, rows) != 0) return fail("generate");

    /* Restore and generate again: identical logits, without re-reading the prompt. */
    if (rg_state_load(ctx, state, state_size) != RG_OK) return fail("state load");
    if (generate(ctx, greedy, n_gen, n_vocab, gen2, rows2) != 0) return fail("generate again");
    int same = memcmp(rows, rows2, sizeof(float) * (size_t)n_gen * n_vocab) == 0 &&
               memcmp(gen, gen2, sizeof(rg_token) * n_gen) == 0;

    if (rg_model_has_tokenizer(model)) {
        char text[65536];
        int len = rg_detokenize(model, gen, n_gen, text, sizeof text, false);
        if (len < 0) return fail("detokenize");
        printf("%s\n", text);
    } else {
        for (int i = 0; i < n_gen; i++) printf(i ? ",%d" : "%d", gen[i]);
        printf("\n");
    }
    fprintf(stderr, "state: %zu bytes; restored state reproduces the logits: %s\n", state_size,
            same ? "yes" : "NO");

    if (argc > 4) {
        FILE *f = fopen(argv[4], "wb");
        if (!f || fwrite(rows, sizeof(float), (size_t)n_gen * n_vocab, f) != (size_t)n_gen * n_vocab) {
            fprintf(stderr, "error: cannot write %s\n", argv[4]);
            return 1;
        }
        fclose(f);
    }

    free(state);
    free(gen);
    free(gen2);
    free(rows);
    free(rows2);
    rg_sampler_free(greedy);
    rg_context_free(ctx);
    rg_model_free(model);
    return same ? 0 : 3;
}
