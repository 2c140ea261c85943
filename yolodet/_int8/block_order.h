/* The order in which the int8 kernels run their blocks of tiles (or pixels) x 16 output channels, split over OpenMP
 * threads:
 *   - weights within weight_budget (they stay in a core's L2): each thread runs whole tile blocks, every output
 *     block;
 *   - larger weights (13x13 and 26x26 maps): tiles in chunks whose transformed input (per_block bytes a tile block)
 *     fits tile_budget; within a chunk the threads split the output blocks and run all the chunk's tiles against one
 *     block of weights at a time, so the weights are read once per chunk, not once per tile block. The 1x1 and
 *     direct kernels (pointwise_int8.c, direct_int8.c) make every block one chunk: output-major.
 */
#ifndef YOLODET_BLOCK_ORDER_H
#define YOLODET_BLOCK_ORDER_H

#include <stddef.h>

/* block(args, tb, bo) for every tile block tb < blocks and output block bo < ob. Call it inside an OpenMP parallel
 * region: its worksharing loops bind to that region's threads. */
static inline void run_blocks(void (*block)(const void *, int, int), const void *args, int blocks, int ob,
                              size_t weight_bytes, size_t per_block, size_t weight_budget, size_t tile_budget) {
    if (weight_bytes <= weight_budget) {
#pragma omp for schedule(static) collapse(2)
        for (int tb = 0; tb < blocks; tb++)
            for (int bo = 0; bo < ob; bo++) block(args, tb, bo);
    } else {
        const int chunk = per_block < tile_budget ? (int)(tile_budget / per_block) : 1; /* tile blocks per chunk */
        for (int b0 = 0; b0 < blocks; b0 += chunk) {
            const int nb = blocks - b0 < chunk ? blocks - b0 : chunk;
#pragma omp for schedule(static) collapse(2)
            for (int bo = 0; bo < ob; bo++)
                for (int i = 0; i < nb; i++) block(args, b0 + i, bo);
        }
    }
}

#endif
