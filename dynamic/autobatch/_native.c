/* The hottest pieces of dynamic.autobatch's recording path in C (see native.py).
 *
 * `RunBase` gives the engine's `Run` three methods -- `compose` (torch.stack / torch.cat of
 * lazy parts of one meta: a composite), `row_alias` (x[j], x[a:b] of a lazy x: an alias) and
 * `cell_call` (a library cell's call on one tree node: a member of its fused group) -- that
 * do what the Python methods of the same names do in their common case, and call the Python
 * method itself for everything else (a first call of a site, a profile, an unusual argument),
 * before changing anything. The gain is CPython's own overhead: no frames, no bytecode, the
 * recorded objects (`Node`, `Lazy`) made by filling their slots directly.
 *
 * The Python classes (`Lazy`, `Meta`, `Node`, `Group`, `Site`, `FuseKey`) stay what they are;
 * `setup` reads the offsets of their slots from their member descriptors and refuses a slot
 * that is not an object slot, so a changed class fails loudly at load time (then the pure
 * Python path runs), never silently at run time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define ABI 8

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

static PyTypeObject *LazyT, *NodeT, *GroupT;
static Py_ssize_t L_node, L_out, L_src, L_lo, L_rows, L_meta, L_parts, L_count;
static Py_ssize_t M_rows, M_tail, M_resized;
static Py_ssize_t N_site, N_leaves, N_example, N_depth, N_height, N_fparent, N_group, N_slot,
    N_users;
static Py_ssize_t G_members, G_hs, G_cs, G_heights, G_kid_slots, G_nkids, G_depth, G_waiting,
    G_users, G_lastp, G_claimed_height, G_inner_x;
static Py_ssize_t S_outs, S_fuse, K_n;

/* Python fallbacks and constants, given by `setup` */
static PyObject *py_compose, *py_cell_call, *py_row_alias, *py_wait_for, *py_record_at,
    *grad_enabled, *torch_stack, *alias_row, *alias_rows, *tls, *py_stack, *py_getitem,
    *py_cell_dunder;
static PyObject *s_composites, *s_count, *s_current, *s_cell_memo, *s_fuser, *s_open,
    *s_profile, *s_training, *s_requires_grad, *s_run, *s_compiled, *s_cell_classes;
static PyObject *zero, *one;
static long LEAF_CALL, INNER_CALL; /* fused.LEAF_CALL, fused.INNER_CALL */

/* -- slots ----------------------------------------------------------------------------- */
static int offset_of(PyObject *type, const char *name, Py_ssize_t *out)
{
    PyObject *d = PyDict_GetItemString(((PyTypeObject *)type)->tp_dict, name);
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", ((PyTypeObject *)type)->tp_name,
                     name);
        return -1;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot",
                     ((PyTypeObject *)type)->tp_name, name);
        return -1;
    }
    *out = m->offset;
    return 0;
}

static inline void set_slot(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyObject *old = SLOT(o, off);
    Py_INCREF(v);
    SLOT(o, off) = v;
    Py_XDECREF(old);
}

static inline void set_slot_steal(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyObject *old = SLOT(o, off);
    SLOT(o, off) = v;
    Py_XDECREF(old);
}

/* Lazy(node, out, meta, count): as Lazy.__init__ (src None, lo 0, rows meta.rows, parts
 * None). New reference or NULL. */
static PyObject *new_lazy(PyObject *node, PyObject *out, PyObject *meta, PyObject *count)
{
    PyObject *rows = SLOT(meta, M_rows);
    if (rows == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Meta.rows is not set");
        return NULL;
    }
    PyObject *o = LazyT->tp_alloc(LazyT, 0);
    if (o == NULL)
        return NULL;
    SLOT(o, L_node) = Py_NewRef(node);
    SLOT(o, L_out) = Py_NewRef(out);
    SLOT(o, L_src) = Py_NewRef(Py_None);
    SLOT(o, L_lo) = Py_NewRef(zero);
    SLOT(o, L_rows) = Py_NewRef(rows);
    SLOT(o, L_meta) = Py_NewRef(meta);
    SLOT(o, L_parts) = Py_NewRef(Py_None);
    SLOT(o, L_count) = Py_NewRef(count);
    return o;
}

/* A small Python int's value, or -1 (not an exact int, or out of range) */
static inline Py_ssize_t small_int(PyObject *v)
{
    if (v == NULL || !PyLong_CheckExact(v))
        return -1;
    Py_ssize_t r = PyLong_AsSsize_t(v);
    if (r == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return r;
}

static PyObject *call4(PyObject *fn, PyObject *a, PyObject *b, PyObject *c, PyObject *d)
{
    PyObject *args[4] = {a, b, c, d};
    return PyObject_Vectorcall(fn, args, 4, NULL);
}

/* -- the run's hot attributes ---------------------------------------------------------- */
/* A native run keeps the attributes the record path reads on every call in this struct
 * (member descriptors: Python code reads and writes them as ever), not in its __dict__ */
enum { F_COMPOSITES, F_COUNT, F_CURRENT, F_CELL_MEMO, F_FUSER, F_PROFILE, F_CELL_CLASSES, NF };

/* A few recent cell_memo entries by their key's parts, compared by identity (a hit skips
 * making the key: its tuple, three ints and their hashes). The slot keeps the module, the
 * grad and training values and the entry alive, and the entry keeps the plain tensors of the
 * key alive (its args), so no compared address can be reused meanwhile. A miss (or a
 * training flag that is equal but not identical) goes to the memo dict: never wrong. */
#define NCACHE 8
typedef struct {
    PyObject *module, *grad, *training, *entry;
    void *arg[4]; /* each argument's meta if it is lazy, else the argument itself */
    char lazy[4];
} MemoSlot;

typedef struct {
    PyObject_HEAD PyObject *f[NF];
    MemoSlot cache[NCACHE];
    int next;
} RunBaseObject;

/* run.<field> (a new reference), or NULL with AttributeError (not set yet) */
static inline PyObject *field(PyObject *run, int which)
{
    PyObject *v = ((RunBaseObject *)run)->f[which];
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a run attribute is not set");
        return NULL;
    }
    return Py_NewRef(v);
}

/* -- compose ---------------------------------------------------------------------------- */
/* Run.compose(func, parts, dim): the composite of lazy parts of one meta; False (a call);
 * None (not of that kind). A first (func, dim, meta, n) goes to the Python method. */
static PyObject *compose(PyObject *self, PyObject *func, PyObject *parts, PyObject *dim)
{
    if (!PyList_CheckExact(parts) || PyList_GET_SIZE(parts) == 0)
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(parts);
    PyObject *p0 = PyList_GET_ITEM(parts, 0);
    if (Py_TYPE(p0) != LazyT)
        Py_RETURN_NONE;
    PyObject *m0 = SLOT(p0, L_meta);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(parts, i);
        if (Py_TYPE(p) != LazyT || SLOT(p, L_meta) != m0)
            Py_RETURN_NONE;
    }
    PyObject *composites = field(self, F_COMPOSITES);
    if (composites == NULL)
        return NULL;
    PyObject *entry = NULL;
    PyObject *nobj = PyLong_FromSsize_t(n);
    PyObject *key = nobj ? PyTuple_Pack(4, func, dim, m0, nobj) : NULL;
    Py_XDECREF(nobj);
    if (key != NULL && PyDict_CheckExact(composites)) {
        entry = PyDict_GetItemWithError(composites, key); /* borrowed */
        if (entry == NULL)
            PyErr_Clear(); /* (an unhashable dim: the Python method raises it) */
    }
    Py_XDECREF(key);
    if (entry == NULL || !(entry == Py_False || (PyTuple_CheckExact(entry) &&
                                                 PyTuple_GET_SIZE(entry) == 3))) {
        Py_DECREF(composites);
        return call4(py_compose, self, func, parts, dim);
    }
    Py_INCREF(entry); /* (the dict is not ours) */
    Py_DECREF(composites);
    if (entry == Py_False)
        return entry;
    PyObject *count = field(self, F_COUNT);
    PyObject *out = count ? new_lazy(Py_None, zero, PyTuple_GET_ITEM(entry, 1), count) : NULL;
    Py_XDECREF(count);
    PyObject *tup = out ? PyList_AsTuple(parts) : NULL;
    PyObject *p = tup ? PyTuple_Pack(3, PyTuple_GET_ITEM(entry, 0), PyTuple_GET_ITEM(entry, 2),
                                     tup)
                      : NULL;
    Py_XDECREF(tup);
    Py_DECREF(entry);
    if (p == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    set_slot_steal(out, L_parts, p);
    return out;
}

/* -- row alias -------------------------------------------------------------------------- */
/* Run.row_alias(x, arg): x[a:b] (ints 0 <= a < b <= rows) or x[j] (an int) of a lazy x as
 * an alias; every other case goes to the Python function (values._row_alias). */
static PyObject *row_alias(PyObject *const *args)
{
    PyObject *x = args[0], *arg = args[1];
    if (Py_TYPE(x) != LazyT)
        return PyObject_Vectorcall(py_row_alias, args, 2, NULL);
    PyObject *m = SLOT(x, L_meta);
    Py_ssize_t n = small_int(m == NULL ? NULL : SLOT(m, M_rows));
    if (n < 0)
        return PyObject_Vectorcall(py_row_alias, args, 2, NULL);
    PyObject *meta, *op, *where;
    if (PySlice_Check(arg)) {
        PySliceObject *s = (PySliceObject *)arg;
        Py_ssize_t a = small_int(s->start), b = small_int(s->stop);
        if (s->step != Py_None || a < 0 || b <= a || b > n)
            return PyObject_Vectorcall(py_row_alias, args, 2, NULL);
        PyObject *resized = SLOT(m, M_resized);
        PyObject *k = PyLong_FromSsize_t(b - a);
        if (k == NULL)
            return NULL;
        meta = (resized != NULL && PyDict_CheckExact(resized)) ? PyDict_GetItemWithError(resized, k)
                                                               : NULL;
        Py_DECREF(k);
        if (meta == NULL) {
            if (PyErr_Occurred())
                return NULL;
            return PyObject_Vectorcall(py_row_alias, args, 2, NULL);
        }
        op = alias_rows;
        where = PyTuple_Pack(2, s->start, s->stop);
    }
    else if (PyLong_CheckExact(arg)) {
        Py_ssize_t j = small_int(arg);
        if (j < 0 || j >= n || SLOT(m, M_tail) == NULL)
            return PyObject_Vectorcall(py_row_alias, args, 2, NULL);
        meta = SLOT(m, M_tail);
        op = alias_row;
        where = Py_NewRef(arg);
    }
    else
        return PyObject_Vectorcall(py_row_alias, args, 2, NULL);
    if (where == NULL)
        return NULL;
    PyObject *out = new_lazy(Py_None, zero, meta, one);
    PyObject *base = out ? PyTuple_Pack(1, x) : NULL;
    PyObject *parts = base ? PyTuple_Pack(3, op, where, base) : NULL;
    Py_XDECREF(base);
    Py_DECREF(where);
    if (parts == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    set_slot_steal(out, L_parts, parts);
    return out;
}

/* -- cell calls ------------------------------------------------------------------------- */
/* fused._kids: claim the pending members of `g` behind ch / cc. 1: claimed (*nk, *depth
 * set; g.kid_slots extended, g.claimed_height set), 0: nothing claimed, -1: error. */
static int kids(PyObject *ch, PyObject *cc, PyObject *g, PyObject *nreq, Py_ssize_t *nk,
                Py_ssize_t *depth_out)
{
    if (Py_TYPE(ch) != LazyT || Py_TYPE(cc) != LazyT)
        return 0;
    PyObject *hp = SLOT(ch, L_parts), *cp = SLOT(cc, L_parts);
    if (hp == NULL || cp == NULL || !PyTuple_CheckExact(hp) || !PyTuple_CheckExact(cp) ||
        PyTuple_GET_SIZE(hp) != 3 || PyTuple_GET_SIZE(cp) != 3)
        return 0;
    if (PyTuple_GET_ITEM(hp, 0) != torch_stack || PyTuple_GET_ITEM(cp, 0) != torch_stack)
        return 0;
    if (small_int(PyTuple_GET_ITEM(hp, 1)) != 1 || small_int(PyTuple_GET_ITEM(cp, 1)) != 1)
        return 0;
    PyObject *hs = PyTuple_GET_ITEM(hp, 2), *cs = PyTuple_GET_ITEM(cp, 2);
    if (!PyTuple_CheckExact(hs) || !PyTuple_CheckExact(cs))
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(hs);
    if (PyTuple_GET_SIZE(cs) != n || (nreq != Py_None && small_int(nreq) != n))
        return 0;
    Py_ssize_t height = 0, depth = 0, i;
    for (i = 0; i < n; i++) {
        PyObject *h = PyTuple_GET_ITEM(hs, i), *c = PyTuple_GET_ITEM(cs, i);
        if (Py_TYPE(h) != LazyT || Py_TYPE(c) != LazyT)
            break;
        PyObject *k = SLOT(h, L_node);
        if (k == NULL || Py_TYPE(k) != NodeT || SLOT(k, N_group) != g)
            break;
        if (SLOT(c, L_node) != k || small_int(SLOT(h, L_out)) != 0 ||
            small_int(SLOT(c, L_out)) != 1 || SLOT(k, N_fparent) != Py_False)
            break; /* (claimed already: fparent is True) */
        Py_ssize_t kh = small_int(SLOT(k, N_height)), kd = small_int(SLOT(k, N_depth));
        if (kh < 0 || kd < 0 || small_int(SLOT(k, N_slot)) < 0)
            break;
        set_slot(k, N_fparent, Py_True);
        if (kh >= height)
            height = kh + 1;
        if (kd > depth)
            depth = kd;
    }
    if (i < n) { /* not all of them: undo the claims */
        for (Py_ssize_t j = 0; j < i; j++)
            set_slot(SLOT(PyTuple_GET_ITEM(hs, j), L_node), N_fparent, Py_False);
        return 0;
    }
    PyObject *slots = SLOT(g, G_kid_slots);
    PyObject *hobj = PyLong_FromSsize_t(height);
    if (hobj == NULL)
        return -1;
    for (i = 0; i < n; i++) {
        if (PyList_Append(slots, SLOT(SLOT(PyTuple_GET_ITEM(hs, i), L_node), N_slot)) < 0) {
            Py_DECREF(hobj);
            return -1;
        }
    }
    set_slot_steal(g, G_claimed_height, hobj);
    *nk = n;
    *depth_out = depth + 1;
    return 1;
}

/* fused._wait_for for x a stored value or x[a:b] of one (one base); -2: ask Python */
static Py_ssize_t wait_for(PyObject *g, PyObject *x)
{
    PyObject *parts = SLOT(x, L_parts), *b;
    if (parts == Py_None)
        b = x;
    else if (PyTuple_CheckExact(parts) && PyTuple_GET_SIZE(parts) == 3 &&
             PyTuple_GET_ITEM(parts, 0) == alias_rows &&
             PyTuple_CheckExact(PyTuple_GET_ITEM(parts, 2)) &&
             PyTuple_GET_SIZE(PyTuple_GET_ITEM(parts, 2)) == 1 &&
             Py_TYPE(PyTuple_GET_ITEM(PyTuple_GET_ITEM(parts, 2), 0)) == LazyT &&
             SLOT(PyTuple_GET_ITEM(PyTuple_GET_ITEM(parts, 2), 0), L_parts) == Py_None)
        b = PyTuple_GET_ITEM(PyTuple_GET_ITEM(parts, 2), 0);
    else
        return -2;
    PyObject *p = SLOT(b, L_node);
    if (p == NULL || Py_TYPE(p) != NodeT)
        return -2;
    Py_ssize_t depth = small_int(SLOT(p, N_depth));
    if (depth < 0)
        return -2;
    if (SLOT(b, L_src) != Py_None)
        return depth;
    PyObject *q = SLOT(p, N_group);
    PyObject *users;
    if (q == NULL)
        return -2;
    if (q != Py_None) {
        if (Py_TYPE(q) != GroupT)
            return -2;
        p = q;
        users = SLOT(p, G_users);
    }
    else
        users = SLOT(p, N_users);
    if (SLOT(g, G_lastp) != p) {
        Py_ssize_t w = small_int(SLOT(g, G_waiting));
        if (users == NULL || !PyList_CheckExact(users) || w < 0)
            return -2;
        PyObject *wobj = PyLong_FromSsize_t(w + 1);
        if (wobj == NULL || PyList_Append(users, g) < 0) {
            Py_XDECREF(wobj);
            return -1;
        }
        set_slot(g, G_lastp, p);
        set_slot_steal(g, G_waiting, wobj);
    }
    return depth;
}

/* fused._add_member: a member node of group g for the call args; its (h, c) */
static PyObject *add_member(PyObject *self, PyObject *site, PyObject *g, PyObject *args,
                            Py_ssize_t nkids, Py_ssize_t depth, PyObject *mh, PyObject *mc)
{
    PyObject *x = PyTuple_GET_ITEM(args, 0);
    if (Py_TYPE(x) == LazyT) {
        Py_ssize_t d = wait_for(g, x);
        if (d == -1)
            return NULL;
        if (d == -2) {
            PyObject *a[2] = {g, x};
            PyObject *r = PyObject_Vectorcall(py_wait_for, a, 2, NULL);
            if (r == NULL)
                return NULL;
            d = PyLong_AsSsize_t(r);
            Py_DECREF(r);
            if (d == -1 && PyErr_Occurred())
                return NULL;
        }
        if (d + 1 > depth)
            depth = d + 1;
        if (nkids)
            set_slot(g, G_inner_x, Py_True);
    }
    else if (nkids) {
        PyObject *rg = PyObject_GetAttr(x, s_requires_grad);
        int t = rg ? PyObject_IsTrue(rg) : -1;
        Py_XDECREF(rg);
        if (t < 0)
            return NULL;
        if (t)
            set_slot(g, G_inner_x, Py_True);
    }
    PyObject *members = SLOT(g, G_members);
    PyObject *current = field(self, F_CURRENT);
    if (current == NULL)
        return NULL;
    PyObject *node = NodeT->tp_alloc(NodeT, 0);
    PyObject *dobj = PyLong_FromSsize_t(depth);
    PyObject *slot = PyLong_FromSsize_t(PyList_GET_SIZE(members));
    PyObject *nk = PyLong_FromSsize_t(nkids);
    if (node == NULL || dobj == NULL || slot == NULL || nk == NULL) {
        Py_DECREF(current);
        Py_XDECREF(node);
        Py_XDECREF(dobj);
        Py_XDECREF(slot);
        Py_XDECREF(nk);
        return NULL;
    }
    SLOT(node, N_site) = Py_NewRef(site);
    SLOT(node, N_leaves) = Py_NewRef(args);
    SLOT(node, N_example) = current;
    SLOT(node, N_depth) = Py_NewRef(dobj);
    Py_ssize_t gd = small_int(SLOT(g, G_depth));
    if (depth < gd || PyList_GET_SIZE(members) == 0 || gd < 0)
        set_slot(g, G_depth, dobj);
    Py_DECREF(dobj);
    PyObject *height = nkids ? SLOT(g, G_claimed_height) : zero;
    SLOT(node, N_height) = Py_NewRef(height);
    SLOT(node, N_fparent) = Py_NewRef(Py_False);
    SLOT(node, N_group) = Py_NewRef(g);
    SLOT(node, N_slot) = slot;
    PyObject *h = NULL, *c = NULL, *out = NULL;
    if (PyList_Append(members, node) < 0 ||
        PyList_Append(SLOT(g, G_heights), height) < 0 ||
        PyList_Append(SLOT(g, G_nkids), nk) < 0)
        goto done;
    h = new_lazy(node, zero, mh, one);
    c = h ? new_lazy(node, one, mc, one) : NULL;
    if (c == NULL || PyList_Append(SLOT(g, G_hs), h) < 0 || PyList_Append(SLOT(g, G_cs), c) < 0)
        goto done;
    out = PyTuple_Pack(2, h, c);
done:
    Py_XDECREF(h);
    Py_XDECREF(c);
    Py_DECREF(nk);
    Py_DECREF(node);
    return out;
}

/* The memo key of Run.cell_call: (module, meta or id of x, ch, cc, mask, grad, training) */
static PyObject *memo_key(PyObject *module, PyObject *args)
{
    PyObject *items[7];
    items[0] = Py_NewRef(module);
    for (int i = 0; i < 4; i++) {
        PyObject *a = PyTuple_GET_ITEM(args, i);
        items[i + 1] = Py_TYPE(a) == LazyT ? Py_NewRef(SLOT(a, L_meta)) : PyLong_FromVoidPtr(a);
    }
    items[5] = PyObject_CallNoArgs(grad_enabled);
    items[6] = PyObject_GetAttr(module, s_training);
    PyObject *key = NULL;
    int ok = 1;
    for (int i = 0; i < 7; i++)
        ok = ok && items[i] != NULL;
    if (ok) {
        key = PyTuple_New(7);
        if (key != NULL) {
            for (int i = 0; i < 7; i++)
                PyTuple_SET_ITEM(key, i, items[i]);
            return key;
        }
    }
    for (int i = 0; i < 7; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

/* The memo entry (site, args, kind) of a call, borrowed from the run's memo; NULL with no
 * error: not memoized (the Python method decides) */
static void slot_clear(MemoSlot *m)
{
    Py_CLEAR(m->module);
    Py_CLEAR(m->grad);
    Py_CLEAR(m->training);
    Py_CLEAR(m->entry);
}

static PyObject *memo_entry(PyObject *self, PyObject *module, PyObject *args)
{
    RunBaseObject *r = (RunBaseObject *)self;
    void *arg[4];
    char lazy[4];
    for (int i = 0; i < 4; i++) {
        PyObject *a = PyTuple_GET_ITEM(args, i);
        lazy[i] = Py_TYPE(a) == LazyT;
        arg[i] = lazy[i] ? (void *)SLOT(a, L_meta) : (void *)a;
    }
    PyObject *grad = PyObject_CallNoArgs(grad_enabled);
    PyObject *training = grad ? PyObject_GetAttr(module, s_training) : NULL;
    if (training == NULL) {
        Py_XDECREF(grad);
        return NULL;
    }
    for (int k = 0; k < NCACHE; k++) {
        MemoSlot *m = &r->cache[k];
        if (m->entry != NULL && m->module == module && m->grad == grad &&
            m->training == training && memcmp(m->arg, arg, sizeof arg) == 0 &&
            memcmp(m->lazy, lazy, sizeof lazy) == 0) {
            Py_DECREF(grad);
            Py_DECREF(training);
            return m->entry; /* (borrowed: the slot keeps it) */
        }
    }
    PyObject *memo = field(self, F_CELL_MEMO);
    PyObject *key = memo && PyDict_CheckExact(memo) ? memo_key(module, args) : NULL;
    PyObject *e = key ? PyDict_GetItemWithError(memo, key) : NULL;
    Py_XDECREF(key);
    Py_XDECREF(memo); /* (the run keeps the memo, the memo keeps e) */
    if (e == NULL || !PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 3) {
        Py_DECREF(grad);
        Py_DECREF(training);
        return NULL; /* (an error, if any, is raised by the caller) */
    }
    MemoSlot *m = &r->cache[r->next];
    r->next = (r->next + 1) % NCACHE;
    slot_clear(m);
    m->module = Py_NewRef(module);
    m->grad = grad; /* (the references made above) */
    m->training = training;
    m->entry = Py_NewRef(e);
    memcpy(m->arg, arg, sizeof arg);
    memcpy(m->lazy, lazy, sizeof lazy);
    return e;
}

/* The open group of a site's fuse key, borrowed (NULL, no error: none) */
static PyObject *open_group(PyObject *self, PyObject *key)
{
    PyObject *fuser = field(self, F_FUSER);
    if (fuser == NULL)
        return NULL;
    PyObject *open = PyObject_GetAttr(fuser, s_open);
    Py_DECREF(fuser);
    if (open == NULL)
        return NULL;
    PyObject *g = PyDict_CheckExact(open) ? PyDict_GetItemWithError(open, key) : NULL;
    Py_DECREF(open); /* (the fuser's dict keeps g alive) */
    if (g != NULL && Py_TYPE(g) != GroupT)
        return NULL;
    return g;
}

/* Run.cell_call(module, rule, args): a member of the cell's open fused group when the call's
 * memo entry says it may fuse and the group is open; else the Python method. */
static PyObject *cell_call(PyObject *self, PyObject *module, PyObject *rule, PyObject *args)
{
    PyObject *prof = field(self, F_PROFILE);
    if (prof == NULL)
        return NULL;
    Py_DECREF(prof);
    if (prof != Py_None || !PyTuple_CheckExact(args) || PyTuple_GET_SIZE(args) != 4)
        goto python;
    PyObject *e = memo_entry(self, module, args);
    if (e == NULL)
        goto python_or_error;
    PyObject *site = PyTuple_GET_ITEM(e, 0);
    long kind = PyLong_CheckExact(PyTuple_GET_ITEM(e, 2)) ? PyLong_AsLong(PyTuple_GET_ITEM(e, 2))
                                                          : 0;
    if (kind != LEAF_CALL && kind != INNER_CALL)
        goto python;
    PyObject *outs = SLOT(site, S_outs), *key = SLOT(site, S_fuse);
    if (outs == NULL || key == NULL || !PyList_CheckExact(outs) || PyList_GET_SIZE(outs) != 2)
        goto python;
    Py_INCREF(site); /* (the memo keeps it, but the calls below run Python code) */
    PyObject *g = open_group(self, key);
    if (g == NULL) {
        Py_DECREF(site);
        goto python_or_error;
    }
    Py_INCREF(g);
    PyObject *res = NULL;
    Py_ssize_t nk = 0, depth = 1;
    if (kind == INNER_CALL) {
        PyObject *nreq = SLOT(key, K_n);
        int r = nreq == NULL ? -1 : kids(PyTuple_GET_ITEM(args, 1), PyTuple_GET_ITEM(args, 2),
                                          g, nreq, &nk, &depth);
        if (r == 0) /* no fused children: an ordinary call */
        {
            PyObject *a[3] = {self, site, args};
            res = PyObject_Vectorcall(py_record_at, a, 3, NULL);
        }
        if (r != 1)
            goto out;
    }
    res = add_member(self, site, g, args, nk, depth, PyList_GET_ITEM(outs, 0),
                     PyList_GET_ITEM(outs, 1));
out:
    Py_DECREF(g);
    Py_DECREF(site);
    return res;
python_or_error:
    if (PyErr_Occurred())
        return NULL;
python:
    return call4(py_cell_call, self, module, rule, args);
}

static PyObject *rb_compose(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "compose(func, parts, dim)");
        return NULL;
    }
    return compose(self, args[0], args[1], args[2]);
}

static PyObject *rb_row_alias(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "row_alias(x, arg)");
        return NULL;
    }
    return row_alias(args);
}

static PyObject *rb_cell_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "cell_call(module, rule, args)");
        return NULL;
    }
    return cell_call(self, args[0], args[1], args[2]);
}

/* -- the run's hooks (state.py): the common case in C, the rest to the Python hook ------- */
static PyTypeObject RunBaseType;

/* The run recording on this thread with an example running (and running alone, if
 * `single`), or NULL (no error): state.tls.run is not a native run, or it is idle */
static PyObject *active_run(int single)
{
    PyObject *run = PyObject_GetAttr(tls, s_run);
    if (run == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (!PyObject_TypeCheck(run, &RunBaseType)) {
        Py_DECREF(run);
        return NULL;
    }
    PyObject *cur = field(run, F_CURRENT);
    int ok = cur != NULL && cur != Py_None;
    Py_XDECREF(cur);
    if (ok && single) {
        PyObject *count = field(run, F_COUNT);
        ok = small_int(count) == 1;
        Py_XDECREF(count);
    }
    if (!ok) {
        PyErr_Clear();
        Py_DECREF(run);
        return NULL;
    }
    return run;
}

/* torch.stack during a native run: stack(parts, dim) of lazy parts of one meta is a
 * composite; anything else is state._stack's */
static PyObject *stack_hook(PyObject *mod, PyObject *const *args, size_t nargsf,
                            PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 2 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)) {
        PyObject *run = active_run(0);
        if (run != NULL) {
            PyObject *out = compose(run, torch_stack, args[0], args[1]);
            Py_DECREF(run);
            if (out == NULL || Py_TYPE(out) == LazyT)
                return out;
            Py_DECREF(out); /* (None or False: the Python hook decides) */
        }
    }
    return PyObject_Vectorcall(py_stack, args, nargsf, kwnames);
}

/* Lazy.__getitem__ during a native run: x[j], x[a:b] of one example's value as an alias;
 * anything else is values._getitem's */
static PyObject *getitem_hook(PyObject *self, PyObject *key)
{
    PyObject *run = active_run(1);
    PyObject *a[2] = {self, key};
    if (run != NULL) {
        Py_DECREF(run); /* (only asked whether one is active) */
        PyObject *out = row_alias(a);
        if (out == NULL || out != Py_None)
            return out;
        Py_DECREF(out);
    }
    return PyObject_Vectorcall(py_getitem, a, 2, NULL);
}

/* A fusable cell class's __call__ during a native run: cell(x, child_h, child_c, mask) on
 * one example goes to the run's cell path; anything else is state._fast_cell_call's */
static PyObject *cell_dunder(PyObject *self, PyObject *args, PyObject *kwargs)
{
    if ((kwargs == NULL || PyDict_GET_SIZE(kwargs) == 0) && PyTuple_GET_SIZE(args) == 4) {
        PyObject *run = active_run(1);
        if (run != NULL) {
            PyObject *compiled = PyObject_GenericGetAttr(self, s_compiled);
            PyObject *classes = field(run, F_CELL_CLASSES);
            int ok = compiled == Py_None && classes != NULL && PyTuple_CheckExact(classes);
            if (ok) {
                ok = 0;
                for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(classes); i++)
                    ok = ok || PyTuple_GET_ITEM(classes, i) == (PyObject *)Py_TYPE(self);
            }
            Py_XDECREF(compiled);
            Py_XDECREF(classes);
            PyErr_Clear();
            PyObject *out = ok ? cell_call(run, self, Py_None, args) : NULL;
            Py_DECREF(run);
            if (ok)
                return out;
        }
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    PyObject *all = PyTuple_New(n + 1);
    if (all == NULL)
        return NULL;
    PyTuple_SET_ITEM(all, 0, Py_NewRef(self));
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(all, i + 1, Py_NewRef(PyTuple_GET_ITEM(args, i)));
    PyObject *out = PyObject_Call(py_cell_dunder, all, kwargs);
    Py_DECREF(all);
    return out;
}

static PyMethodDef getitem_def = {"__getitem__", (PyCFunction)getitem_hook, METH_O,
                                  "x[key] of a lazy value (see values._getitem)"};
static PyMethodDef cell_dunder_def = {"__call__", (PyCFunction)(void (*)(void))cell_dunder,
                                      METH_VARARGS | METH_KEYWORDS,
                                      "a fusable cell's call (see state._fast_cell_call)"};

/* hooks(Module): (torch.stack's, Lazy.__getitem__'s, a fusable cell class's __call__) */
static PyObject *hooks(PyObject *mod, PyObject *module_type)
{
    if (!PyType_Check(module_type) || LazyT == NULL) {
        PyErr_SetString(PyExc_TypeError, "hooks(nn.Module) after setup()");
        return NULL;
    }
    PyObject *st = PyObject_GetAttrString(mod, "stack");
    PyObject *gi = PyDescr_NewMethod(LazyT, &getitem_def);
    PyObject *cd = PyDescr_NewMethod((PyTypeObject *)module_type, &cell_dunder_def);
    PyObject *out = (st && gi && cd) ? PyTuple_Pack(3, st, gi, cd) : NULL;
    Py_XDECREF(st);
    Py_XDECREF(gi);
    Py_XDECREF(cd);
    return out;
}

/* -- flush and teardown helpers (fused.py, gather.py) ----------------------------------- */
static int lazy_list(PyObject *o)
{
    if (!PyList_CheckExact(o))
        return 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(o); i++)
        if (Py_TYPE(PyList_GET_ITEM(o, i)) != LazyT)
            return 0;
    return 1;
}

/* set_rows(values, src, rows): values[i].src = src, values[i].lo = rows[i] (a fused group's
 * outputs, after its level executor call) */
static PyObject *set_rows(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || LazyT == NULL || !lazy_list(args[0]) || !PyList_CheckExact(args[2]) ||
        PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[2])) {
        PyErr_SetString(PyExc_TypeError, "set_rows(list of Lazy, src, list of rows)");
        return NULL;
    }
    PyObject *vals = args[0], *src = args[1], *rows = args[2];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(vals); i++) {
        PyObject *v = PyList_GET_ITEM(vals, i);
        set_slot(v, L_src, src);
        set_slot(v, L_lo, PyList_GET_ITEM(rows, i));
    }
    Py_RETURN_NONE;
}

/* Read a list of Python ints into v[0..n) (n: the list's length); 0 and an exception if an
 * item is not an int that fits */
static int int_list(PyObject *o, long long *v)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(o); i++) {
        PyObject *x = PyList_GET_ITEM(o, i);
        if (!PyLong_CheckExact(x))
            return 0;
        v[i] = PyLong_AsLongLong(x);
        if (v[i] == -1 && PyErr_Occurred())
            return 0;
    }
    return 1;
}

static PyObject *int64_bytes(const long long *v, Py_ssize_t n)
{
    return PyByteArray_FromStringAndSize((const char *)v, n * (Py_ssize_t)sizeof(long long));
}

static PyObject *int_tuple(const long long *v, Py_ssize_t n, int as_list)
{
    PyObject *t = as_list ? PyList_New(n) : PyTuple_New(n);
    if (t == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = PyLong_FromLongLong(v[i]);
        if (x == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        if (as_list)
            PyList_SET_ITEM(t, i, x);
        else
            PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

/* The forest of a fused group as a level-major schedule (fused._schedule's numpy, in one pass
 * each): w = work arrays of N (heights, nkids, record -> slot, slot -> record, parent member,
 * tree, rank) and E (kid slots); fills the outputs (schedule order); -1: a malformed forest */
static int forest_fill(Py_ssize_t N, Py_ssize_t E, long long K, long long H, long long *h,
                       long long *nk, long long *kid, long long *slot, long long *perm,
                       long long *pm, long long *tree, long long *rank, long long *ptr,
                       long long *children, long long *parent, long long *roots,
                       long long *node_tree, long long *post, long long *sizes,
                       Py_ssize_t *nroots)
{
    for (long long l = 0; l <= H + 1; l++)
        ptr[l] = 0;
    for (Py_ssize_t i = 0; i < N; i++)
        ptr[h[i] + 1]++;
    for (long long l = 0; l <= H; l++)
        ptr[l + 1] += ptr[l];
    for (long long l = 0; l <= H; l++) /* (a cursor per level: rank, reused) */
        rank[l] = ptr[l];
    for (Py_ssize_t i = 0; i < N; i++) { /* stable by height: record order within a level */
        slot[i] = rank[h[i]]++;
        perm[slot[i]] = i;
        pm[i] = -1;
    }
    for (Py_ssize_t j = 0; j < N * K; j++)
        children[j] = -1;
    Py_ssize_t e = 0;
    for (Py_ssize_t i = 0; i < N; i++) {
        if (nk[i] < 0 || nk[i] > K || e + nk[i] > E)
            return -1;
        for (long long c = 0; c < nk[i]; c++, e++) {
            long long k = kid[e];
            if (k < 0 || k >= i || pm[k] != -1) /* a child is recorded before its parent */
                return -1;
            pm[k] = i;
            children[slot[i] * K + c] = slot[k];
        }
    }
    if (e != E)
        return -1;
    Py_ssize_t R = 0;
    for (Py_ssize_t s = 0; s < N; s++) { /* trees numbered by their roots' schedule rows */
        long long i = perm[s];
        parent[s] = pm[i] < 0 ? -1 : slot[pm[i]];
        if (pm[i] < 0) {
            tree[i] = R;
            roots[R++] = s;
        }
    }
    for (Py_ssize_t i = N - 1; i >= 0; i--) /* (parents come later in record order) */
        if (pm[i] >= 0)
            tree[i] = tree[pm[i]];
    for (Py_ssize_t t = 0; t < R; t++)
        sizes[t] = 0;
    for (Py_ssize_t i = 0; i < N; i++) { /* each node's rank in its tree, record order */
        rank[i] = sizes[tree[i]]++;
        node_tree[slot[i]] = tree[i];
        post[slot[i]] = rank[i];
    }
    *nroots = R;
    return 0;
}

/* forest(heights, nkids, kid_slots, K): (children, parent, level_ptr, roots, node_tree,
 * post_index as bytearrays of int64; level_bounds, tree_sizes as tuples; perm, slot as
 * lists) of a fused group (see fused._schedule, which does the same in numpy), K < 0: the
 * widest node's child count; None for anything unexpected (numpy decides then) */
static PyObject *forest(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1]) ||
        !PyList_CheckExact(args[2]) || !PyLong_CheckExact(args[3]))
        Py_RETURN_NONE;
    Py_ssize_t N = PyList_GET_SIZE(args[0]), E = PyList_GET_SIZE(args[2]);
    long long K = PyLong_AsLongLong(args[3]);
    if (N == 0 || PyList_GET_SIZE(args[1]) != N || (K == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    long long *w = PyMem_Malloc(sizeof(long long) * (size_t)(14 * N + E + 2));
    if (w == NULL)
        return PyErr_NoMemory();
    long long *h = w, *nk = w + N, *slot = w + 2 * N, *perm = w + 3 * N, *pm = w + 4 * N,
              *tree = w + 5 * N, *rank = w + 6 * N, *parent = w + 7 * N, *roots = w + 8 * N,
              *node_tree = w + 9 * N, *post = w + 10 * N, *sizes = w + 11 * N,
              *ptr = w + 12 * N, *kid = w + 14 * N + 2;
    PyObject *out = NULL;
    long long *children = NULL, H = 0;
    if (!int_list(args[0], h) || !int_list(args[1], nk) || !int_list(args[2], kid))
        goto refuse;
    for (Py_ssize_t i = 0; i < N; i++) {
        if (h[i] < 0 || h[i] >= N)
            goto refuse;
        if (h[i] > H)
            H = h[i];
        if (K < 0 && nk[i] > -K - 1)
            K = -nk[i] - 1; /* (the widest so far, encoded below zero until the end) */
    }
    if (K < 0)
        K = -K - 1;
    if ((children = PyMem_Malloc(sizeof(long long) * (size_t)(N * K + 1))) == NULL) {
        PyMem_Free(w);
        return PyErr_NoMemory();
    }
    Py_ssize_t R;
    if (forest_fill(N, E, K, H, h, nk, kid, slot, perm, pm, tree, rank, ptr, children, parent,
                    roots, node_tree, post, sizes, &R) < 0)
        goto refuse;
    out = Py_BuildValue("(NNNNNNNNNNL)", int64_bytes(children, N * K), int64_bytes(parent, N),
                        int64_bytes(ptr, H + 2), int64_bytes(roots, R),
                        int64_bytes(node_tree, N), int64_bytes(post, N),
                        int_tuple(ptr, H + 2, 0), int_tuple(sizes, R, 0), int_tuple(perm, N, 1),
                        int_tuple(slot, N, 1), K);
    PyMem_Free(children);
    PyMem_Free(w);
    return out;
refuse:
    PyErr_Clear();
    PyMem_Free(children);
    PyMem_Free(w);
    Py_RETURN_NONE;
}

/* member_x(members, order, n): [members[order[i]].leaves[0] for i in range(n)] (a fused
 * group's x in schedule order, fused._member_x); None for anything unexpected */
static PyObject *member_x(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || NodeT == NULL || !PyList_CheckExact(args[0]) ||
        !PyList_CheckExact(args[1]) || !PyLong_CheckExact(args[2]))
        Py_RETURN_NONE;
    PyObject *members = args[0], *order = args[1];
    Py_ssize_t n = PyLong_AsSsize_t(args[2]), m = PyList_GET_SIZE(members);
    if (n < 0 || n > PyList_GET_SIZE(order)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(order, i);
        Py_ssize_t k = PyLong_CheckExact(f) ? PyLong_AsSsize_t(f) : -1;
        PyObject *node = (k >= 0 && k < m) ? PyList_GET_ITEM(members, k) : NULL;
        PyObject *leaves = (node != NULL && Py_TYPE(node) == NodeT) ? SLOT(node, N_leaves)
                                                                     : NULL;
        if (leaves == NULL || !PyTuple_CheckExact(leaves) || PyTuple_GET_SIZE(leaves) < 1) {
            PyErr_Clear();
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        PyList_SET_ITEM(out, i, Py_NewRef(PyTuple_GET_ITEM(leaves, 0)));
    }
    return out;
}

/* drop_links(members, hs, cs): members[i].leaves = None, hs[i].node = cs[i].node = None
 * (fused.Group.clear) */
static PyObject *drop_links(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || LazyT == NULL || !PyList_CheckExact(args[0]) || !lazy_list(args[1]) ||
        !lazy_list(args[2])) {
        PyErr_SetString(PyExc_TypeError, "drop_links(list of Node, list of Lazy, list of Lazy)");
        return NULL;
    }
    PyObject *members = args[0];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(members); i++)
        if (Py_TYPE(PyList_GET_ITEM(members, i)) != NodeT) {
            PyErr_SetString(PyExc_TypeError, "drop_links: a member is not a Node");
            return NULL;
        }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(members); i++)
        set_slot(PyList_GET_ITEM(members, i), N_leaves, Py_None);
    for (int k = 1; k < 3; k++)
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[k]); i++)
            set_slot(PyList_GET_ITEM(args[k], i), L_node, Py_None);
    Py_RETURN_NONE;
}

/* row_index(vals): (sources, idx) of values of one row each -- rows of computed results or
 * x[a : a + 1] of them -- for one index_select over the sources concatenated (gather.
 * gather_rows); None for anything else (the Python loop decides) */
static PyObject *row_index(PyObject *mod, PyObject *vals)
{
    if (!PyList_CheckExact(vals) || LazyT == NULL)
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(vals);
    PyObject *sources = PyList_New(0), *idx = PyList_New(n), *where = PyDict_New();
    Py_ssize_t end = 0, i;
    if (sources == NULL || idx == NULL || where == NULL)
        goto fail;
    for (i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(vals, i), *src;
        Py_ssize_t r;
        if (Py_TYPE(v) != LazyT)
            break;
        PyObject *p = SLOT(v, L_parts);
        if (p == Py_None) {
            if (small_int(SLOT(v, L_rows)) != 1)
                break;
            src = SLOT(v, L_src);
            r = small_int(SLOT(v, L_lo));
        }
        else if (PyTuple_CheckExact(p) && PyTuple_GET_SIZE(p) == 3 &&
                 PyTuple_GET_ITEM(p, 0) == alias_rows) {
            PyObject *bs = PyTuple_GET_ITEM(p, 2), *ab = PyTuple_GET_ITEM(p, 1);
            if (!PyTuple_CheckExact(bs) || PyTuple_GET_SIZE(bs) < 1 || !PyTuple_CheckExact(ab) ||
                PyTuple_GET_SIZE(ab) != 2)
                break;
            PyObject *b = PyTuple_GET_ITEM(bs, 0);
            if (Py_TYPE(b) != LazyT || SLOT(b, L_parts) != Py_None || SLOT(b, L_rows) == Py_None)
                break;
            Py_ssize_t lo = small_int(SLOT(b, L_lo)), a = small_int(PyTuple_GET_ITEM(ab, 0));
            if (lo < 0 || a < 0)
                break;
            src = SLOT(b, L_src);
            r = lo + a;
        }
        else
            break;
        if (r < 0 || src == NULL || src == Py_None)
            break;
        PyObject *key = PyLong_FromVoidPtr(src);
        if (key == NULL)
            goto fail;
        PyObject *o = PyDict_GetItemWithError(where, key);
        Py_ssize_t off;
        if (o == NULL) {
            Py_ssize_t size = PyErr_Occurred() ? -1 : PyObject_Size(src);
            if (size < 0) {
                Py_DECREF(key);
                PyErr_Clear();
                break;
            }
            PyObject *e = PyLong_FromSsize_t(end);
            int bad = e == NULL || PyDict_SetItem(where, key, e) < 0 ||
                      PyList_Append(sources, src) < 0;
            Py_XDECREF(e);
            if (bad) {
                Py_DECREF(key);
                goto fail;
            }
            off = end;
            end += size;
        }
        else
            off = PyLong_AsSsize_t(o);
        Py_DECREF(key);
        PyObject *at = PyLong_FromSsize_t(off + r);
        if (at == NULL)
            goto fail;
        PyList_SET_ITEM(idx, i, at);
    }
    Py_DECREF(where);
    if (i < n) { /* (idx's unset items are NULL: list dealloc skips them) */
        Py_DECREF(sources);
        Py_DECREF(idx);
        Py_RETURN_NONE;
    }
    PyObject *out = PyTuple_Pack(2, sources, idx);
    Py_DECREF(sources);
    Py_DECREF(idx);
    return out;
fail:
    Py_XDECREF(sources);
    Py_XDECREF(idx);
    Py_XDECREF(where);
    return NULL;
}

/* source_rows(vals): (src, rows, [v.lo for v in vals]) when every value is a stored Lazy of
 * one row (rows 1) or one row-of-value (rows None) of the same result `src` (gather.
 * _gather_lazy's common case: a tree's node states); None for anything else */
static PyObject *source_rows(PyObject *mod, PyObject *vals)
{
    if (!PyList_CheckExact(vals) || PyList_GET_SIZE(vals) == 0 || LazyT == NULL)
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(vals);
    PyObject *v0 = PyList_GET_ITEM(vals, 0);
    if (Py_TYPE(v0) != LazyT)
        Py_RETURN_NONE;
    PyObject *src = SLOT(v0, L_src), *rows = SLOT(v0, L_rows);
    int one = small_int(rows) == 1;
    if (src == NULL || src == Py_None || rows == NULL || !(one || rows == Py_None))
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(vals, i);
        if (Py_TYPE(v) != LazyT || SLOT(v, L_parts) != Py_None || SLOT(v, L_src) != src ||
            (one ? small_int(SLOT(v, L_rows)) != 1 : SLOT(v, L_rows) != Py_None) ||
            SLOT(v, L_lo) == NULL)
            Py_RETURN_NONE;
    }
    PyObject *idx = PyList_New(n);
    if (idx == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        PyList_SET_ITEM(idx, i, Py_NewRef(SLOT(PyList_GET_ITEM(vals, i), L_lo)));
    PyObject *out = PyTuple_Pack(3, src, rows, idx);
    Py_DECREF(idx);
    return out;
}

/* -- setup ------------------------------------------------------------------------------ */
static int offsets(PyObject *type, const char **names, Py_ssize_t **outs)
{
    for (int i = 0; names[i] != NULL; i++)
        if (offset_of(type, names[i], outs[i]) < 0)
            return -1;
    return 0;
}

static PyObject *setup(PyObject *mod, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"Lazy", "Meta", "Node", "Group", "Site", "FuseKey",
                             "compose", "cell_call", "row_alias", "wait_for", "record_at",
                             "grad_enabled", "stack", "alias_row", "alias_rows", "tls",
                             "stack_hook", "getitem_hook", "cell_hook", "leaf_call",
                             "inner_call", NULL};
    PyObject *L, *M, *N, *G, *S, *K;
    PyObject *f[13];
    long leaf, inner;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O!O!O!O!OOOOOOOOOOOOOll:setup", kwlist,
                                     &PyType_Type, &L, &PyType_Type, &M, &PyType_Type, &N,
                                     &PyType_Type, &G, &PyType_Type, &S, &PyType_Type, &K, &f[0],
                                     &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8],
                                     &f[9], &f[10], &f[11], &f[12], &leaf, &inner))
        return NULL;
    const char *ln[] = {"node", "out", "src", "lo", "rows", "meta", "parts", "count", NULL};
    Py_ssize_t *lo[] = {&L_node, &L_out, &L_src, &L_lo, &L_rows, &L_meta, &L_parts, &L_count};
    const char *mn[] = {"rows", "tail", "resized", NULL};
    Py_ssize_t *mo[] = {&M_rows, &M_tail, &M_resized};
    const char *nn[] = {"site", "leaves", "example", "depth", "height", "fparent", "group",
                        "slot", "users", NULL};
    Py_ssize_t *no[] = {&N_site, &N_leaves, &N_example, &N_depth, &N_height, &N_fparent,
                        &N_group, &N_slot, &N_users};
    const char *gn[] = {"members", "hs", "cs", "heights", "kid_slots", "nkids", "depth",
                        "waiting", "users", "lastp", "claimed_height", "inner_x", NULL};
    Py_ssize_t *go[] = {&G_members, &G_hs, &G_cs, &G_heights, &G_kid_slots, &G_nkids,
                        &G_depth, &G_waiting, &G_users, &G_lastp, &G_claimed_height,
                        &G_inner_x};
    const char *sn[] = {"outs", "fuse", NULL};
    Py_ssize_t *so[] = {&S_outs, &S_fuse};
    const char *kn[] = {"n", NULL};
    Py_ssize_t *ko[] = {&K_n};
    if (offsets(L, ln, lo) < 0 || offsets(M, mn, mo) < 0 || offsets(N, nn, no) < 0 ||
        offsets(G, gn, go) < 0 || offsets(S, sn, so) < 0 || offsets(K, kn, ko) < 0)
        return NULL;
    PyTypeObject *types[] = {(PyTypeObject *)L, (PyTypeObject *)N, (PyTypeObject *)G};
    for (int i = 0; i < 3; i++)
        if (types[i]->tp_itemsize != 0 || types[i]->tp_dictoffset != 0) {
            PyErr_Format(PyExc_TypeError, "%s must have __slots__ only", types[i]->tp_name);
            return NULL;
        }
    Py_XSETREF(LazyT, (PyTypeObject *)Py_NewRef(L));
    Py_XSETREF(NodeT, (PyTypeObject *)Py_NewRef(N));
    Py_XSETREF(GroupT, (PyTypeObject *)Py_NewRef(G));
    PyObject **dst[] = {&py_compose, &py_cell_call, &py_row_alias, &py_wait_for, &py_record_at,
                        &grad_enabled, &torch_stack, &alias_row, &alias_rows, &tls,
                        &py_stack, &py_getitem, &py_cell_dunder};
    for (int i = 0; i < 13; i++)
        Py_XSETREF(*dst[i], Py_NewRef(f[i]));
    LEAF_CALL = leaf;
    INNER_CALL = inner;
    Py_RETURN_NONE;
}

static PyObject *abi(PyObject *mod, PyObject *unused) { return PyLong_FromLong(ABI); }

static PyObject *rb_clear_memo(PyObject *self, PyObject *unused);

static PyMethodDef run_methods[] = {
    {"compose", (PyCFunction)(void (*)(void))rb_compose, METH_FASTCALL,
     "compose(func, parts, dim): see Run.compose"},
    {"row_alias", (PyCFunction)(void (*)(void))rb_row_alias, METH_FASTCALL,
     "row_alias(x, arg): see values._row_alias"},
    {"cell_call", (PyCFunction)(void (*)(void))rb_cell_call, METH_FASTCALL,
     "cell_call(module, rule, args): see Run.cell_call"},
    {"clear_memo", rb_clear_memo, METH_NOARGS, "forget the recent cell memo entries"},
    {NULL, NULL, 0, NULL},
};

#define FIELD(name, i)                                                                       \
    {name, T_OBJECT_EX, offsetof(RunBaseObject, f) + (i) * sizeof(PyObject *), 0, NULL}
static PyMemberDef run_members[] = {
    FIELD("composites", F_COMPOSITES), FIELD("count", F_COUNT),
    FIELD("current", F_CURRENT),       FIELD("cell_memo", F_CELL_MEMO),
    FIELD("fuser", F_FUSER),           FIELD("profile", F_PROFILE),
    FIELD("cell_classes", F_CELL_CLASSES), {NULL, 0, 0, 0, NULL},
};

static int rb_traverse(PyObject *self, visitproc visit, void *arg)
{
    RunBaseObject *r = (RunBaseObject *)self;
    for (int i = 0; i < NF; i++)
        Py_VISIT(r->f[i]);
    for (int k = 0; k < NCACHE; k++) {
        Py_VISIT(r->cache[k].module);
        Py_VISIT(r->cache[k].grad);
        Py_VISIT(r->cache[k].training);
        Py_VISIT(r->cache[k].entry);
    }
    return 0;
}

static int rb_clear(PyObject *self)
{
    RunBaseObject *r = (RunBaseObject *)self;
    for (int i = 0; i < NF; i++)
        Py_CLEAR(r->f[i]);
    for (int k = 0; k < NCACHE; k++)
        slot_clear(&r->cache[k]);
    return 0;
}

/* RunBase.clear_memo(): forget the recent memo entries (the run's teardown: they keep
 * sites and arguments alive) */
static PyObject *rb_clear_memo(PyObject *self, PyObject *unused)
{
    RunBaseObject *r = (RunBaseObject *)self;
    for (int k = 0; k < NCACHE; k++)
        slot_clear(&r->cache[k]);
    Py_RETURN_NONE;
}

static void rb_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    rb_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject RunBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "_autobatch_native.RunBase",
    .tp_basicsize = sizeof(RunBaseObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_members = run_members,
    .tp_traverse = rb_traverse,
    .tp_clear = rb_clear,
    .tp_dealloc = rb_dealloc,
    .tp_doc = "The engine's hottest recording methods in C (a base of the native Run).",
    .tp_methods = run_methods,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef module_methods[] = {
    {"setup", (PyCFunction)(void (*)(void))setup, METH_VARARGS | METH_KEYWORDS,
     "setup(Lazy=, Meta=, ...): the classes and Python fallbacks (see native.py)"},
    {"abi", abi, METH_NOARGS, "the ABI version of this build"},
    {"hooks", hooks, METH_O, "hooks(nn.Module): the C hooks (after setup)"},
    {"set_rows", (PyCFunction)(void (*)(void))set_rows, METH_FASTCALL,
     "set_rows(values, src, rows): each value's src and first row"},
    {"drop_links", (PyCFunction)(void (*)(void))drop_links, METH_FASTCALL,
     "drop_links(members, hs, cs): a fused group's links dropped (teardown)"},
    {"forest", (PyCFunction)(void (*)(void))forest, METH_FASTCALL,
     "forest(heights, nkids, kid_slots, K): a fused group's schedule arrays, or None"},
    {"member_x", (PyCFunction)(void (*)(void))member_x, METH_FASTCALL,
     "member_x(members, order, n): the first n members' x in that order, or None"},
    {"row_index", row_index, METH_O, "row_index(vals): (sources, idx) or None"},
    {"source_rows", source_rows, METH_O, "source_rows(vals): (src, rows, idx) or None"},
    {"stack", (PyCFunction)(void (*)(void))stack_hook, METH_FASTCALL | METH_KEYWORDS,
     "torch.stack during a native run (see state._stack)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_autobatch_native", NULL, -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__autobatch_native(void)
{
    if (PyType_Ready(&RunBaseType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (m == NULL)
        return NULL;
    const char *names[] = {"composites", "count",         "current", "cell_memo",
                           "fuser",      "open",          "profile", "training",
                           "requires_grad", "run", "_compiled_call_impl", "cell_classes"};
    PyObject **dst[] = {&s_composites, &s_count,         &s_current, &s_cell_memo,
                        &s_fuser,      &s_open,          &s_profile, &s_training,
                        &s_requires_grad, &s_run, &s_compiled, &s_cell_classes};
    for (int i = 0; i < 12; i++)
        if ((*dst[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return NULL;
    zero = PyLong_FromLong(0);
    one = PyLong_FromLong(1);
    Py_INCREF(&RunBaseType);
    if (PyModule_AddObject(m, "RunBase", (PyObject *)&RunBaseType) < 0)
        return NULL;
    return m;
}
