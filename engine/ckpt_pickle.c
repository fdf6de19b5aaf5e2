/*
 * engine/ckpt_pickle.c: PyTorch .pth (torch.save zip archive) reader with a
 * restricted unpickler.
 *
 * The archive holds "<prefix>/data.pkl" (the pickled state_dict) and one
 * stored record "<prefix>/data/<key>" per storage. The pickle is evaluated
 * by a small stack machine that knows only the opcodes a state_dict uses and
 * "calls" only a fixed set of globals, each implemented here:
 *
 *   collections.OrderedDict()                     -> empty dict
 *   torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
 *                                   requires_grad, hooks[, metadata])
 *                                                 -> tensor view
 *   torch._utils._rebuild_parameter(tensor, requires_grad, hooks) -> tensor
 *   torch.{Float,Half,BFloat16,Double,Long,Int,Short,Char,Byte,Bool}Storage
 *                                                 -> storage type markers
 *
 * Storages arrive through BINPERSID ('storage', type, key, location, numel)
 * and resolve to the mapped record. Every other global or opcode is an
 * error naming it. Objects live in one pool freed at the end, so reference
 * cycles a hostile pickle might build are harmless; nothing walks objects
 * recursively.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_internal.h"
#include "error.h"

/* Limits far above what any real state_dict needs (ViT-H: ~600 tensors,
 * ~10 objects each) but small enough to bound memory on hostile input. */
#define ENG__PK_MAX_PKL   ((uint64_t)256 << 20) /* data.pkl bytes */
#define ENG__PK_MAX_OBJS  (1u << 22)            /* objects allocated */
#define ENG__PK_MAX_STACK (1u << 20)            /* value stack depth */
#define ENG__PK_MAX_MARKS 256                   /* MARK nesting */
#define ENG__PK_MAX_MEMO  (1u << 22)            /* memo index */
#define ENG__PK_MAX_STR   ((uint64_t)1 << 20)   /* one string, bytes */
#define ENG__PK_MAX_ITEMS ((uint64_t)1 << 26)   /* list/tuple/dict slots, total */

enum {
    P_NONE,
    P_BOOL,
    P_INT,
    P_FLOAT,
    P_STR,
    P_TUPLE,
    P_LIST,
    P_DICT,
    P_GLOBAL,
    P_STORAGE,
    P_TENSOR,
};

/* Callable / type globals the unpickler knows. */
enum {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR_V2,
    G_REBUILD_PARAMETER,
    G_STORAGE, /* any torch.*Storage; the dtype is in the object */
};

typedef struct eng__pobj eng__pobj;
struct eng__pobj {
    int kind;
    union {
        int64_t i; /* P_BOOL, P_INT */
        double f;  /* P_FLOAT */
        struct {
            const char *s; /* into data.pkl, not NUL-terminated */
            size_t len;
        } str;
        struct {
            eng__pobj **v; /* P_DICT: key, value, key, value, ... */
            size_t n, cap;
        } seq;
        struct {
            int id;          /* G_* */
            eng_dtype dtype; /* G_STORAGE */
        } glob;
        struct {
            const uint8_t *data;
            eng_dtype dtype;
            int64_t numel;
        } storage;
        eng_ckpt_tensor tensor; /* name unset */
    } u;
};

#define ENG__POOL_CHUNK 1024

typedef struct eng__pk {
    eng_ckpt *c;
    const eng__zip *zip;
    const char *prefix; /* "<prefix>/" of data.pkl */
    size_t prefix_len;
    const uint8_t *p, *start, *end;
    eng__pobj **chunks; /* object pool */
    size_t n_chunks, n_objs;
    uint64_t n_items;
    eng__pobj **stack;
    size_t sp, stack_cap;
    size_t marks[ENG__PK_MAX_MARKS];
    size_t n_marks;
    eng__pobj **memo;
    size_t memo_len;   /* slots allocated */
    size_t memo_count; /* slots set: where MEMOIZE stores next */
    eng__pobj none;    /* shared singletons */
    eng__pobj yes, no;
} eng__pk;

static int eng__pk_err(eng__pk *k, int code, const char *what)
{
    return eng__ckerr(k->c, code, "data.pkl: %s at byte %zu", what, (size_t)(k->p - k->start));
}

static eng__pobj *eng__pk_new(eng__pk *k, int kind)
{
    if (k->n_objs >= ENG__PK_MAX_OBJS)
        return NULL;
    if (k->n_objs == k->n_chunks * ENG__POOL_CHUNK) {
        eng__pobj **nc = realloc(k->chunks, (k->n_chunks + 1) * sizeof *nc);
        if (!nc)
            return NULL;
        k->chunks = nc;
        nc[k->n_chunks] = malloc(ENG__POOL_CHUNK * sizeof **nc);
        if (!nc[k->n_chunks])
            return NULL;
        k->n_chunks++;
    }
    eng__pobj *o = &k->chunks[k->n_objs / ENG__POOL_CHUNK][k->n_objs % ENG__POOL_CHUNK];
    k->n_objs++;
    memset(o, 0, sizeof *o);
    o->kind = kind;
    return o;
}

static void eng__pk_free(eng__pk *k)
{
    for (size_t i = 0; i < k->n_objs; i++) {
        eng__pobj *o = &k->chunks[i / ENG__POOL_CHUNK][i % ENG__POOL_CHUNK];
        if (o->kind == P_TUPLE || o->kind == P_LIST || o->kind == P_DICT)
            free(o->u.seq.v);
    }
    for (size_t i = 0; i < k->n_chunks; i++)
        free(k->chunks[i]);
    free(k->chunks);
    free(k->stack);
    free(k->memo);
}

static int eng__pk_oom(eng__pk *k)
{
    if (k->n_objs >= ENG__PK_MAX_OBJS)
        return eng__pk_err(k, ENG_ELIMIT, "too many objects");
    return eng__pk_err(k, ENG_ENOMEM, "out of memory");
}

static int eng__pk_push(eng__pk *k, eng__pobj *o)
{
    if (!o)
        return eng__pk_oom(k);
    if (k->sp == k->stack_cap) {
        if (k->stack_cap >= ENG__PK_MAX_STACK)
            return eng__pk_err(k, ENG_ELIMIT, "stack too deep");
        size_t cap = k->stack_cap ? k->stack_cap * 2 : 256;
        eng__pobj **ns = realloc(k->stack, cap * sizeof *ns);
        if (!ns)
            return eng__pk_err(k, ENG_ENOMEM, "out of memory");
        k->stack = ns;
        k->stack_cap = cap;
    }
    k->stack[k->sp++] = o;
    return 0;
}

/* The stack floor: values below the innermost MARK are not ours to pop. */
static size_t eng__pk_floor(const eng__pk *k) { return k->n_marks ? k->marks[k->n_marks - 1] : 0; }

static int eng__pk_pop(eng__pk *k, eng__pobj **o)
{
    if (k->sp <= eng__pk_floor(k))
        return eng__pk_err(k, ENG_EFORMAT, "stack underflow");
    *o = k->stack[--k->sp];
    return 0;
}

static int eng__pk_top(eng__pk *k, eng__pobj **o)
{
    if (k->sp <= eng__pk_floor(k))
        return eng__pk_err(k, ENG_EFORMAT, "stack underflow");
    *o = k->stack[k->sp - 1];
    return 0;
}

/* Pop the items above the innermost MARK (and the mark): [*first, sp). */
static int eng__pk_pop_mark(eng__pk *k, size_t *first)
{
    if (!k->n_marks)
        return eng__pk_err(k, ENG_EFORMAT, "no MARK on the stack");
    *first = k->marks[--k->n_marks];
    return 0;
}

static int eng__seq_add(eng__pk *k, eng__pobj *s, eng__pobj *const *v, size_t n)
{
    if (n == 0)
        return 0;
    if (k->n_items + n > ENG__PK_MAX_ITEMS)
        return eng__pk_err(k, ENG_ELIMIT, "too many container items");
    if (s->u.seq.n + n > s->u.seq.cap) {
        size_t cap = s->u.seq.cap ? s->u.seq.cap : 4;
        while (cap < s->u.seq.n + n)
            cap *= 2;
        eng__pobj **nv = realloc(s->u.seq.v, cap * sizeof *nv);
        if (!nv)
            return eng__pk_err(k, ENG_ENOMEM, "out of memory");
        s->u.seq.v = nv;
        s->u.seq.cap = cap;
    }
    memcpy(s->u.seq.v + s->u.seq.n, v, n * sizeof *v);
    s->u.seq.n += n;
    k->n_items += n;
    return 0;
}

/* Build a tuple from stack[first..sp) and replace those items with it. */
static int eng__pk_tuple_from(eng__pk *k, size_t first)
{
    eng__pobj *t = eng__pk_new(k, P_TUPLE);
    int rc;
    if (!t)
        return eng__pk_oom(k);
    if ((rc = eng__seq_add(k, t, k->stack + first, k->sp - first)))
        return rc;
    k->sp = first;
    return eng__pk_push(k, t);
}

static int eng__pk_need(eng__pk *k, uint64_t n)
{
    if ((uint64_t)(k->end - k->p) < n)
        return eng__pk_err(k, ENG_EFORMAT, "truncated");
    return 0;
}

static int eng__pk_memo_put(eng__pk *k, uint64_t idx)
{
    eng__pobj *o = NULL;
    int rc;
    if ((rc = eng__pk_top(k, &o)))
        return rc;
    if (idx >= ENG__PK_MAX_MEMO)
        return eng__pk_err(k, ENG_ELIMIT, "memo index too large");
    if (idx >= k->memo_len) {
        size_t len = k->memo_len ? k->memo_len : 64;
        while (len <= idx)
            len *= 2;
        eng__pobj **nm = realloc(k->memo, len * sizeof *nm);
        if (!nm)
            return eng__pk_err(k, ENG_ENOMEM, "out of memory");
        memset(nm + k->memo_len, 0, (len - k->memo_len) * sizeof *nm);
        k->memo = nm;
        k->memo_len = len;
    }
    if (!k->memo[idx])
        k->memo_count++;
    k->memo[idx] = o;
    return 0;
}

static int eng__pk_memo_get(eng__pk *k, uint64_t idx)
{
    if (idx >= k->memo_len || !k->memo[idx])
        return eng__pk_err(k, ENG_EFORMAT, "memo get of an unset index");
    return eng__pk_push(k, k->memo[idx]);
}

static int eng__str_is(const eng__pobj *o, const char *s)
{
    size_t n = strlen(s);
    return o->kind == P_STR && o->u.str.len == n && memcmp(o->u.str.s, s, n) == 0;
}

static const struct {
    const char *name;
    eng_dtype dtype;
} eng__storages[] = {
    {"FloatStorage", ENG_F32},  {"HalfStorage", ENG_F16}, {"BFloat16Storage", ENG_BF16},
    {"DoubleStorage", ENG_F64}, {"LongStorage", ENG_I64}, {"IntStorage", ENG_I32},
    {"ShortStorage", ENG_I16},  {"CharStorage", ENG_I8},  {"ByteStorage", ENG_U8},
    {"BoolStorage", ENG_BOOL},
};

/* Resolve "module.name" to an allowed global or refuse it by name. */
static int eng__pk_global(eng__pk *k, const char *mod, size_t ml, const char *name, size_t nl)
{
    eng__pobj *g = eng__pk_new(k, P_GLOBAL);
    if (!g)
        return eng__pk_oom(k);
#define ENG__IS(s, l, lit) ((l) == sizeof(lit) - 1 && memcmp((s), (lit), (l)) == 0)
    if (ENG__IS(mod, ml, "collections") && ENG__IS(name, nl, "OrderedDict")) {
        g->u.glob.id = G_ORDERED_DICT;
        return eng__pk_push(k, g);
    }
    if (ENG__IS(mod, ml, "torch._utils") && ENG__IS(name, nl, "_rebuild_tensor_v2")) {
        g->u.glob.id = G_REBUILD_TENSOR_V2;
        return eng__pk_push(k, g);
    }
    if (ENG__IS(mod, ml, "torch._utils") && ENG__IS(name, nl, "_rebuild_parameter")) {
        g->u.glob.id = G_REBUILD_PARAMETER;
        return eng__pk_push(k, g);
    }
    if (ENG__IS(mod, ml, "torch"))
        for (size_t i = 0; i < sizeof eng__storages / sizeof eng__storages[0]; i++)
            if (strlen(eng__storages[i].name) == nl &&
                memcmp(eng__storages[i].name, name, nl) == 0) {
                g->u.glob.id = G_STORAGE;
                g->u.glob.dtype = eng__storages[i].dtype;
                return eng__pk_push(k, g);
            }
#undef ENG__IS
    return eng__ckerr(k->c, ENG_EUNSUP, "data.pkl: forbidden global '%.*s.%.*s' at byte %zu",
                      (int)(ml > 200 ? 200 : ml), mod, (int)(nl > 200 ? 200 : nl), name,
                      (size_t)(k->p - k->start));
}

/* GLOBAL: "module\nname\n" inline. */
static int eng__pk_op_global(eng__pk *k)
{
    const uint8_t *m = k->p, *nl1 = memchr(m, '\n', (size_t)(k->end - m));
    if (!nl1)
        return eng__pk_err(k, ENG_EFORMAT, "truncated GLOBAL");
    const uint8_t *n = nl1 + 1, *nl2 = memchr(n, '\n', (size_t)(k->end - n));
    if (!nl2)
        return eng__pk_err(k, ENG_EFORMAT, "truncated GLOBAL");
    k->p = nl2 + 1;
    return eng__pk_global(k, (const char *)m, (size_t)(nl1 - m), (const char *)n,
                          (size_t)(nl2 - n));
}

static int eng__pk_int(eng__pk *k, const eng__pobj *o, int64_t *v, const char *what)
{
    if (o->kind != P_INT && o->kind != P_BOOL) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s is not an integer", what);
        return eng__pk_err(k, ENG_EFORMAT, msg);
    }
    *v = o->u.i;
    return 0;
}

/* BINPERSID: ('storage', storage_type, key, location, numel) -> storage. */
static int eng__pk_persid(eng__pk *k, eng__pobj *pid, eng__pobj **out)
{
    int rc;
    char name[512];
    const uint8_t *rec = NULL;
    uint64_t rec_size = 0, nbytes;
    int64_t numel = 0;
    if (pid->kind != P_TUPLE || pid->u.seq.n != 5 || !eng__str_is(pid->u.seq.v[0], "storage"))
        return eng__pk_err(k, ENG_EFORMAT, "persistent id is not a ('storage', ...) tuple");
    eng__pobj *type = pid->u.seq.v[1], *key = pid->u.seq.v[2];
    if (type->kind != P_GLOBAL || type->u.glob.id != G_STORAGE)
        return eng__pk_err(k, ENG_EFORMAT, "persistent id has no storage type");
    if (key->kind != P_STR || key->u.str.len > 256)
        return eng__pk_err(k, ENG_EFORMAT, "persistent id has a bad storage key");
    if ((rc = eng__pk_int(k, pid->u.seq.v[4], &numel, "storage size")))
        return rc;
    if (numel < 0)
        return eng__pk_err(k, ENG_EFORMAT, "negative storage size");
    int nl = snprintf(name, sizeof name, "%.*sdata/%.*s", (int)k->prefix_len, k->prefix,
                      (int)key->u.str.len, key->u.str.s);
    if (nl < 0 || (size_t)nl >= sizeof name)
        return eng__pk_err(k, ENG_ELIMIT, "storage record name too long");
    const eng__zip_entry *e = eng__zip_find(k->zip, name, (size_t)nl);
    if (!e)
        return eng__ckerr(k->c, ENG_EFORMAT, "data.pkl: storage record '%s' is missing", name);
    if ((rc = eng__zip_data(k->c, e, &rec, &rec_size)))
        return rc;
    eng_dtype dt = type->u.glob.dtype;
    if (eng__mul_u64((uint64_t)numel, eng_dtype_size(dt), &nbytes) || nbytes > rec_size)
        return eng__ckerr(k->c, ENG_EFORMAT,
                          "data.pkl: storage '%s' of %lld %s elements exceeds its %llu-byte record",
                          name, (long long)numel, eng_dtype_name(dt), (unsigned long long)rec_size);
    eng__pobj *s = eng__pk_new(k, P_STORAGE);
    if (!s)
        return eng__pk_oom(k);
    s->u.storage.data = rec;
    s->u.storage.dtype = dt;
    s->u.storage.numel = numel;
    *out = s;
    return 0;
}

/* Read a tuple of at most ENG_CKPT_MAX_DIMS ints. */
static int eng__pk_dims(eng__pk *k, const eng__pobj *t, int64_t *v, int *n, const char *what)
{
    int rc;
    if (t->kind != P_TUPLE && t->kind != P_LIST) {
        char msg[64];
        snprintf(msg, sizeof msg, "tensor %s is not a tuple", what);
        return eng__pk_err(k, ENG_EFORMAT, msg);
    }
    if (t->u.seq.n > ENG_CKPT_MAX_DIMS)
        return eng__pk_err(k, ENG_ELIMIT, "tensor has too many dimensions");
    for (size_t i = 0; i < t->u.seq.n; i++) {
        if ((rc = eng__pk_int(k, t->u.seq.v[i], &v[i], what)))
            return rc;
        if (v[i] < 0)
            return eng__pk_err(k, ENG_EFORMAT, "negative tensor size or stride");
    }
    *n = (int)t->u.seq.n;
    return 0;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks
 * [, metadata]): a view whose every addressed element must lie inside the
 * storage: offset + sum((size[d]-1) * stride[d]) < numel(storage). */
static int eng__pk_rebuild_tensor(eng__pk *k, const eng__pobj *args, eng__pobj **out)
{
    int rc, ns = 0, nt = 0;
    int64_t off = 0;
    if (args->u.seq.n != 6 && args->u.seq.n != 7)
        return eng__pk_err(k, ENG_EFORMAT, "_rebuild_tensor_v2 takes 6 or 7 arguments");
    const eng__pobj *st = args->u.seq.v[0];
    if (st->kind != P_STORAGE)
        return eng__pk_err(k, ENG_EFORMAT, "_rebuild_tensor_v2 argument is not a storage");
    eng__pobj *o = eng__pk_new(k, P_TENSOR);
    if (!o)
        return eng__pk_oom(k);
    eng_ckpt_tensor *t = &o->u.tensor;
    if ((rc = eng__pk_int(k, args->u.seq.v[1], &off, "storage offset")))
        return rc;
    if ((rc = eng__pk_dims(k, args->u.seq.v[2], t->shape, &ns, "size")) ||
        (rc = eng__pk_dims(k, args->u.seq.v[3], t->stride, &nt, "stride")))
        return rc;
    if (ns != nt)
        return eng__pk_err(k, ENG_EFORMAT, "tensor size and stride differ in length");
    if (off < 0)
        return eng__pk_err(k, ENG_EFORMAT, "negative storage offset");
    t->ndim = ns;
    t->dtype = st->u.storage.dtype;
    uint64_t numel = 1, last = (uint64_t)off, span;
    for (int d = 0; d < ns; d++)
        if (eng__mul_u64(numel, (uint64_t)t->shape[d], &numel) || numel > INT64_MAX)
            return eng__pk_err(k, ENG_ELIMIT, "tensor shape product overflows");
    if (numel > 0) {
        for (int d = 0; d < ns; d++)
            if (eng__mul_u64((uint64_t)(t->shape[d] - 1), (uint64_t)t->stride[d], &span) ||
                eng__add_u64(last, span, &last))
                return eng__pk_err(k, ENG_EFORMAT, "tensor view extent overflows");
        if (last >= (uint64_t)st->u.storage.numel)
            return eng__pk_err(k, ENG_EFORMAT, "tensor view reaches past its storage");
    } else if ((uint64_t)off > (uint64_t)st->u.storage.numel) {
        return eng__pk_err(k, ENG_EFORMAT, "tensor offset past its storage");
    }
    t->numel = (int64_t)numel;
    t->data = st->u.storage.data + (size_t)off * eng_dtype_size(t->dtype);
    *out = o;
    return 0;
}

/* REDUCE: callable(*args) for the allowed callables only. */
static int eng__pk_reduce(eng__pk *k)
{
    int rc;
    eng__pobj *args = NULL, *fn = NULL, *res = NULL;
    if ((rc = eng__pk_pop(k, &args)) || (rc = eng__pk_pop(k, &fn)))
        return rc;
    if (args->kind != P_TUPLE)
        return eng__pk_err(k, ENG_EFORMAT, "REDUCE arguments are not a tuple");
    if (fn->kind != P_GLOBAL || fn->u.glob.id == G_STORAGE)
        return eng__pk_err(k, ENG_EUNSUP, "REDUCE of an object that is not an allowed callable");
    switch (fn->u.glob.id) {
    case G_ORDERED_DICT:
        if (args->u.seq.n != 0)
            return eng__pk_err(k, ENG_EUNSUP, "OrderedDict() with arguments");
        if (!(res = eng__pk_new(k, P_DICT)))
            return eng__pk_oom(k);
        break;
    case G_REBUILD_TENSOR_V2:
        if ((rc = eng__pk_rebuild_tensor(k, args, &res)))
            return rc;
        break;
    default: /* G_REBUILD_PARAMETER(data, requires_grad, hooks) */
        if (args->u.seq.n != 3 || args->u.seq.v[0]->kind != P_TENSOR)
            return eng__pk_err(k, ENG_EFORMAT, "_rebuild_parameter needs (tensor, bool, hooks)");
        res = args->u.seq.v[0];
        break;
    }
    return eng__pk_push(k, res);
}

/* SETITEMS/SETITEM: stack[first..sp) are key, value pairs for dict below. */
static int eng__pk_setitems(eng__pk *k, size_t first)
{
    int rc;
    if ((k->sp - first) % 2)
        return eng__pk_err(k, ENG_EFORMAT, "SETITEMS with an odd number of items");
    if (first == 0 || first <= eng__pk_floor(k))
        return eng__pk_err(k, ENG_EFORMAT, "stack underflow");
    eng__pobj *d = k->stack[first - 1];
    if (d->kind != P_DICT)
        return eng__pk_err(k, ENG_EFORMAT, "SETITEMS target is not a dict");
    if ((rc = eng__seq_add(k, d, k->stack + first, k->sp - first)))
        return rc;
    k->sp = first;
    return 0;
}

static int eng__pk_appends(eng__pk *k, size_t first)
{
    if (first == 0 || first <= eng__pk_floor(k))
        return eng__pk_err(k, ENG_EFORMAT, "stack underflow");
    eng__pobj *l = k->stack[first - 1];
    if (l->kind != P_LIST)
        return eng__pk_err(k, ENG_EFORMAT, "APPENDS target is not a list");
    int rc = eng__seq_add(k, l, k->stack + first, k->sp - first);
    k->sp = first;
    return rc;
}

static int eng__pk_str(eng__pk *k, uint64_t len)
{
    int rc;
    if (len > ENG__PK_MAX_STR)
        return eng__pk_err(k, ENG_ELIMIT, "string too long");
    if ((rc = eng__pk_need(k, len)))
        return rc;
    eng__pobj *s = eng__pk_new(k, P_STR);
    if (!s)
        return eng__pk_oom(k);
    s->u.str.s = (const char *)k->p;
    s->u.str.len = (size_t)len;
    k->p += len;
    return eng__pk_push(k, s);
}

static int eng__pk_intobj(eng__pk *k, int64_t v)
{
    eng__pobj *o = eng__pk_new(k, P_INT);
    if (!o)
        return eng__pk_oom(k);
    o->u.i = v;
    return eng__pk_push(k, o);
}

/* Run the machine to STOP; *result gets the single value left. */
static int eng__pk_run(eng__pk *k, eng__pobj **result)
{
    int rc = 0;
    eng__pobj *a = NULL, *b = NULL, *o = NULL;
    size_t first = 0;
    while (k->p < k->end) {
        const uint8_t *at = k->p;
        uint8_t op = *k->p++;
        switch (op) {
        case 0x80: /* PROTO */
            if ((rc = eng__pk_need(k, 1)))
                return rc;
            if (*k->p < 2 || *k->p > 5) {
                k->p = at;
                return eng__pk_err(k, ENG_EUNSUP, "unsupported pickle protocol");
            }
            k->p++;
            break;
        case 0x95: /* FRAME: an 8-byte length hint, nothing to do */
            if ((rc = eng__pk_need(k, 8)))
                return rc;
            k->p += 8;
            break;
        case '.': /* STOP */
            if (k->n_marks || k->sp != 1)
                return eng__pk_err(k, ENG_EFORMAT, "STOP with a malformed stack");
            *result = k->stack[0];
            return 0;
        case '(': /* MARK */
            if (k->n_marks == ENG__PK_MAX_MARKS)
                return eng__pk_err(k, ENG_ELIMIT, "MARKs nested too deeply");
            k->marks[k->n_marks++] = k->sp;
            break;
        case '}':
            rc = eng__pk_push(k, eng__pk_new(k, P_DICT));
            break;
        case ']':
            rc = eng__pk_push(k, eng__pk_new(k, P_LIST));
            break;
        case ')':
            rc = eng__pk_push(k, eng__pk_new(k, P_TUPLE));
            break;
        case 'N':
            rc = eng__pk_push(k, &k->none);
            break;
        case 0x88:
            rc = eng__pk_push(k, &k->yes);
            break;
        case 0x89:
            rc = eng__pk_push(k, &k->no);
            break;
        case 'X': /* BINUNICODE */
            if ((rc = eng__pk_need(k, 4)))
                return rc;
            k->p += 4;
            rc = eng__pk_str(k, eng__le32(k->p - 4));
            break;
        case 0x8c: /* SHORT_BINUNICODE */
            if ((rc = eng__pk_need(k, 1)))
                return rc;
            k->p += 1;
            rc = eng__pk_str(k, k->p[-1]);
            break;
        case 0x8d: /* BINUNICODE8 */
            if ((rc = eng__pk_need(k, 8)))
                return rc;
            k->p += 8;
            rc = eng__pk_str(k, eng__le64(k->p - 8));
            break;
        case 'q': /* BINPUT */
            if ((rc = eng__pk_need(k, 1)))
                return rc;
            k->p += 1;
            rc = eng__pk_memo_put(k, k->p[-1]);
            break;
        case 'r': /* LONG_BINPUT */
            if ((rc = eng__pk_need(k, 4)))
                return rc;
            k->p += 4;
            rc = eng__pk_memo_put(k, eng__le32(k->p - 4));
            break;
        case 0x94: /* MEMOIZE */
            /* Python stores at len(memo), the number of entries set. */
            rc = eng__pk_memo_put(k, k->memo_count);
            break;
        case 'h': /* BINGET */
            if ((rc = eng__pk_need(k, 1)))
                return rc;
            k->p += 1;
            rc = eng__pk_memo_get(k, k->p[-1]);
            break;
        case 'j': /* LONG_BINGET */
            if ((rc = eng__pk_need(k, 4)))
                return rc;
            k->p += 4;
            rc = eng__pk_memo_get(k, eng__le32(k->p - 4));
            break;
        case 'J': /* BININT: signed 32-bit */
            if ((rc = eng__pk_need(k, 4)))
                return rc;
            k->p += 4;
            rc = eng__pk_intobj(k, (int32_t)eng__le32(k->p - 4));
            break;
        case 'K': /* BININT1 */
            if ((rc = eng__pk_need(k, 1)))
                return rc;
            k->p += 1;
            rc = eng__pk_intobj(k, k->p[-1]);
            break;
        case 'M': /* BININT2 */
            if ((rc = eng__pk_need(k, 2)))
                return rc;
            k->p += 2;
            rc = eng__pk_intobj(k, eng__le16(k->p - 2));
            break;
        case 0x8a: { /* LONG1: n-byte little-endian two's complement */
            if ((rc = eng__pk_need(k, 1)))
                return rc;
            size_t n = *k->p++;
            if (n > 8) {
                k->p = at;
                return eng__pk_err(k, ENG_ELIMIT, "LONG1 integer wider than 64 bits");
            }
            if ((rc = eng__pk_need(k, n)))
                return rc;
            uint64_t v = 0;
            for (size_t i = 0; i < n; i++)
                v |= (uint64_t)k->p[i] << (8 * i);
            if (n > 0 && n < 8 && (k->p[n - 1] & 0x80))
                v |= ~(uint64_t)0 << (8 * n);
            k->p += n;
            rc = eng__pk_intobj(k, (int64_t)v);
            break;
        }
        case 'G': { /* BINFLOAT: big-endian double */
            if ((rc = eng__pk_need(k, 8)))
                return rc;
            uint64_t v = 0;
            for (int i = 0; i < 8; i++)
                v = v << 8 | k->p[i];
            k->p += 8;
            if (!(o = eng__pk_new(k, P_FLOAT)))
                return eng__pk_oom(k);
            memcpy(&o->u.f, &v, 8);
            rc = eng__pk_push(k, o);
            break;
        }
        case 't': /* TUPLE */
            if ((rc = eng__pk_pop_mark(k, &first)))
                return rc;
            rc = eng__pk_tuple_from(k, first);
            break;
        case 0x85:   /* TUPLE1 */
        case 0x86:   /* TUPLE2 */
        case 0x87: { /* TUPLE3 */
            size_t n = (size_t)(op - 0x84);
            if (k->sp - eng__pk_floor(k) < n)
                return eng__pk_err(k, ENG_EFORMAT, "stack underflow");
            rc = eng__pk_tuple_from(k, k->sp - n);
            break;
        }
        case 's': /* SETITEM */
            if (k->sp - eng__pk_floor(k) < 2)
                return eng__pk_err(k, ENG_EFORMAT, "stack underflow");
            rc = eng__pk_setitems(k, k->sp - 2);
            break;
        case 'u': /* SETITEMS */
            if ((rc = eng__pk_pop_mark(k, &first)))
                return rc;
            rc = eng__pk_setitems(k, first);
            break;
        case 'a': /* APPEND */
            if (k->sp - eng__pk_floor(k) < 1)
                return eng__pk_err(k, ENG_EFORMAT, "stack underflow");
            rc = eng__pk_appends(k, k->sp - 1);
            break;
        case 'e': /* APPENDS */
            if ((rc = eng__pk_pop_mark(k, &first)))
                return rc;
            rc = eng__pk_appends(k, first);
            break;
        case 'c': /* GLOBAL */
            rc = eng__pk_op_global(k);
            break;
        case 0x93: /* STACK_GLOBAL */
            if ((rc = eng__pk_pop(k, &b)) || (rc = eng__pk_pop(k, &a)))
                return rc;
            if (a->kind != P_STR || b->kind != P_STR)
                return eng__pk_err(k, ENG_EFORMAT, "STACK_GLOBAL needs two strings");
            rc = eng__pk_global(k, a->u.str.s, a->u.str.len, b->u.str.s, b->u.str.len);
            break;
        case 'R': /* REDUCE */
            rc = eng__pk_reduce(k);
            break;
        case 'Q': /* BINPERSID */
            if ((rc = eng__pk_pop(k, &a)))
                return rc;
            if ((rc = eng__pk_persid(k, a, &o)))
                return rc;
            rc = eng__pk_push(k, o);
            break;
        case 'b': /* BUILD: state_dict's _metadata on an OrderedDict; ignored */
            if ((rc = eng__pk_pop(k, &a)) || (rc = eng__pk_top(k, &b)))
                return rc;
            if (b->kind != P_DICT)
                return eng__pk_err(k, ENG_EUNSUP, "BUILD on an object that is not a dict");
            break;
        default: {
            char msg[64];
            k->p = at;
            snprintf(msg, sizeof msg, "unsupported opcode 0x%02x", op);
            return eng__pk_err(k, ENG_EUNSUP, msg);
        }
        }
        if (rc)
            return rc;
    }
    return eng__pk_err(k, ENG_EFORMAT, "truncated (no STOP)");
}

static int eng__pk_collect(eng__pk *k, const eng__pobj *d)
{
    int rc;
    for (size_t i = 0; i + 1 < d->u.seq.n; i += 2) {
        const eng__pobj *key = d->u.seq.v[i], *val = d->u.seq.v[i + 1];
        if (key->kind != P_STR)
            return eng__ckerr(k->c, ENG_EFORMAT, "data.pkl: state_dict key %zu is not a string",
                              i / 2);
        if (memchr(key->u.str.s, '\0', key->u.str.len))
            return eng__ckerr(k->c, ENG_EFORMAT, "data.pkl: state_dict key %zu contains NUL",
                              i / 2);
        if (key->u.str.len > ENG__MAX_NAME)
            return eng__ckerr(k->c, ENG_ELIMIT, "data.pkl: state_dict key %zu too long", i / 2);
        if (val->kind != P_TENSOR)
            return eng__ckerr(k->c, ENG_EUNSUP, "data.pkl: entry '%.*s' is not a tensor",
                              (int)(key->u.str.len > 200 ? 200 : key->u.str.len), key->u.str.s);
        char *name = malloc(key->u.str.len + 1);
        if (!name)
            return eng__ckerr(k->c, ENG_ENOMEM, "out of memory");
        memcpy(name, key->u.str.s, key->u.str.len);
        name[key->u.str.len] = '\0';
        if ((rc = eng__ckpt_add(k->c, name, &val->u.tensor)))
            return rc;
    }
    return 0;
}

/* The tensor dict: the top-level dict itself, or the dict under its
 * "state_dict" or "model" key (training checkpoints wrap it so). */
static int eng__pk_tensors(eng__pk *k, const eng__pobj *top)
{
    if (top->kind != P_DICT)
        return eng__ckerr(k->c, ENG_EFORMAT, "data.pkl: top-level object is not a dict");
    for (int pass = 0; pass < 2; pass++) {
        const char *want = pass ? "model" : "state_dict";
        for (size_t i = 0; i + 1 < top->u.seq.n; i += 2)
            if (eng__str_is(top->u.seq.v[i], want) && top->u.seq.v[i + 1]->kind == P_DICT)
                return eng__pk_collect(k, top->u.seq.v[i + 1]);
    }
    return eng__pk_collect(k, top);
}

/* Find the one "<prefix>/data.pkl"; records then live under "<prefix>/data/". */
static int eng__pth_find_pkl(const eng_ckpt *c, const eng__zip *z, const eng__zip_entry **pkl)
{
    static const char suffix[] = "/data.pkl";
    const size_t sl = sizeof suffix - 1;
    *pkl = NULL;
    for (size_t i = 0; i < z->n; i++) {
        const eng__zip_entry *e = &z->e[i];
        if (e->name_len < sl + 1 || memcmp(e->name + e->name_len - sl, suffix, sl) != 0 ||
            memchr(e->name, '/', e->name_len - sl))
            continue;
        if (*pkl)
            return eng__ckerr(c, ENG_EFORMAT, "zip: more than one data.pkl");
        *pkl = e;
    }
    if (!*pkl)
        return eng__ckerr(c, ENG_EFORMAT,
                          "zip archive has no <name>/data.pkl (not a torch.save "
                          "checkpoint)");
    return 0;
}

int eng__pth_parse(eng_ckpt *c)
{
    int rc;
    eng__zip z = {0};
    eng__pk k;
    const eng__zip_entry *pe = NULL;
    const uint8_t *pkl = NULL, *bo = NULL;
    uint64_t pkl_len = 0, bo_len = 0;
    eng__pobj *top = NULL;
    memset(&k, 0, sizeof k);
    if ((rc = eng__zip_open(&z, c)))
        goto err;
    if ((rc = eng__pth_find_pkl(c, &z, &pe)))
        goto err;
    if ((rc = eng__zip_data(c, pe, &pkl, &pkl_len)))
        goto err;
    if (pkl_len > ENG__PK_MAX_PKL) {
        rc = eng__ckerr(c, ENG_ELIMIT, "data.pkl is %llu bytes, over the limit",
                        (unsigned long long)pkl_len);
        goto err;
    }
    k.c = c;
    k.zip = &z;
    k.prefix = pe->name;
    k.prefix_len = pe->name_len - strlen("data.pkl");
    /* Newer torch records the byte order; storages are read as little-endian. */
    {
        char bname[300];
        int bl = snprintf(bname, sizeof bname, "%.*sbyteorder", (int)k.prefix_len, k.prefix);
        const eng__zip_entry *be =
            bl > 0 && (size_t)bl < sizeof bname ? eng__zip_find(&z, bname, (size_t)bl) : NULL;
        if (be) {
            if ((rc = eng__zip_data(c, be, &bo, &bo_len)))
                goto err;
            if (bo_len != 6 || memcmp(bo, "little", 6) != 0) {
                rc = eng__ckerr(c, ENG_EUNSUP, "checkpoint is not little-endian");
                goto err;
            }
        }
    }
    k.start = k.p = pkl;
    k.end = pkl + pkl_len;
    k.none.kind = P_NONE;
    k.yes.kind = k.no.kind = P_BOOL;
    k.yes.u.i = 1;
    if ((rc = eng__pk_run(&k, &top)))
        goto err;
    if ((rc = eng__pk_tensors(&k, top)))
        goto err;
    eng__pk_free(&k);
    eng__zip_free(&z);
    return 0;
err:
    eng__pk_free(&k);
    eng__zip_free(&z);
    return rc;
}
