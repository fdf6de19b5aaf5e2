/*
 * engine/cuda/graph.cu: CUDA graphs for stretches of device work a caller
 * brackets with eng_backend_graph_begin / _end (ops.h): the mask decoder's
 * group body, one recording per prompt-count bucket, token count and
 * adapter layout. TASAM_CUDA_GRAPHS=1 turns them on; they are off by default
 * until measured.
 *
 * Why: the decoder at 64 prompts is some 300 small kernels and cuBLASLt
 * calls whose host-side issue (plan lookups, launches) and launch gaps
 * dominate; a graph queues them with one call.
 *
 * The cache: up to ENG_CU_GRAPHS executable graphs keyed by a hash of the
 * caller's `shape` bytes (what fixes the op sequence and sizes), each holding
 * the hash of the `bufs` bytes (which buffers) it was recorded with, and the
 * scratch generation (eng_cuda_scratch moves when it grows, and recordings
 * hold its address). begin():
 *   - same shape, same buffers, same scratch: launch the graph (REPLAYED);
 *   - else start a stream capture (CAPTURE): the caller's ops are recorded,
 *     not run, and end() instantiates them (or, for a known shape, updates
 *     the existing graph in place with cudaGraphExecUpdate, which is cheaper
 *     and leaves launches in flight unaffected) and launches the result.
 * Nothing may synchronise or allocate inside a capture: the GEMM path does
 * not tune while capturing (gemm.cu), and scratch that would have to grow
 * fails the capture (cap_failed), after which end() discards it and returns
 * ENG_GRAPH_REDO: the caller runs the same ops eagerly (scratch can grow
 * then); so does a capture the caller does not keep (an op failed). The
 * least recently used graph is dropped when the cache is full.
 * Timing every op (TASAM_CUDA_PROFILE) synchronises, so it turns graphs off.
 */
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.cuh"

// ----------------------------------------------------------------------------
// graphs

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

void eng_cuda_graphs_free(eng_cuda *cu)
{
    for (int i = 0; i < cu->n_graphs; i++)
        if (cu->graphs[i].exec)
            cudaGraphExecDestroy(cu->graphs[i].exec);
    cu->n_graphs = 0;
}

int eng_cuda_graph_begin(eng_backend *be, const void *shape, size_t shape_len, const void *bufs,
                         size_t bufs_len)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (!eng_cuda_graphs_on(be) || cu->capturing)
        return ENG_GRAPH_EAGER;
    uint64_t sk = fnv1a(1469598103934665603ull, shape, shape_len);
    uint64_t pk = fnv1a(1469598103934665603ull, bufs, bufs_len);
    for (int i = 0; i < cu->n_graphs; i++) {
        eng_cuda_graph *g = &cu->graphs[i];
        if (g->exec && g->skey == sk && g->pkey == pk && g->gen == cu->scratch_gen) {
            ENG_CU_CHECK(cudaGraphLaunch(g->exec, cu->stream));
            g->tick = ++cu->graph_tick;
            cu->graph_replays++;
            return ENG_GRAPH_REPLAYED;
        }
    }
    ENG_CU_CHECK(cudaStreamBeginCapture(cu->stream, cudaStreamCaptureModeThreadLocal));
    cu->capturing = 1;
    cu->cap_failed = 0;
    cu->cap_skey = sk;
    cu->cap_pkey = pk;
    return ENG_GRAPH_CAPTURE;
}

int eng_cuda_graphs_on(const eng_backend *be)
{
    const eng_cuda *cu = (const eng_cuda *)be;
    return cu->graphs_on && !cu->profile;
}

int eng_cuda_graph_end(eng_backend *be, int keep)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (!cu->capturing)
        return keep ? 0 : ENG_GRAPH_REDO;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(cu->stream, &graph);
    cu->capturing = 0;
    if (e != cudaSuccess || !graph || cu->cap_failed || !keep) {
        if (graph)
            cudaGraphDestroy(graph);
        cudaGetLastError();
        cu->graph_failures++;
        return ENG_GRAPH_REDO;
    }
    /* the entry for this shape, else a free one, else the least recently used */
    eng_cuda_graph *g = NULL;
    for (int i = 0; i < cu->n_graphs && !g; i++)
        if (cu->graphs[i].skey == cu->cap_skey)
            g = &cu->graphs[i];
    if (!g && cu->n_graphs < ENG_CU_GRAPHS) {
        g = &cu->graphs[cu->n_graphs++];
        memset(g, 0, sizeof *g);
    }
    if (!g) {
        g = &cu->graphs[0];
        for (int i = 1; i < cu->n_graphs; i++)
            if (cu->graphs[i].tick < g->tick)
                g = &cu->graphs[i];
        if (g->exec)
            cudaGraphExecDestroy(g->exec);
        memset(g, 0, sizeof *g);
    }
    if (g->exec && g->skey == cu->cap_skey) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(g->exec, graph, &info) == cudaSuccess) {
            cu->graph_updates++;
        } else {
            cudaGetLastError();
            cudaGraphExecDestroy(g->exec);
            g->exec = NULL;
        }
    }
    if (!g->exec) {
        e = cudaGraphInstantiate(&g->exec, graph, 0);
        if (e != cudaSuccess) {
            cudaGetLastError();
            g->exec = NULL;
            g->skey = 0;
            cudaGraphDestroy(graph);
            cu->graph_failures++;
            return ENG_GRAPH_REDO;
        }
        cu->graph_captures++;
    }
    cudaGraphDestroy(graph);
    g->skey = cu->cap_skey;
    g->pkey = cu->cap_pkey;
    g->gen = cu->scratch_gen;
    g->tick = ++cu->graph_tick;
    ENG_CU_CHECK(cudaGraphLaunch(g->exec, cu->stream));
    return 0;
}
