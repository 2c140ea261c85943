/*
 * delta_dump: the training deltas of every detection head of a Darknet cfg, as Darknet's own forward pass
 * computes them, for yolodet's loss tests.
 *
 * usage: delta_dump CFG WEIGHTS INPUT TRUTH SEEN OUTPUT
 *   CFG, WEIGHTS  parsed with batch 1 (parse_network_cfg_custom(cfg, 1, 1)) and load_weights
 *   INPUT         raw float32 (little-endian), channels*height*width values, CHW
 *   TRUTH         raw float32, 5 values per box: x, y, w, h (centre and size as fractions of the input), class
 *   SEEN          the value of *net.seen during the head forwards (images trained on so far)
 * The backbone runs as in inference (network_predict: state.train = 0, batch-norm with its rolling statistics),
 * then each [region] / [yolo] / [Gaussian_yolo] layer's forward runs again on its input with state.train = 1 and
 * the truth (Darknet's net.truth layout: truth_size floats per box, the unused ones 0), which fills l.delta
 * (minus the gradient of the loss w.r.t. the layer's input) and l.cost.
 * OUTPUT: int32 count; per head: int32 layer index, int32 n, float32 cost, float32 delta[n] (the layer's
 * input layout, CHW).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "darknet.h"
#include "network.h"
#include "parser.h"

static void die(const char *what, const char *path)
{
    fprintf(stderr, "delta_dump: error: %s %s\n", what, path);
    exit(2);
}

static float *read_floats(const char *path, long *count)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) die("cannot open", path);
    fseek(fp, 0, SEEK_END);
    long bytes = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    *count = bytes / (long)sizeof(float);
    float *data = (float *)calloc((size_t)*count + 1, sizeof(float));
    if ((long)fread(data, sizeof(float), (size_t)*count, fp) != *count) die("cannot read", path);
    fclose(fp);
    return data;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: delta_dump CFG WEIGHTS INPUT TRUTH SEEN OUTPUT\n");
        return 2;
    }
    srand(2222222);
    network net = parse_network_cfg_custom(argv[1], 1, 1);
    load_weights(&net, argv[2]);
    long n_input, n_truth;
    float *input = read_floats(argv[3], &n_input);
    float *boxes = read_floats(argv[4], &n_truth);
    if (n_input != (long)net.c * net.h * net.w) die("wrong input size in", argv[3]);
    if (n_truth % 5) die("truth is not 5 floats per box:", argv[4]);
    *net.seen = (uint64_t)strtoull(argv[5], NULL, 10);
    network_predict(net, input);

    FILE *out = fopen(argv[6], "wb");
    if (!out) die("cannot write", argv[6]);
    int32_t count = 0, i;
    for (i = 0; i < net.n; ++i) {
        LAYER_TYPE t = net.layers[i].type;
        count += (t == REGION || t == YOLO || t == GAUSSIAN_YOLO);
    }
    fwrite(&count, sizeof(count), 1, out);
    for (i = 0; i < net.n; ++i) {
        layer l = net.layers[i];
        if (!(l.type == REGION || l.type == YOLO || l.type == GAUSSIAN_YOLO)) continue;
        if (i == 0) die("a head needs an input layer in", argv[1]);
        float *truth = (float *)calloc((size_t)l.truths, sizeof(float));
        long b;
        for (b = 0; b < n_truth / 5 && (b + 1) * l.truth_size <= l.truths; ++b)
            memcpy(truth + b * l.truth_size, boxes + b * 5, 5 * sizeof(float));
        network_state state = {0};
        state.net = net;
        state.index = i;
        state.input = net.layers[i - 1].output;
        state.truth = truth;
        state.train = 1;
        state.workspace = net.workspace;
        l.forward(l, state);
        int32_t header[2] = {i, l.outputs};
        fwrite(header, sizeof(int32_t), 2, out);
        fwrite(l.cost, sizeof(float), 1, out);
        fwrite(l.delta, sizeof(float), (size_t)l.outputs, out);
        free(truth);
    }
    fclose(out);
    free(input);
    free(boxes);
    return 0;
}
